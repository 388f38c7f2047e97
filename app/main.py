"""The HTTP application: `create_app(settings)`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, nullcontext, suppress
from typing import Any

import structlog
from fastapi import FastAPI
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from app.agents import MCP_PATH
from app.agents.endpoint import McpEndpoint
from app.agents.tools import AgentTools
from app.auth.router import me_router
from app.auth.router import router as tokens_router
from app.broadcasts.router import router as broadcasts_router
from app.config import Settings, get_settings
from app.connections.registration import WEBHOOK_PATH
from app.connections.router import router as connections_router
from app.errors import install_error_handlers
from app.health import router as health_router
from app.inbox.router import router as inbox_router
from app.ingress.openapi import add_webhook
from app.ingress.router import router as updates_router
from app.logging import configure_logging
from app.messages.router import router as messages_router
from app.middleware import RequestContextMiddleware
from app.openapi import DESCRIPTION, TAGS
from app.runtime import ApiRuntime, open_api_runtime, serving_collector
from app.vault import Keyring
from app.web import UI_PREFIX, to_page, ui_app

logger = structlog.get_logger("app.main")


class _WebhookEndpoint:
    """Hands webhook requests to this process's ingress (a plain ASGI callable)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        runtime: ApiRuntime = scope["app"].state.runtime
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

    def openapi(self) -> dict[str, Any]:
        # FastAPI documents its API routes only; the webhook is a plain ASGI route
        # (taken even before them, see __call__), so it is described by hand.
        if self.openapi_schema is None:
            add_webhook(super().openapi())
        assert self.openapi_schema is not None
        return self.openapi_schema


@asynccontextmanager
async def _worker_alongside(settings: Settings, keyring: Keyring) -> AsyncIterator[None]:
    """Run the worker (`app.worker.run_worker`) as a task of this process while the app runs.

    The embedded default's one-command mode (`serve --with-worker`, what `make run`
    starts): a laptop gets polling ingestion without a second terminal. It stops
    with the server's lifespan, so SIGTERM stops both, the worker gracefully. It
    uses the app's keyring rather than loading (and reporting on) the keyring again.
    """
    from app.worker import run_worker

    stop = asyncio.Event()
    task = asyncio.create_task(
        run_worker(settings, stop=stop, keyring=keyring), name="embedded-worker"
    )

    def report_crash(done: asyncio.Task[None]) -> None:
        if not done.cancelled() and done.exception() is not None:
            logger.error("embedded_worker_failed", error_type=type(done.exception()).__name__)

    task.add_done_callback(report_crash)
    try:
        yield
    finally:
        stop.set()
        with suppress(Exception):
            await task


@asynccontextmanager
async def _agent_access(
    app: FastAPI, settings: Settings, runtime: ApiRuntime
) -> AsyncIterator[None]:
    """The MCP server's session manager for as long as the app runs (MCP_ENABLED):
    the SDK's transport refuses requests until it is running."""
    # Imported here: the SDK costs every process start about 1.5 s, and most
    # deployments do not enable agent access.
    from app.agents.server import open_agent_access

    tools = AgentTools(
        session_factory=runtime.session_factory,
        approval_ttl=settings.approval_ttl,
        connections=runtime.connections,
    )
    async with open_agent_access(settings, tools) as access:
        app.state.agent_access = access
        try:
            yield
        finally:
            del app.state.agent_access


def create_app(
    settings: Settings | None = None,
    *,
    configure_logs: bool = True,
    with_worker: bool = False,
    keyring: Keyring | None = None,
) -> FastAPI:
    """The HTTP application; `with_worker` also runs the worker in this process.
    `keyring` is the vault's, when the caller has loaded it already."""
    settings = settings or get_settings()
    if configure_logs:
        configure_logging(
            json_output=settings.is_production,
            level=settings.log_level,
            access_log=settings.access_log,
        )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with open_api_runtime(settings, keyring=keyring) as runtime:
            app.state.runtime = runtime
            # What the request dependencies hand the routers (`app.deps`, and each
            # domain's collaborators), so no domain reaches for the runtime itself.
            app.state.session_factory = runtime.session_factory
            app.state.connections = runtime.connections
            with serving_collector():
                async with (
                    _agent_access(app, settings, runtime)
                    if settings.mcp_enabled
                    else nullcontext(),
                    _worker_alongside(settings, runtime.vault.keyring)
                    if with_worker
                    else nullcontext(),
                ):
                    yield

    app = IntegrationsApp(
        title="Workspace integrations",
        version="0.1.0",
        description=DESCRIPTION,
        openapi_tags=TAGS,
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
    app.include_router(me_router)
    app.include_router(connections_router)
    app.include_router(updates_router)
    app.include_router(inbox_router)
    app.include_router(messages_router)
    app.include_router(broadcasts_router)
    app.router.routes.append(Route(WEBHOOK_PATH, endpoint=_WebhookEndpoint(), methods=["POST"]))
    if settings.mcp_enabled:
        # Agent access (app.agents); without the setting /mcp is an ordinary 404.
        app.router.routes.append(Route(MCP_PATH, endpoint=McpEndpoint()))
    # The settings and approvals pages; static files, outside the API document.
    app.router.routes.append(Route(UI_PREFIX, endpoint=to_page, methods=["GET"]))
    app.mount(UI_PREFIX, ui_app())
    return app
