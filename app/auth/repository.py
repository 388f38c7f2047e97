"""Queries for workspaces and API tokens; every token query is scoped to a workspace."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import Select, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.models import ApiToken, Workspace
from app.pagination import PageParams, keyset


class TokenRepository:
    def __init__(self, session: AsyncSession, workspace_id: uuid.UUID) -> None:
        self.session = session
        self.workspace_id = workspace_id

    def _scoped(self) -> Select[tuple[ApiToken]]:
        return select(ApiToken).where(ApiToken.workspace_id == self.workspace_id)

    async def get(self, token_id: uuid.UUID, *, for_update: bool = False) -> ApiToken | None:
        stmt = self._scoped().where(ApiToken.id == token_id)
        if for_update:
            stmt = stmt.with_for_update()
        return (await self.session.execute(stmt)).scalar_one_or_none()

    async def live_admin_count(self) -> int:
        stmt = (
            select(func.count())
            .select_from(ApiToken)
            .where(
                ApiToken.workspace_id == self.workspace_id,
                ApiToken.role == "admin",
                ApiToken.revoked_at.is_(None),
            )
        )
        return int((await self.session.execute(stmt)).scalar_one())

    async def list(self, params: PageParams) -> list[ApiToken]:
        stmt = keyset(self._scoped(), ApiToken.created_at, ApiToken.id, params, descending=True)
        return list((await self.session.execute(stmt)).scalars())

    def add(self, token: ApiToken) -> None:
        self.session.add(token)


async def find_token_by_hash(session: AsyncSession, token_hash: str) -> ApiToken | None:
    """The one unscoped token query: authentication finds the workspace from the token."""
    result = await session.execute(select(ApiToken).where(ApiToken.token_hash == token_hash))
    return result.scalar_one_or_none()


async def touch_token(session: AsyncSession, token_id: uuid.UUID, now: datetime) -> None:
    await session.execute(update(ApiToken).where(ApiToken.id == token_id).values(last_used_at=now))


async def get_workspace(session: AsyncSession, workspace_id: uuid.UUID) -> Workspace | None:
    return await session.get(Workspace, workspace_id)
