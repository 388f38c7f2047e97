"""Auth as typed dependencies: a handler's signature says who may call it.

async def create_token(auth: Admin, session: DbSession) -> ...
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any

import structlog
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.auth.models import Role
from app.auth.service import AuthContext, authenticate
from app.db import checkpoint
from app.deps import DbSession
from app.errors import Forbidden, Unauthenticated

# Declares the bearer scheme in the API document (the Authorize button of /docs)
# on every operation that authenticates. It never refuses a request itself
# (auto_error=False): `bearer_token` reads the header, so failures keep the service's
# 401 body and messages.
bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    bearerFormat="wsk_...",
    description="An API token of the workspace (`integrations workspace create` prints "
    "the first admin token; admins create more with `POST /api/v1/tokens`).",
)
BearerDeclared = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)]


def bearer_token(request: Request) -> str | None:
    """The token of an `Authorization: Bearer` header; None without the header,
    401 for another scheme or an empty token."""
    header = request.headers.get("authorization")
    if not header:
        return None
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        raise Unauthenticated("Use 'Authorization: Bearer <token>'.")
    return credentials.strip()


async def get_auth(request: Request, session: DbSession, _: BearerDeclared) -> AuthContext:
    auth = await authenticate(session, bearer_token(request))
    # End the transaction now: authenticate may have written last_used_at, and its
    # row lock must not be held for the rest of a request that may wait on Telegram.
    await checkpoint(session)
    request.state.auth = auth
    structlog.contextvars.bind_contextvars(workspace_id=str(auth.workspace_id))
    return auth


def require(*roles: Role) -> Callable[..., Coroutine[Any, Any, AuthContext]]:
    """A dependency admitting tokens of the given roles (admin is always admitted)."""
    allowed = {Role.admin, *roles}

    async def dependency(auth: Annotated[AuthContext, Depends(get_auth)]) -> AuthContext:
        if auth.role not in allowed:
            raise Forbidden()
        return auth

    return dependency


Admin = Annotated[AuthContext, Depends(require(Role.admin))]
AnyRole = Annotated[AuthContext, Depends(require(Role.reviewer, Role.sender))]
Reviewer = Annotated[AuthContext, Depends(require(Role.reviewer))]
Sender = Annotated[AuthContext, Depends(require(Role.sender))]
