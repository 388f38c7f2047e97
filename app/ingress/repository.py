"""Queries on received updates; every one is scoped to the caller's workspace."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.connections.repository import live_connection_exists
from app.ingress.models import TelegramUpdate
from app.pagination import PageParams, keyset


class UpdateRepository:
    def __init__(self, session: AsyncSession, workspace_id: uuid.UUID) -> None:
        self.session = session
        self.workspace_id = workspace_id

    async def _all(self, stmt: Any) -> list[Any]:
        return list((await self.session.execute(stmt)).scalars())

    async def connection_exists(self, connection_id: uuid.UUID) -> bool:
        return await live_connection_exists(self.session, self.workspace_id, connection_id)

    async def events(self, connection_id: uuid.UUID, params: PageParams) -> list[TelegramUpdate]:
        stmt = select(TelegramUpdate).where(
            TelegramUpdate.workspace_id == self.workspace_id,
            TelegramUpdate.connection_id == connection_id,
        )
        return await self._all(
            keyset(stmt, TelegramUpdate.received_at, TelegramUpdate.id, params, descending=True)
        )
