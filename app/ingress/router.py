"""The inbox: received updates, contacts, conversations and their messages (any role)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query

from app.deps import AnyRole, DbSession
from app.errors import NotFound
from app.inbox.repository import InboxRepository
from app.ingress.repository import UpdateRepository
from app.ingress.schemas import ContactOut, ConversationMessageOut, ConversationOut, EventOut
from app.pagination import Page, PageParams, page_of

router = APIRouter(prefix="/api/v1", tags=["inbox"])
Params = Annotated[PageParams, Depends()]


@router.get("/connections/{connection_id}/events")
async def list_events(
    connection_id: uuid.UUID, auth: AnyRole, session: DbSession, params: Params
) -> Page[EventOut]:
    """Received updates, newest first: update_id, type and when it arrived."""
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


@router.get("/contacts")
async def list_contacts(
    auth: AnyRole,
    session: DbSession,
    params: Params,
    connection_id: Annotated[uuid.UUID | None, Query()] = None,
) -> Page[ContactOut]:
    inbox = InboxRepository(session, auth.workspace_id)
    rows, next_cursor = page_of(
        await inbox.contacts(params, connection_id), params, lambda r: r.created_at
    )
    return Page(
        items=[ContactOut.model_validate(r, from_attributes=True) for r in rows],
        next_cursor=next_cursor,
    )


@router.get("/conversations")
async def list_conversations(
    auth: AnyRole,
    session: DbSession,
    params: Params,
    connection_id: Annotated[uuid.UUID | None, Query()] = None,
) -> Page[ConversationOut]:
    """Conversations, most recently active first."""
    inbox = InboxRepository(session, auth.workspace_id)
    rows, next_cursor = page_of(
        await inbox.conversations(params, connection_id), params, lambda r: r.last_activity_at
    )
    return Page(
        items=[ConversationOut.model_validate(r, from_attributes=True) for r in rows],
        next_cursor=next_cursor,
    )


@router.get("/conversations/{conversation_id}/messages")
async def list_conversation_messages(
    conversation_id: uuid.UUID, auth: AnyRole, session: DbSession, params: Params
) -> Page[ConversationMessageOut]:
    """The conversation's messages, inbound and outbound, oldest first."""
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
