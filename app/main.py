"""The HTTP application: `create_app(settings)`."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from app.auth.router import router as tokens_router
from app.config import Settings, get_settings
from app.connections.router import router as connections_router
from app.connections.webhook import WEBHOOK_PATH
from app.errors import install_error_handlers
from app.health import router as health_router
from app.ingress.router import router as inbox_router
from app.logging import configure_logging
from app.middleware import RequestContextMiddleware
from app.runtime import Runtime, open_runtime


class _WebhookEndpoint:
    """Hands webhook requests to this process's ingress (a plain ASGI callable)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        runtime: Runtime = scope["app"].state.runtime
        await runtime.ingress(scope, receive, send)


class IntegrationsApp(FastAPI):
    """FastAPI, with the webhook hot path taken before the middleware stack.

    Telegram's deliveries skip FastAPI's and Starlette's middleware (telemetry,
    exception plumbing, routing): at thousands of updates a second that stack costs
    more than the ingress checks themselves. They keep the request context (a
    request id on log lines and in `X-Request-ID`, unexpected errors as a 500 of
    the one shape). Every other request, and any other method on the webhook path,
    goes through FastAPI as usual.
    """

    _webhook = RequestContextMiddleware(_WebhookEndpoint())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["path"] == WEBHOOK_PATH
            and scope["method"] == "POST"
            and hasattr(self.state, "runtime")
        ):
            scope["app"] = self
            await self._webhook(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def create_app(settings: Settings | None = None, *, configure_logs: bool = True) -> FastAPI:
    settings = settings or get_settings()
    if configure_logs:
        configure_logging(
            json_output=settings.is_production,
            level=settings.log_level,
            access_log=settings.access_log,
        )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with open_runtime(settings) as runtime:
            app.state.runtime = runtime
            # Everything allocated so far lives as long as the process: move it out
            # of the collector's sight, so full collections under load stay short
            # (otherwise each stalls every in-flight request for tens of ms).
            gc.collect()
            gc.freeze()
            try:
                yield
            finally:
                gc.unfreeze()

    app = IntegrationsApp(
        title="Workspace integrations",
        version="0.1.0",
        lifespan=lifespan,
        # The interactive docs describe every endpoint; not public in production.
        docs_url=None if settings.is_production else "/docs",
        openapi_url=None if settings.is_production else "/openapi.json",
        redoc_url=None,
    )
    app.state.settings = settings
    # A path with a trailing slash is a 404 in the error shape, not a bare redirect.
    app.router.redirect_slashes = False
    install_error_handlers(app)
    app.add_middleware(RequestContextMiddleware)
    app.include_router(health_router)
    app.include_router(tokens_router)
    app.include_router(connections_router)
    app.include_router(inbox_router)
    app.router.routes.append(Route(WEBHOOK_PATH, endpoint=_WebhookEndpoint(), methods=["POST"]))
    return app
