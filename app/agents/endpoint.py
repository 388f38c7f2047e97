"""The /mcp route: the service's API token first, then the SDK's transport.

Every HTTP request to /mcp carries `Authorization: Bearer <API token>`, checked
exactly as the REST API checks it (`app.auth.service.authenticate`): missing,
unknown or revoked is a 401 in the service's error shape, before the SDK sees
the request. The token's context rides in the ASGI scope to the tools, which
take the workspace from it. The SDK then checks Host and Origin
(`app.agents.security`) and serves the MCP exchange.

The SDK's own bearer authentication (`token_verifier` with `AuthSettings`) is
not used: it answers failures in OAuth's error shape and is built around an
authorization server this service does not have.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog
from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from app.agents import AUTH_SCOPE_KEY
from app.auth.deps import bearer_token
from app.auth.service import authenticate
from app.db import session_scope
from app.errors import AppError, ServiceUnavailable, Unauthenticated, error_response

if TYPE_CHECKING:
    # The SDK's module: imported by the application only when MCP is enabled.
    from app.agents.server import AgentAccess


class McpEndpoint:
    """A plain ASGI endpoint; the lifespan leaves `AgentAccess` on `app.state.agent_access`."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        access: AgentAccess | None = getattr(scope["app"].state, "agent_access", None)
        if access is None:
            # Only between start-up and the lifespan having run.
            await self._refuse(ServiceUnavailable(), scope, receive, send)
            return
        try:
            presented = bearer_token(Request(scope))
            async for session in session_scope(access.tools.session_factory):
                auth = await authenticate(session, presented)
        except Unauthenticated as exc:
            await self._refuse(exc, scope, receive, send)
            return
        scope[AUTH_SCOPE_KEY] = auth
        structlog.contextvars.bind_contextvars(workspace_id=str(auth.workspace_id))
        await access.session_manager.handle_request(scope, receive, send)

    async def _refuse(self, error: AppError, scope: Scope, receive: Receive, send: Send) -> None:
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(error, Unauthenticated) else {}
        response = error_response(error.status, error.code, error.message, **headers)
        await response(scope, receive, send)
