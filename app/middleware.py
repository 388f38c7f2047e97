"""Request context middleware (pure ASGI: it runs on the webhook hot path too).

It binds a request id to the logging context, returns it as `X-Request-ID`, and
turns any unexpected exception into the one JSON error shape (500, no internals),
logged with that request id. It sits inside Starlette's own error middleware so
the log line still carries the request's context.
"""

from __future__ import annotations

import re
import uuid

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import error_response

REQUEST_ID_HEADER = b"x-request-id"
# Accept a caller's id only when it is short and plain, so it cannot inject log content.
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
logger = structlog.get_logger("app.errors")


class RequestContextMiddleware:
    """Request id on every log line and response; unexpected errors as a clean 500."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = None
        for name, value in scope["headers"]:
            if name == REQUEST_ID_HEADER:
                candidate = value.decode("latin-1")
                if _VALID_REQUEST_ID.match(candidate):
                    request_id = candidate
                break
        if request_id is None:
            request_id = uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        encoded = request_id.encode()

        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
                message["headers"] = [*message.get("headers", []), (REQUEST_ID_HEADER, encoded)]
            await send(message)

        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            # The type only in the message: exception text may carry data we must
            # not echo. The traceback goes to the log, through the redaction processor.
            logger.error("unhandled_error", error_type=type(exc).__name__, exc_info=exc)
            if response_started:
                raise
            response = error_response(500, "internal_error", "An unexpected error occurred.")
            await response(scope, receive, send_with_id)
        finally:
            structlog.contextvars.clear_contextvars()
