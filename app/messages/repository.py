"""Queries on outbound messages; every one is scoped to the caller's workspace."""

from __future__ import annotations

import uuid

from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.messages.models import MessageStatus, OutboundMessage
from app.pagination import PageParams, keyset


class MessageRepository:
    def __init__(self, session: AsyncSession, workspace_id: uuid.UUID) -> None:
        self.session = session
        self.workspace_id = workspace_id

    def _scoped(self) -> Select[tuple[OutboundMessage]]:
        return select(OutboundMessage).where(OutboundMessage.workspace_id == self.workspace_id)

    async def get(self, message_id: uuid.UUID) -> OutboundMessage | None:
        stmt = self._scoped().where(OutboundMessage.id == message_id)
        return (await self.session.execute(stmt)).scalar_one_or_none()

    async def by_idempotency_key(self, key: str) -> OutboundMessage | None:
        stmt = self._scoped().where(OutboundMessage.idempotency_key == key)
        return (await self.session.execute(stmt)).scalar_one_or_none()

    async def in_broadcast(
        self, broadcast_id: uuid.UUID, params: PageParams, *, status: MessageStatus | None
    ) -> list[OutboundMessage]:
        """A broadcast's messages in the order of its recipients."""
        stmt = self._scoped().where(OutboundMessage.broadcast_id == broadcast_id)
        if status is not None:
            stmt = stmt.where(OutboundMessage.status == status)
        stmt = keyset(
            stmt,
            OutboundMessage.broadcast_position,
            OutboundMessage.id,
            params,
            descending=False,
            kind=int,
        )
        return list((await self.session.execute(stmt)).scalars())

    async def list(
        self,
        params: PageParams,
        *,
        status: MessageStatus | None,
        connection_id: uuid.UUID | None,
        conversation_id: uuid.UUID | None,
    ) -> list[OutboundMessage]:
        stmt = self._scoped()
        if status is not None:
            stmt = stmt.where(OutboundMessage.status == status)
        if connection_id is not None:
            stmt = stmt.where(OutboundMessage.connection_id == connection_id)
        if conversation_id is not None:
            stmt = stmt.where(OutboundMessage.conversation_id == conversation_id)
        # Reviewers work through the pending queue oldest first; other lists are
        # newest first.
        oldest_first = status == MessageStatus.pending_approval
        stmt = keyset(
            stmt,
            OutboundMessage.created_at,
            OutboundMessage.id,
            params,
            descending=not oldest_first,
        )
        return list((await self.session.execute(stmt)).scalars())
