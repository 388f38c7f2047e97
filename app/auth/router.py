"""API tokens: `POST/GET /api/v1/tokens`, `DELETE /api/v1/tokens/{id}` (admin)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends

from app.auth.models import ApiToken, Role
from app.auth.schemas import TokenCreate, TokenCreated, TokenOut
from app.auth.service import TokenService
from app.deps import Admin, DbSession
from app.pagination import Page, PageParams, page_of

router = APIRouter(prefix="/api/v1/tokens", tags=["tokens"])


def _out(token: ApiToken) -> TokenOut:
    return TokenOut(
        id=token.id,
        name=token.name,
        role=Role(token.role),
        created_at=token.created_at,
        last_used_at=token.last_used_at,
        revoked_at=token.revoked_at,
    )


@router.post("", status_code=201)
async def create_token(body: TokenCreate, auth: Admin, session: DbSession) -> TokenCreated:
    token, secret = await TokenService(session, auth).create(body.name, body.role)
    return TokenCreated(
        id=token.id, name=token.name, role=body.role, token=secret, created_at=token.created_at
    )


@router.get("")
async def list_tokens(
    auth: Admin, session: DbSession, params: Annotated[PageParams, Depends()]
) -> Page[TokenOut]:
    rows = await TokenService(session, auth).list_tokens(params)
    rows, next_cursor = page_of(rows, params, lambda t: t.created_at)
    return Page(items=[_out(t) for t in rows], next_cursor=next_cursor)


@router.delete("/{token_id}")
async def revoke_token(token_id: uuid.UUID, auth: Admin, session: DbSession) -> TokenOut:
    return _out(await TokenService(session, auth).revoke(token_id))
