"""The inbox's rules: what a caller may read, and in which order."""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import NotFound
from app.inbox.models import Contact, Conversation, ConversationMessage
from app.inbox.repository import InboxRepository
from app.pagination import PageParams, page_of


class InboxService:
    """Reads scoped to one workspace; another workspace's rows are simply not there."""

    def __init__(self, session: AsyncSession, workspace_id: uuid.UUID) -> None:
        self.repository = InboxRepository(session, workspace_id)

    async def contacts(
        self, params: PageParams, connection_id: uuid.UUID | None
    ) -> tuple[list[Contact], str | None]:
        """Newest first."""
        rows = await self.repository.contacts(params, connection_id)
        return page_of(rows, params, lambda r: r.created_at)

    async def conversations(
        self, params: PageParams, connection_id: uuid.UUID | None
    ) -> tuple[list[Conversation], str | None]:
        """Most recently active first (a conversation active meanwhile may move pages)."""
        rows = await self.repository.conversations(params, connection_id)
        return page_of(rows, params, lambda r: r.last_activity_at)

    async def messages(
        self, conversation_id: uuid.UUID, params: PageParams
    ) -> tuple[list[ConversationMessage], str | None]:
        """Oldest first, as a conversation reads; 404 for a conversation not visible here."""
        if await self.repository.conversation(conversation_id) is None:
            raise NotFound("No such conversation.")
        rows = await self.repository.messages(conversation_id, params)
        return page_of(rows, params, lambda r: r.sent_at)
