"""Inbox queries; every one is scoped to the caller's workspace."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.inbox.models import Contact, Conversation, ConversationMessage
from app.pagination import PageParams, keyset


class InboxRepository:
    def __init__(self, session: AsyncSession, workspace_id: uuid.UUID) -> None:
        self.session = session
        self.workspace_id = workspace_id

    async def _all(self, stmt: Any) -> list[Any]:
        return list((await self.session.execute(stmt)).scalars())

    async def contacts(self, params: PageParams, connection_id: uuid.UUID | None) -> list[Contact]:
        stmt = select(Contact).where(Contact.workspace_id == self.workspace_id)
        if connection_id is not None:
            stmt = stmt.where(Contact.connection_id == connection_id)
        return await self._all(
            keyset(stmt, Contact.created_at, Contact.id, params, descending=True)
        )

    async def conversations(
        self, params: PageParams, connection_id: uuid.UUID | None
    ) -> list[Conversation]:
        stmt = select(Conversation).where(Conversation.workspace_id == self.workspace_id)
        if connection_id is not None:
            stmt = stmt.where(Conversation.connection_id == connection_id)
        return await self._all(
            keyset(stmt, Conversation.last_activity_at, Conversation.id, params, descending=True)
        )

    async def conversation(self, conversation_id: uuid.UUID) -> Conversation | None:
        stmt = select(Conversation).where(
            Conversation.workspace_id == self.workspace_id, Conversation.id == conversation_id
        )
        return (await self.session.execute(stmt)).scalar_one_or_none()

    async def messages(
        self, conversation_id: uuid.UUID, params: PageParams
    ) -> list[ConversationMessage]:
        stmt = select(ConversationMessage).where(
            ConversationMessage.workspace_id == self.workspace_id,
            ConversationMessage.conversation_id == conversation_id,
        )
        # Oldest first: a conversation reads top to bottom.
        return await self._all(
            keyset(
                stmt, ConversationMessage.sent_at, ConversationMessage.id, params, descending=False
            )
        )

    async def contacts_by_id(self, contact_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, Contact]:
        """The workspace's contacts among `contact_ids` (others are simply absent)."""
        found: dict[uuid.UUID, Contact] = {}
        for chunk in _chunks(contact_ids):
            stmt = select(Contact).where(
                Contact.workspace_id == self.workspace_id, Contact.id.in_(chunk)
            )
            found.update((row.id, row) for row in await self._all(stmt))
        return found

    async def conversations_by_id(
        self, conversation_ids: Sequence[uuid.UUID]
    ) -> dict[uuid.UUID, Conversation]:
        """The workspace's conversations among `conversation_ids`."""
        found: dict[uuid.UUID, Conversation] = {}
        for chunk in _chunks(conversation_ids):
            stmt = select(Conversation).where(
                Conversation.workspace_id == self.workspace_id, Conversation.id.in_(chunk)
            )
            found.update((row.id, row) for row in await self._all(stmt))
        return found


# Ids looked up per statement: well inside every driver's limit on bound parameters.
_LOOKUP_CHUNK = 5000


def _chunks(ids: Sequence[uuid.UUID]) -> list[list[uuid.UUID]]:
    return [list(ids[i : i + _LOOKUP_CHUNK]) for i in range(0, len(ids), _LOOKUP_CHUNK)]
