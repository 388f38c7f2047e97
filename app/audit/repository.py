"""Writing and reading the audit trail; every read is scoped to a workspace."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import Table, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from app.audit.models import AuditEvent
from app.db import insert_many, new_id
from app.pagination import PageParams, keyset

AUDIT: Table = AuditEvent.__table__  # type: ignore[assignment]


async def record(
    executor: AsyncSession | AsyncConnection,
    *,
    workspace_id: uuid.UUID,
    action: str,
    message_id: uuid.UUID | None,
    actor_token_id: uuid.UUID | None,
    at: datetime,
    reason: str | None = None,
    broadcast_id: uuid.UUID | None = None,
) -> None:
    """One audit row, in the caller's transaction (so it commits with what it records)."""
    await executor.execute(
        insert(AUDIT).values(
            id=new_id(),
            workspace_id=workspace_id,
            actor_token_id=actor_token_id,
            action=action,
            message_id=message_id,
            broadcast_id=broadcast_id,
            reason=reason,
            created_at=at,
        )
    )


async def record_many(
    executor: AsyncSession | AsyncConnection, rows: list[dict[str, object]]
) -> None:
    """Several audit rows at once (the dispatcher's outcomes of one batch)."""
    await insert_many(executor, AUDIT, [{"id": new_id(), **row} for row in rows])


class AuditRepository:
    def __init__(self, session: AsyncSession, workspace_id: uuid.UUID) -> None:
        self.session = session
        self.workspace_id = workspace_id

    async def events(
        self,
        params: PageParams,
        message_id: uuid.UUID | None,
        broadcast_id: uuid.UUID | None = None,
    ) -> list[AuditEvent]:
        stmt = select(AuditEvent).where(AuditEvent.workspace_id == self.workspace_id)
        if message_id is not None:
            stmt = stmt.where(AuditEvent.message_id == message_id)
        if broadcast_id is not None:
            stmt = stmt.where(AuditEvent.broadcast_id == broadcast_id)
        stmt = keyset(stmt, AuditEvent.created_at, AuditEvent.id, params, descending=True)
        return list((await self.session.execute(stmt)).scalars())
