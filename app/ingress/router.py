"""The inbox: received updates, contacts, conversations and their messages (any role)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query

from app.deps import AnyRole, DbSession
from app.errors import NotFound, Unauthenticated, ValidationFailed, responses
from app.inbox.repository import InboxRepository
from app.ingress.repository import UpdateRepository
from app.ingress.schemas import ContactOut, ConversationMessageOut, ConversationOut, EventOut
from app.pagination import Page, PageParams, page_of

router = APIRouter(prefix="/api/v1", tags=["inbox"])
Params = Annotated[PageParams, Depends()]


@router.get(
    "/connections/{connection_id}/events",
    summary="List a connection's received updates",
    responses=responses(Unauthenticated, NotFound, ValidationFailed),
)
async def list_events(
    connection_id: uuid.UUID, auth: AnyRole, session: DbSession, params: Params
) -> Page[EventOut]:
    """Any role. The updates the connection received, newest first: `update_id`,
    type, source (`webhook` or `polling`) and when it arrived; each once, however
    often Telegram delivered it. A deleted connection, or one of another
    workspace, is 404. Cursor-paginated (`?cursor=`, `?limit=` 1-200, default 50)."""
    updates = UpdateRepository(session, auth.workspace_id)
    if not await updates.connection_exists(connection_id):
        raise NotFound("No such connection.")
    rows, next_cursor = page_of(
        await updates.events(connection_id, params), params, lambda r: r.received_at
    )
    return Page(
        items=[
            EventOut(
                id=r.id,
                connection_id=r.connection_id,
                update_id=r.update_id,
                type=r.kind,
                source=r.source,
                received_at=r.received_at,
            )
            for r in rows
        ],
        next_cursor=next_cursor,
    )


@router.get(
    "/contacts",
    summary="List contacts",
    responses=responses(Unauthenticated, ValidationFailed),
)
async def list_contacts(
    auth: AnyRole,
    session: DbSession,
    params: Params,
    connection_id: Annotated[uuid.UUID | None, Query()] = None,
) -> Page[ContactOut]:
    """Any role. Everyone who wrote to the workspace's bots (a user, or a chat
    speaking as itself), newest first; `?connection_id=` narrows it to one bot.
    Contacts stay after their connection is deleted. Cursor-paginated."""
    inbox = InboxRepository(session, auth.workspace_id)
    rows, next_cursor = page_of(
        await inbox.contacts(params, connection_id), params, lambda r: r.created_at
    )
    return Page(
        items=[ContactOut.model_validate(r, from_attributes=True) for r in rows],
        next_cursor=next_cursor,
    )


@router.get(
    "/conversations",
    summary="List conversations",
    responses=responses(Unauthenticated, ValidationFailed),
)
async def list_conversations(
    auth: AnyRole,
    session: DbSession,
    params: Params,
    connection_id: Annotated[uuid.UUID | None, Query()] = None,
) -> Page[ConversationOut]:
    """Any role. Conversations, most recently active first; `?connection_id=`
    narrows it to one bot. Business and direct-messages chats are conversations
    of their own, apart from the regular chat with the same id. A conversation
    that becomes active while you page may move between pages. Cursor-paginated."""
    inbox = InboxRepository(session, auth.workspace_id)
    rows, next_cursor = page_of(
        await inbox.conversations(params, connection_id), params, lambda r: r.last_activity_at
    )
    return Page(
        items=[ConversationOut.model_validate(r, from_attributes=True) for r in rows],
        next_cursor=next_cursor,
    )


@router.get(
    "/conversations/{conversation_id}/messages",
    summary="List a conversation's messages",
    responses=responses(Unauthenticated, NotFound, ValidationFailed),
)
async def list_conversation_messages(
    conversation_id: uuid.UUID, auth: AnyRole, session: DbSession, params: Params
) -> Page[ConversationMessageOut]:
    """Any role. The conversation's messages, oldest first; an edited message shows
    its latest text and `edited_at`. A conversation of another workspace is 404.
    Cursor-paginated (`?cursor=`, `?limit=` 1-200, default 50)."""
    inbox = InboxRepository(session, auth.workspace_id)
    if await inbox.conversation(conversation_id) is None:
        raise NotFound("No such conversation.")
    rows, next_cursor = page_of(
        await inbox.messages(conversation_id, params), params, lambda r: r.sent_at
    )
    return Page(
        items=[ConversationMessageOut.model_validate(r, from_attributes=True) for r in rows],
        next_cursor=next_cursor,
    )
