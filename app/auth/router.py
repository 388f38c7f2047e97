"""API tokens: `POST/GET /api/v1/tokens`, `DELETE /api/v1/tokens/{id}` (admin), and
`GET /api/v1/me` (any role: which token is calling)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Body, Depends

from app.auth.deps import Admin, AnyRole
from app.auth.models import ApiToken
from app.auth.schemas import (
    TOKEN_CREATE_EXAMPLES,
    MeOut,
    TokenCreate,
    TokenCreated,
    TokenOut,
    WorkspaceRef,
)
from app.auth.service import LastAdminToken, TokenService
from app.deps import DbSession
from app.errors import Forbidden, NotFound, Unauthenticated, ValidationFailed, responses
from app.pagination import Page, PageParams, page_of

router = APIRouter(prefix="/api/v1/tokens", tags=["tokens"])
me_router = APIRouter(prefix="/api/v1", tags=["tokens"])


def _out(token: ApiToken) -> TokenOut:
    return TokenOut(
        id=token.id,
        name=token.name,
        role=token.role,
        created_at=token.created_at,
        last_used_at=token.last_used_at,
        revoked_at=token.revoked_at,
    )


@router.post(
    "",
    status_code=201,
    summary="Create an API token",
    responses=responses(Unauthenticated, Forbidden, ValidationFailed),
)
async def create_token(
    body: Annotated[TokenCreate, Body(openapi_examples=TOKEN_CREATE_EXAMPLES)],
    auth: Admin,
    session: DbSession,
) -> TokenCreated:
    """Admin only. A new token of the caller's workspace with the given role:
    `admin` (everything), `reviewer` (read, approve and reject) or `sender` (read,
    send). The token string (`wsk_...`) is in this response only: just its
    SHA-256 is stored, so it cannot be shown again."""
    token, secret = await TokenService(session, auth).create(body.name, body.role)
    return TokenCreated(
        id=token.id, name=token.name, role=body.role, token=secret, created_at=token.created_at
    )


@router.get(
    "",
    summary="List API tokens",
    responses=responses(Unauthenticated, Forbidden, ValidationFailed),
)
async def list_tokens(
    auth: Admin, session: DbSession, params: Annotated[PageParams, Depends()]
) -> Page[TokenOut]:
    """Admin only. The workspace's tokens, newest first, revoked ones included
    (with `revoked_at`); never the token strings. `last_used_at` is kept to the
    minute. Cursor-paginated (`?cursor=`, `?limit=` 1-200, default 50)."""
    rows = await TokenService(session, auth).list_tokens(params)
    rows, next_cursor = page_of(rows, params, lambda t: t.created_at)
    return Page(items=[_out(t) for t in rows], next_cursor=next_cursor)


@router.delete(
    "/{token_id}",
    summary="Revoke an API token",
    responses=responses(Unauthenticated, Forbidden, NotFound, LastAdminToken, ValidationFailed),
)
async def revoke_token(token_id: uuid.UUID, auth: Admin, session: DbSession) -> TokenOut:
    """Admin only. The token stops working at once (401 from then on) and is
    answered with its `revoked_at`; revoking it again changes nothing. The
    workspace's last live admin token cannot be revoked (409 `last_admin_token`):
    nothing could then create another. A token of another workspace is 404."""
    return _out(await TokenService(session, auth).revoke(token_id))


@me_router.get("/me", summary="The calling token", responses=responses(Unauthenticated))
async def who_am_i(auth: AnyRole, session: DbSession) -> MeOut:
    """Any role. The calling token's id, name and role, and its workspace: how a
    client such as the settings UI learns what to offer (the server still checks
    every action). A missing, unknown or revoked token is 401."""
    token, workspace = await TokenService(session, auth).me()
    return MeOut(
        token_id=token.id,
        name=token.name,
        role=token.role,
        workspace=WorkspaceRef(id=workspace.id, name=workspace.name),
    )
