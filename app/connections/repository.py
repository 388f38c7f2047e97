"""Queries for connections; every query but one is scoped to a workspace."""

from __future__ import annotations

import uuid

from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.connections.models import TelegramConnection
from app.pagination import PageParams, keyset


class ConnectionRepository:
    def __init__(self, session: AsyncSession, workspace_id: uuid.UUID) -> None:
        self.session = session
        self.workspace_id = workspace_id

    def _live(self) -> Select[tuple[TelegramConnection]]:
        return select(TelegramConnection).where(
            TelegramConnection.workspace_id == self.workspace_id,
            TelegramConnection.deleted_at.is_(None),
        )

    async def get(
        self, connection_id: uuid.UUID, *, for_update: bool = False
    ) -> TelegramConnection | None:
        stmt = self._live().where(TelegramConnection.id == connection_id)
        if for_update:
            stmt = stmt.with_for_update()
        return (await self.session.execute(stmt)).scalar_one_or_none()

    async def list(self, params: PageParams) -> list[TelegramConnection]:
        stmt = keyset(
            self._live(),
            TelegramConnection.created_at,
            TelegramConnection.id,
            params,
            descending=True,
        )
        return list((await self.session.execute(stmt)).scalars())

    def add(self, connection: TelegramConnection) -> None:
        self.session.add(connection)


async def find_live_connection_by_bot(
    session: AsyncSession, bot_id: int
) -> TelegramConnection | None:
    """Unscoped on purpose: a bot may belong to one workspace only, whichever it is.

    Callers must never reveal anything of a row of another workspace.
    """
    stmt = select(TelegramConnection).where(
        TelegramConnection.bot_id == bot_id, TelegramConnection.deleted_at.is_(None)
    )
    return (await session.execute(stmt)).scalar_one_or_none()
