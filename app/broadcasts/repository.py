"""Queries on broadcasts; every one is scoped to the caller's workspace (except the
connection-deletion hook's, which follows a connection id)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import Select, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.broadcasts.models import Broadcast, BroadcastDecision
from app.pagination import PageParams, keyset


class BroadcastRepository:
    def __init__(self, session: AsyncSession, workspace_id: uuid.UUID) -> None:
        self.session = session
        self.workspace_id = workspace_id

    def _scoped(self) -> Select[tuple[Broadcast]]:
        return select(Broadcast).where(Broadcast.workspace_id == self.workspace_id)

    async def get(self, broadcast_id: uuid.UUID) -> Broadcast | None:
        stmt = self._scoped().where(Broadcast.id == broadcast_id)
        return (await self.session.execute(stmt)).scalar_one_or_none()

    async def by_idempotency_key(self, key: str) -> Broadcast | None:
        stmt = self._scoped().where(Broadcast.idempotency_key == key)
        return (await self.session.execute(stmt)).scalar_one_or_none()

    async def decide(
        self,
        broadcast_id: uuid.UUID,
        allowed_from: list[BroadcastDecision],
        to: BroadcastDecision,
        at: datetime,
        **values: Any,
    ) -> bool:
        """One conditional transition of the batch's decision; True if this caller won it
        (of two reviewers racing, the loser's update matches no row)."""
        stmt = (
            update(Broadcast)
            .where(
                Broadcast.workspace_id == self.workspace_id,
                Broadcast.id == broadcast_id,
                Broadcast.decision.in_(allowed_from),
            )
            .values(decision=to, decided_at=at, updated_at=at, **values)
            .execution_options(synchronize_session=False)
        )
        return bool((await self.session.execute(stmt)).rowcount)  # type: ignore[attr-defined]

    async def list(self, params: PageParams) -> list[Broadcast]:
        stmt = keyset(self._scoped(), Broadcast.created_at, Broadcast.id, params, descending=True)
        return list((await self.session.execute(stmt)).scalars())


async def undecided_or_approved_of_connection(
    session: AsyncSession, connection_id: uuid.UUID
) -> list[Broadcast]:
    """A connection's broadcasts that may still have messages to send."""
    stmt = select(Broadcast).where(
        Broadcast.connection_id == connection_id,
        Broadcast.decision.in_([BroadcastDecision.pending_approval, BroadcastDecision.approved]),
    )
    return list((await session.execute(stmt)).scalars())
