"""Queries for workspaces and API tokens; every token query is scoped to a workspace."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import Select, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from app.auth.models import ApiToken, Role, Workspace
from app.pagination import PageParams, keyset


class TokenRepository:
    def __init__(self, session: AsyncSession, workspace_id: uuid.UUID) -> None:
        self.session = session
        self.workspace_id = workspace_id

    def _scoped(self) -> Select[tuple[ApiToken]]:
        return select(ApiToken).where(ApiToken.workspace_id == self.workspace_id)

    async def get(self, token_id: uuid.UUID) -> ApiToken | None:
        stmt = self._scoped().where(ApiToken.id == token_id)
        return (await self.session.execute(stmt)).scalar_one_or_none()

    async def lock_workspace(self) -> None:
        """Lock the workspace row until the transaction ends (PostgreSQL), so that
        decisions about its admin tokens are taken one at a time. NO KEY UPDATE:
        rows referring to the workspace can still be inserted meanwhile. SQLite
        renders no FOR UPDATE; it has one writer at a time, which `revoke` relies on."""
        stmt = select(Workspace.id).where(Workspace.id == self.workspace_id)
        await self.session.execute(stmt.with_for_update(key_share=True))

    async def revoke(self, token_id: uuid.UUID, now: datetime) -> bool:
        """Revoke a live token unless it is the workspace's last live admin token.

        The rule and the write are one statement: on SQLite the check runs under
        the write lock; on PostgreSQL its snapshot is only current if the caller
        holds `lock_workspace()`. False when nothing was revoked.
        """
        other = aliased(ApiToken)
        another_live_admin = (
            select(other.id)
            .where(
                other.workspace_id == self.workspace_id,
                other.role == Role.admin,
                other.revoked_at.is_(None),
                other.id != token_id,
            )
            .exists()
        )
        stmt = (
            update(ApiToken)
            .where(
                ApiToken.workspace_id == self.workspace_id,
                ApiToken.id == token_id,
                ApiToken.revoked_at.is_(None),
                or_(ApiToken.role != Role.admin, another_live_admin),
            )
            .values(revoked_at=now)
            .returning(ApiToken.id)
        )
        return (await self.session.execute(stmt)).scalar_one_or_none() is not None

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


async def list_workspaces(session: AsyncSession) -> list[Workspace]:
    """Every workspace, oldest first: for the operator's command line only (no
    endpoint lists across workspaces)."""
    stmt = select(Workspace).order_by(Workspace.created_at, Workspace.id)
    return list((await session.execute(stmt)).scalars())
