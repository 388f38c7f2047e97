"""The send API's rules: validation at the door, addressing, idempotency, approvals.

A message is checked against Telegram's rules before anything is stored (a reviewer
must never approve a text Telegram will refuse). It then waits for approval, or is
queued at once when its connection's `approval_mode` is `none`. Decisions go through
the state machine (`app.messages.states`), so racing reviewers cannot both win.

Idempotency: a request with an `Idempotency-Key` creates at most one message per key
and workspace (a unique index decides between concurrent requests). The same key with
the same body answers that message again; with another body it is 409. Keys are kept
with their message, so far longer than the 24 hours callers may rely on.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol, TypeVar

from pydantic import BaseModel
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app import metrics
from app.audit.repository import record
from app.auth.models import Role
from app.auth.service import AuthContext
from app.connections.models import ApprovalMode, TelegramConnection
from app.connections.repository import ConnectionRepository
from app.db import checkpoint, new_id, utcnow
from app.errors import Forbidden, NotFound, ValidationFailed
from app.inbox.recording import conversation_for_chat, record_outbound
from app.inbox.repository import InboxRepository
from app.messages import states
from app.messages.errors import (
    ConnectionDeleted,
    IdempotencyKeyReused,
    NotCancellable,
    NotPending,
    SelfApproval,
)
from app.messages.formatting import InvalidText, ParseMode, validate_text
from app.messages.models import MessageStatus, OutboundMessage
from app.messages.repository import MessageRepository
from app.messages.schemas import MessageCreate
from app.pagination import PageParams, page_of


@dataclass(frozen=True)
class Address:
    """Where a message goes: the chat, and the conversation's place within it."""

    chat_id: int | str
    conversation_id: uuid.UUID | None
    business_connection_id: str | None = None
    message_thread_id: int | None = None
    direct_messages_topic_id: int | None = None


def fingerprint(body: BaseModel) -> str:
    """The same request body, however its JSON was spelled."""
    canonical = json.dumps(body.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def check_text(text: str, parse_mode: ParseMode | None) -> None:
    """Telegram's rules for a message's text (422 naming the problem and its place)."""
    try:
        validate_text(text, parse_mode)
    except InvalidText as exc:
        raise ValidationFailed(f"text: {exc.problem.message}", field="text") from None


def repeat_of(earlier_fingerprint: str | None, request: str) -> None:
    """An idempotent repeat must carry the body the key was first used with (else 409)."""
    if earlier_fingerprint != request:
        raise IdempotencyKeyReused()


class _Idempotent(Protocol):
    request_fingerprint: str | None


IdempotentRow = TypeVar("IdempotentRow", bound=_Idempotent)


async def add_once(
    session: AsyncSession,
    row: IdempotentRow,
    idempotency_key: str | None,
    earlier_with: Callable[[str], Awaitable[IdempotentRow | None]],
) -> IdempotentRow | None:
    """Store `row`; None when it was stored. When a concurrent request with the same
    key won the unique index meanwhile, that request's row (after checking the body
    is the same: 409 otherwise)."""
    session.add(row)
    try:
        await session.flush()
    except IntegrityError:
        await session.rollback()
        if idempotency_key is None:
            raise
        earlier = await earlier_with(idempotency_key)
        if earlier is None:
            raise
        # A row with a key always carries its request's fingerprint.
        repeat_of(earlier.request_fingerprint, row.request_fingerprint or "")
        return earlier
    return None


class MessageService:
    def __init__(self, session: AsyncSession, auth: AuthContext, approval_ttl: timedelta) -> None:
        self.session = session
        self.auth = auth
        self.approval_ttl = approval_ttl
        self.repository = MessageRepository(session, auth.workspace_id)

    # -- reading -----------------------------------------------------------------

    async def get(self, message_id: uuid.UUID) -> OutboundMessage:
        message = await self.repository.get(message_id)
        if message is None:
            raise NotFound("No such message.")
        return message

    async def list_messages(
        self,
        params: PageParams,
        *,
        status: MessageStatus | None,
        connection_id: uuid.UUID | None,
        conversation_id: uuid.UUID | None,
    ) -> tuple[list[OutboundMessage], str | None]:
        rows = await self.repository.list(
            params, status=status, connection_id=connection_id, conversation_id=conversation_id
        )
        return page_of(rows, params, lambda r: r.created_at)

    # -- sending -----------------------------------------------------------------

    async def create(
        self, body: MessageCreate, idempotency_key: str | None
    ) -> tuple[OutboundMessage, bool]:
        """The message, and whether this request created it (False: an idempotent repeat)."""
        check_text(body.text, body.parse_mode)
        request = fingerprint(body)
        if idempotency_key is not None:
            earlier = await self.repository.by_idempotency_key(idempotency_key)
            if earlier is not None:
                return self._repeat(earlier, request), False
        connection = await self._connection(body.connection_id)
        address = await self._address(body, connection)
        now = utcnow()
        immediate = connection.approval_mode == ApprovalMode.none
        message = OutboundMessage(
            id=new_id(),
            workspace_id=self.auth.workspace_id,
            connection_id=connection.id,
            conversation_id=address.conversation_id,
            chat_id=str(address.chat_id),
            business_connection_id=address.business_connection_id,
            message_thread_id=address.message_thread_id,
            direct_messages_topic_id=address.direct_messages_topic_id,
            text=body.text,
            parse_mode=body.parse_mode,
            reply_to_message_id=body.reply_to_message_id,
            disable_notification=body.disable_notification,
            protect_content=body.protect_content,
            link_preview_options=(
                body.link_preview_options.model_dump_json(exclude_none=True)
                if body.link_preview_options is not None
                else None
            ),
            status=MessageStatus.queued if immediate else MessageStatus.pending_approval,
            requested_by=self.auth.token_id,
            expires_at=None if immediate else now + self.approval_ttl,
            next_attempt_at=now if immediate else None,
            attempts=0,
            idempotency_key=idempotency_key,
            request_fingerprint=request,
            created_at=now,
            updated_at=now,
        )
        earlier = await add_once(
            self.session, message, idempotency_key, self.repository.by_idempotency_key
        )
        if earlier is not None:
            return earlier, False
        await self._record_created(message, now)
        return message, True

    def _repeat(self, earlier: OutboundMessage, request: str) -> OutboundMessage:
        repeat_of(earlier.request_fingerprint, request)
        return earlier

    async def _record_created(self, message: OutboundMessage, now: datetime) -> None:
        await record(
            self.session,
            workspace_id=message.workspace_id,
            action="requested",
            message_id=message.id,
            actor_token_id=self.auth.token_id,
            at=now,
        )
        if message.conversation_id is not None:
            await record_outbound(
                self.session,
                outbound_message_id=message.id,
                workspace_id=message.workspace_id,
                connection_id=message.connection_id,
                conversation_id=message.conversation_id,
                text=message.text,
                status=message.status,
                at=now,
            )

    async def _connection(self, connection_id: uuid.UUID) -> TelegramConnection:
        connection = await ConnectionRepository(self.session, self.auth.workspace_id).get_any(
            connection_id
        )
        if connection is None:
            raise NotFound("No such connection.")
        if connection.deleted_at is not None:
            raise ConnectionDeleted()
        return connection

    async def _address(self, body: MessageCreate, connection: TelegramConnection) -> Address:
        """Where the message goes. A conversation is sent to where it lives: its chat,
        and its business connection, forum thread or direct-messages topic."""
        if body.conversation_id is not None:
            inbox = InboxRepository(self.session, self.auth.workspace_id)
            conversation = await inbox.conversation(body.conversation_id)
            if conversation is None:
                raise NotFound("No such conversation.")
            if conversation.connection_id != connection.id:
                raise ValidationFailed(
                    "conversation_id: the conversation belongs to another connection.",
                    field="conversation_id",
                )
            return Address(
                chat_id=conversation.chat_id,
                conversation_id=conversation.id,
                business_connection_id=conversation.business_connection_id,
                message_thread_id=body.message_thread_id or conversation.thread_id,
                direct_messages_topic_id=conversation.direct_messages_topic_id,
            )
        assert body.chat_id is not None
        conversation_id = None
        if isinstance(body.chat_id, int) and body.message_thread_id is None:
            # A chat's plain conversation, if it has written to the bot already.
            candidate = conversation_for_chat(connection.id, body.chat_id)
            inbox = InboxRepository(self.session, self.auth.workspace_id)
            if await inbox.conversation(candidate) is not None:
                conversation_id = candidate
        return Address(
            chat_id=body.chat_id,
            conversation_id=conversation_id,
            message_thread_id=body.message_thread_id,
        )

    # -- decisions ---------------------------------------------------------------

    async def approve(self, message_id: uuid.UUID) -> OutboundMessage:
        message = await self._decidable(message_id)
        now = utcnow()
        if message.expires_at is not None and message.expires_at <= now:
            # Recorded now (the refusal below rolls the request back), not left for
            # the worker's next expiry pass.
            await states.expire_due(self.session, now)
            await checkpoint(self.session)
            raise NotPending("The message expired before it was approved; its status is expired.")
        decided = states.Decision(actor_token_id=self.auth.token_id, at=now)
        if not await states.approve(self.session, self.auth.workspace_id, message_id, decided):
            raise await self._no_longer_pending(message_id)
        metrics.APPROVAL_WAIT.observe(max(0.0, (now - message.created_at).total_seconds()))
        return await self._reloaded(message)

    async def reject(self, message_id: uuid.UUID, reason: str) -> OutboundMessage:
        await self._decidable(message_id)
        decided = states.Decision(actor_token_id=self.auth.token_id, at=utcnow(), reason=reason)
        if not await states.reject(self.session, self.auth.workspace_id, message_id, decided):
            raise await self._no_longer_pending(message_id)
        return await self._reloaded(await self.get(message_id))

    async def cancel(self, message_id: uuid.UUID) -> OutboundMessage:
        message = await self.get(message_id)
        if self.auth.role != Role.admin and message.requested_by != self.auth.token_id:
            raise Forbidden("Only the token that requested a message, or an admin, may cancel it.")
        decided = states.Decision(actor_token_id=self.auth.token_id, at=utcnow())
        if not await states.cancel(self.session, self.auth.workspace_id, message_id, decided):
            current = await self._reloaded(message)
            raise NotCancellable(
                f"Only a message pending approval or queued can be cancelled; "
                f"its status is {current.status}."
            )
        return await self._reloaded(message)

    async def _decidable(self, message_id: uuid.UUID) -> OutboundMessage:
        message = await self.get(message_id)
        if message.requested_by == self.auth.token_id:
            raise SelfApproval()
        if message.status != MessageStatus.pending_approval:
            raise NotPending(f"The message is no longer pending; its status is {message.status}.")
        return message

    async def _no_longer_pending(self, message_id: uuid.UUID) -> NotPending:
        current = await self._reloaded(await self.get(message_id))
        return NotPending(f"The message is no longer pending; its status is {current.status}.")

    async def _reloaded(self, message: OutboundMessage) -> OutboundMessage:
        # The transitions are Core updates: the loaded object is stale.
        await self.session.refresh(message)
        return message
