"""The inbox API (any role): contacts, conversations and their messages."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query

from app.auth.deps import AnyRole
from app.deps import DbSession
from app.errors import NotFound, Unauthenticated, ValidationFailed, responses
from app.inbox.schemas import ContactOut, ConversationMessageOut, ConversationOut
from app.inbox.service import InboxService
from app.pagination import Page, PageParams

router = APIRouter(prefix="/api/v1", tags=["inbox"])
Params = Annotated[PageParams, Depends()]


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
    rows, next_cursor = await InboxService(session, auth.workspace_id).contacts(
        params, connection_id
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
    rows, next_cursor = await InboxService(session, auth.workspace_id).conversations(
        params, connection_id
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
    rows, next_cursor = await InboxService(session, auth.workspace_id).messages(
        conversation_id, params
    )
    return Page(
        items=[ConversationMessageOut.model_validate(r, from_attributes=True) for r in rows],
        next_cursor=next_cursor,
    )
