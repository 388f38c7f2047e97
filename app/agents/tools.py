"""What the MCP tools do: the services of the REST API, called for an agent.

Each tool call is one unit of work (its own database session, committed when it
returns) on behalf of the API token that authenticated the HTTP request
(`AuthContext`, set by `app.agents.endpoint`). The workspace is the token's,
never an argument. Sending goes through `MessageService.create`, exactly as
`POST /api/v1/messages` does: the same validation, the same approval queue, the
same idempotency keys. A tool never waits for a reviewer; it answers with the
message's status and the agent asks again later (`get_message`).

The answers reuse the REST API's response models, none of which carries a
secret (bot tokens, webhook secrets and API tokens are never in them).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.auth.models import Role
from app.auth.service import AuthContext
from app.connections.router import connection_out
from app.connections.schemas import ConnectionOut
from app.connections.service import ConnectionCollaborators, ConnectionService
from app.db import session_scope
from app.errors import Forbidden, ValidationFailed
from app.inbox.schemas import ConversationMessageOut, ConversationOut
from app.inbox.service import InboxService
from app.messages.router import message_out
from app.messages.schemas import MessageCreate, MessageOut
from app.messages.service import MessageService
from app.pagination import Page, PageParams, page_of

SENDING_ROLES = frozenset({Role.sender, Role.admin})


class SendResult(MessageOut):
    """The message `send_message` created (or, for a repeated idempotency key, the
    one the key created before: `created` is false)."""

    created: bool


class CannotSend(Forbidden):
    default_message = (
        "This API token's role cannot send messages; use a sender or admin token. "
        "A reviewer token approves messages, it does not send them."
    )


def validation_failure(exc: ValidationError) -> ValidationFailed:
    """A pydantic error as the REST API words it: `field: message`."""
    first = exc.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or None
    message = str(first["msg"])
    return ValidationFailed(f"{field}: {message}" if field else message, field=field)


@dataclass(frozen=True)
class AgentTools:
    """The tools' collaborators, assembled once by the process that serves /mcp."""

    session_factory: async_sessionmaker[AsyncSession]
    # Pending messages expire after this (the app's APPROVAL_TTL), as over REST.
    approval_ttl: timedelta
    connections: ConnectionCollaborators

    async def send_message(
        self,
        auth: AuthContext,
        *,
        connection_id: str,
        text: str,
        chat_id: int | str | None = None,
        conversation_id: str | None = None,
        parse_mode: str | None = None,
        idempotency_key: str | None = None,
    ) -> SendResult:
        """Queue a message through the approval queue; never waits for a reviewer."""
        if auth.role not in SENDING_ROLES:
            raise CannotSend()
        fields: dict[str, Any] = {
            "connection_id": connection_id,
            "chat_id": chat_id,
            "conversation_id": conversation_id,
            "text": text,
            "parse_mode": parse_mode,
        }
        try:
            body = MessageCreate.model_validate(
                {name: value for name, value in fields.items() if value is not None}
            )
        except ValidationError as exc:
            raise validation_failure(exc) from None
        async for session in session_scope(self.session_factory):
            service = MessageService(session, auth, self.approval_ttl)
            message, created = await service.create(body, idempotency_key)
            result = SendResult(**message_out(message).model_dump(), created=created)
        return result

    async def get_message(self, auth: AuthContext, message_id: uuid.UUID) -> MessageOut:
        async for session in session_scope(self.session_factory):
            service = MessageService(session, auth, self.approval_ttl)
            result = message_out(await service.get(message_id))
        return result

    async def list_conversations(
        self, auth: AuthContext, connection_id: uuid.UUID | None, params: PageParams
    ) -> Page[ConversationOut]:
        async for session in session_scope(self.session_factory):
            rows, next_cursor = await InboxService(session, auth.workspace_id).conversations(
                params, connection_id
            )
            page = Page[ConversationOut](
                items=[ConversationOut.model_validate(r, from_attributes=True) for r in rows],
                next_cursor=next_cursor,
            )
        return page

    async def get_conversation_messages(
        self, auth: AuthContext, conversation_id: uuid.UUID, params: PageParams
    ) -> Page[ConversationMessageOut]:
        async for session in session_scope(self.session_factory):
            rows, next_cursor = await InboxService(session, auth.workspace_id).messages(
                conversation_id, params
            )
            page = Page[ConversationMessageOut](
                items=[
                    ConversationMessageOut.model_validate(r, from_attributes=True) for r in rows
                ],
                next_cursor=next_cursor,
            )
        return page

    async def list_connections(self, auth: AuthContext, params: PageParams) -> Page[ConnectionOut]:
        async for session in session_scope(self.session_factory):
            service = ConnectionService(session, auth, self.connections)
            rows, next_cursor = page_of(
                await service.list_connections(params), params, lambda c: c.created_at
            )
            page = Page[ConnectionOut](
                items=[connection_out(c) for c in rows], next_cursor=next_cursor
            )
        return page
