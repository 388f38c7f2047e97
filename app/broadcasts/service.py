"""The rules of broadcasts (SPEC section 11).

A broadcast is one text for many recipients of one connection, with one decision
for all of them:

- Created by a sender or admin: every recipient gets an ordinary outbound message
  (`app.messages.batches`), waiting for approval, or queued at once when the
  connection's `approval_mode` is `none`. Recipients are the connection's contacts
  or its conversations, up to 10,000, each counted once (in the order first given);
  an id that is not one of them (unknown, another workspace's, another
  connection's) refuses the whole request, naming the first such id.
- Approved once, by a reviewer or admin who did not request it: every pending
  message is queued in one statement, spread at `BROADCAST_MESSAGES_PER_SECOND`
  so the connection's ordinary messages are claimed between them. Rejected: none
  is ever sent. Pending beyond `APPROVAL_TTL`: expired (its messages expire as
  single messages do).
- Cancelled by its requester or an admin, while anything is unsent: the pending
  and queued messages are cancelled; one being sent at that moment still goes.
- Its connection deleted: unsent messages are cancelled (the messages domain's
  hook), and the broadcast with them.
- Audited on the broadcast (`broadcast_requested`, `broadcast_approved`,
  `broadcast_rejected`, `broadcast_cancelled`, with `broadcast_id`); each message's
  own sends and failures are audited per message by the dispatcher.
- `Idempotency-Key` as for single messages: the same key and body answer the
  same broadcast, another body is 409. Keys of broadcasts and of single messages
  are separate.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from app.audit.repository import record
from app.auth.models import Role
from app.auth.service import AuthContext
from app.broadcasts.models import Broadcast, BroadcastDecision, BroadcastStatus
from app.broadcasts.repository import BroadcastRepository, undecided_or_approved_of_connection
from app.broadcasts.schemas import BroadcastCreate
from app.connections.models import ApprovalMode, TelegramConnection
from app.connections.repository import ConnectionRepository
from app.db import checkpoint, new_id, utcnow
from app.errors import Forbidden, NotFound, ValidationFailed
from app.inbox.models import Conversation
from app.inbox.recording import conversation_for_chat
from app.inbox.repository import InboxRepository
from app.messages import batches, states
from app.messages.errors import ConnectionDeleted, NotCancellable, NotPending, SelfApproval
from app.messages.models import MessageStatus, OutboundMessage
from app.messages.repository import MessageRepository
from app.messages.service import add_once, check_text, fingerprint, repeat_of
from app.pagination import PageParams, page_of

Counts = dict[MessageStatus, int]


def status_of(broadcast: Broadcast, counts: Counts, now: datetime) -> BroadcastStatus:
    """The status the API answers: the decision, and once approved whether anything
    is left to send."""
    if broadcast.decision == BroadcastDecision.pending_approval:
        if broadcast.expires_at is not None and broadcast.expires_at <= now:
            return BroadcastStatus.expired
        return BroadcastStatus.pending_approval
    if broadcast.decision == BroadcastDecision.approved:
        unsent = counts.get(MessageStatus.queued, 0) + counts.get(MessageStatus.sending, 0)
        return BroadcastStatus.sending if unsent else BroadcastStatus.finished
    if broadcast.decision == BroadcastDecision.rejected:
        return BroadcastStatus.rejected
    return BroadcastStatus.cancelled


def unique_in_order(ids: list[uuid.UUID]) -> list[uuid.UUID]:
    return list(dict.fromkeys(ids))


class BroadcastService:
    def __init__(
        self,
        session: AsyncSession,
        auth: AuthContext,
        *,
        approval_ttl: timedelta,
        messages_per_second: float,
    ) -> None:
        self.session = session
        self.auth = auth
        self.approval_ttl = approval_ttl
        self.messages_per_second = messages_per_second
        self.repository = BroadcastRepository(session, auth.workspace_id)

    # -- reading -----------------------------------------------------------------

    async def get(self, broadcast_id: uuid.UUID) -> Broadcast:
        broadcast = await self.repository.get(broadcast_id)
        if broadcast is None:
            raise NotFound("No such broadcast.")
        return broadcast

    async def counts(self, broadcasts: list[Broadcast]) -> dict[uuid.UUID, Counts]:
        ids = [b.id for b in broadcasts]
        return await batches.counts(self.session, self.auth.workspace_id, ids)

    async def list_broadcasts(self, params: PageParams) -> tuple[list[Broadcast], str | None]:
        rows = await self.repository.list(params)
        return page_of(rows, params, lambda r: r.created_at)

    async def messages(
        self, broadcast_id: uuid.UUID, params: PageParams, status: MessageStatus | None
    ) -> tuple[list[OutboundMessage], str | None]:
        await self.get(broadcast_id)
        repository = MessageRepository(self.session, self.auth.workspace_id)
        rows = await repository.in_broadcast(broadcast_id, params, status=status)
        return page_of(rows, params, lambda r: r.broadcast_position)

    # -- creating ----------------------------------------------------------------

    async def create(
        self, body: BroadcastCreate, idempotency_key: str | None
    ) -> tuple[Broadcast, bool]:
        """The broadcast, and whether this request created it (False: an idempotent repeat)."""
        check_text(body.text, body.parse_mode)
        request = fingerprint(body)
        if idempotency_key is not None:
            earlier = await self.repository.by_idempotency_key(idempotency_key)
            if earlier is not None:
                repeat_of(earlier.request_fingerprint, request)
                return earlier, False
        connection = await self._connection(body.connection_id)
        if body.contact_ids is not None:
            kind, recipients = "contacts", await self._contacts(connection, body.contact_ids)
        else:
            assert body.conversation_ids is not None
            kind = "conversations"
            recipients = await self._conversations(connection, body.conversation_ids)
        now = utcnow()
        immediate = connection.approval_mode == ApprovalMode.none
        decision = BroadcastDecision.approved if immediate else BroadcastDecision.pending_approval
        broadcast = Broadcast(
            id=new_id(),
            workspace_id=self.auth.workspace_id,
            connection_id=connection.id,
            name=body.name,
            text=body.text,
            parse_mode=body.parse_mode,
            recipient_kind=kind,
            recipient_count=len(recipients),
            decision=decision,
            requested_by=self.auth.token_id,
            decided_at=now if immediate else None,
            expires_at=None if immediate else now + self.approval_ttl,
            idempotency_key=idempotency_key,
            request_fingerprint=request,
            created_at=now,
            updated_at=now,
        )
        earlier = await add_once(
            self.session, broadcast, idempotency_key, self.repository.by_idempotency_key
        )
        if earlier is not None:
            return earlier, False
        content = batches.Content(
            text=body.text,
            parse_mode=body.parse_mode,
            disable_notification=body.disable_notification,
            protect_content=body.protect_content,
            link_preview_options=(
                body.link_preview_options.model_dump_json(exclude_none=True)
                if body.link_preview_options is not None
                else None
            ),
        )
        await batches.add(
            self.session,
            batches.Batch(self.auth.workspace_id, connection.id, broadcast.id, self.auth.token_id),
            content,
            recipients,
            at=now,
            expires_at=broadcast.expires_at,
            queued_per_second=self.messages_per_second if immediate else None,
        )
        await self._audit(broadcast, "broadcast_requested", now)
        return broadcast, True

    async def _connection(self, connection_id: uuid.UUID) -> TelegramConnection:
        connection = await ConnectionRepository(self.session, self.auth.workspace_id).get_any(
            connection_id
        )
        if connection is None:
            raise NotFound("No such connection.")
        if connection.deleted_at is not None:
            raise ConnectionDeleted()
        return connection

    async def _contacts(
        self, connection: TelegramConnection, contact_ids: list[uuid.UUID]
    ) -> list[batches.Recipient]:
        """Each contact's private chat with the bot (or the chat that spoke as itself),
        with its conversation when it has one here."""
        ids = unique_in_order(contact_ids)
        inbox = InboxRepository(self.session, self.auth.workspace_id)
        contacts = await inbox.contacts_by_id(ids)
        for contact_id in ids:
            contact = contacts.get(contact_id)
            if contact is None or contact.connection_id != connection.id:
                raise ValidationFailed(
                    f"contact_ids: {contact_id} is not a contact of this connection.",
                    field="contact_ids",
                )
        chats = [contacts[contact_id].telegram_chat_id for contact_id in ids]
        known = await inbox.conversations_by_id(
            [conversation_for_chat(connection.id, chat) for chat in chats]
        )
        recipients = []
        for chat in chats:
            conversation_id = conversation_for_chat(connection.id, chat)
            recipients.append(
                batches.Recipient(chat, conversation_id if conversation_id in known else None)
            )
        return recipients

    async def _conversations(
        self, connection: TelegramConnection, conversation_ids: list[uuid.UUID]
    ) -> list[batches.Recipient]:
        """Each conversation where it lives: its chat, and its business connection,
        forum thread or direct-messages topic."""
        ids = unique_in_order(conversation_ids)
        found = await InboxRepository(self.session, self.auth.workspace_id).conversations_by_id(ids)
        recipients = []
        for conversation_id in ids:
            conversation: Conversation | None = found.get(conversation_id)
            if conversation is None or conversation.connection_id != connection.id:
                raise ValidationFailed(
                    f"conversation_ids: {conversation_id} is not a conversation of this "
                    "connection.",
                    field="conversation_ids",
                )
            recipients.append(
                batches.Recipient(
                    chat_id=conversation.chat_id,
                    conversation_id=conversation.id,
                    business_connection_id=conversation.business_connection_id,
                    message_thread_id=conversation.thread_id,
                    direct_messages_topic_id=conversation.direct_messages_topic_id,
                )
            )
        return recipients

    # -- decisions ---------------------------------------------------------------

    async def approve(self, broadcast_id: uuid.UUID) -> Broadcast:
        broadcast = await self._decidable(broadcast_id)
        now = utcnow()
        if broadcast.expires_at is not None and broadcast.expires_at <= now:
            # Its messages' expiry recorded now (the refusal rolls the request back),
            # as a single message's is.
            await states.expire_due(self.session, now)
            await checkpoint(self.session)
            raise NotPending("The broadcast expired before it was approved; its status is expired.")
        won = await self.repository.decide(
            broadcast_id,
            [BroadcastDecision.pending_approval],
            BroadcastDecision.approved,
            now,
            reviewed_by=self.auth.token_id,
        )
        if not won:
            raise await self._no_longer_pending(broadcast)
        decided = states.Decision(actor_token_id=self.auth.token_id, at=now)
        await batches.queue(
            self.session, self.auth.workspace_id, broadcast_id, decided, self.messages_per_second
        )
        await self._audit(broadcast, "broadcast_approved", now)
        return await self._reloaded(broadcast)

    async def reject(self, broadcast_id: uuid.UUID, reason: str) -> Broadcast:
        broadcast = await self._decidable(broadcast_id)
        now = utcnow()
        won = await self.repository.decide(
            broadcast_id,
            [BroadcastDecision.pending_approval],
            BroadcastDecision.rejected,
            now,
            reviewed_by=self.auth.token_id,
            review_reason=reason,
        )
        if not won:
            raise await self._no_longer_pending(broadcast)
        decided = states.Decision(actor_token_id=self.auth.token_id, at=now, reason=reason)
        await batches.end(
            self.session, self.auth.workspace_id, broadcast_id, MessageStatus.rejected, decided
        )
        await self._audit(broadcast, "broadcast_rejected", now, reason=reason)
        return await self._reloaded(broadcast)

    async def cancel(self, broadcast_id: uuid.UUID) -> Broadcast:
        broadcast = await self.get(broadcast_id)
        if self.auth.role != Role.admin and broadcast.requested_by != self.auth.token_id:
            raise Forbidden(
                "Only the token that requested a broadcast, or an admin, may cancel it."
            )
        counts = (await self.counts([broadcast]))[broadcast.id]
        status = status_of(broadcast, counts, utcnow())
        if status not in (BroadcastStatus.pending_approval, BroadcastStatus.sending):
            raise NotCancellable(
                f"Only a broadcast pending approval or sending can be cancelled; "
                f"its status is {status}."
            )
        now = utcnow()
        won = await self.repository.decide(
            broadcast_id,
            [BroadcastDecision.pending_approval, BroadcastDecision.approved],
            BroadcastDecision.cancelled,
            now,
        )
        if not won:
            current = await self._reloaded(broadcast)
            raise NotCancellable(
                f"The broadcast was decided meanwhile; its decision is {current.decision}."
            )
        decided = states.Decision(actor_token_id=self.auth.token_id, at=now)
        await batches.end(
            self.session, self.auth.workspace_id, broadcast_id, MessageStatus.cancelled, decided
        )
        await self._audit(broadcast, "broadcast_cancelled", now)
        return await self._reloaded(broadcast)

    async def _decidable(self, broadcast_id: uuid.UUID) -> Broadcast:
        broadcast = await self.get(broadcast_id)
        if broadcast.requested_by == self.auth.token_id:
            raise SelfApproval(
                "A broadcast cannot be approved or rejected by the token that requested it."
            )
        if broadcast.decision != BroadcastDecision.pending_approval:
            counts = (await self.counts([broadcast]))[broadcast.id]
            status = status_of(broadcast, counts, utcnow())
            raise NotPending(f"The broadcast is no longer pending; its status is {status}.")
        return broadcast

    async def _no_longer_pending(self, broadcast: Broadcast) -> NotPending:
        current = await self._reloaded(broadcast)
        return NotPending(
            f"The broadcast is no longer pending; its decision is {current.decision}."
        )

    async def _reloaded(self, broadcast: Broadcast) -> Broadcast:
        # The transitions are Core updates: the loaded object is stale.
        await self.session.refresh(broadcast)
        return broadcast

    async def _audit(
        self, broadcast: Broadcast, action: str, at: datetime, reason: str | None = None
    ) -> None:
        await record(
            self.session,
            workspace_id=self.auth.workspace_id,
            action=action,
            message_id=None,
            broadcast_id=broadcast.id,
            actor_token_id=self.auth.token_id,
            at=at,
            reason=reason,
        )


async def cancel_unsent_of_deleted_connection(
    session: AsyncSession, connection_id: uuid.UUID, actor_token_id: uuid.UUID
) -> None:
    """The connections domain's delete hook: the connection's unsent messages are
    cancelled (`app.messages`), and so is each broadcast that still had any."""
    now = utcnow()
    broadcasts = await undecided_or_approved_of_connection(session, connection_id)
    for workspace_id in {b.workspace_id for b in broadcasts}:
        mine = [b for b in broadcasts if b.workspace_id == workspace_id]
        counts = await batches.counts(session, workspace_id, [b.id for b in mine])
        repository = BroadcastRepository(session, workspace_id)
        for broadcast in mine:
            if not any(counts[broadcast.id].get(status, 0) for status in batches.UNSENT):
                continue
            await repository.decide(
                broadcast.id,
                [BroadcastDecision.pending_approval, BroadcastDecision.approved],
                BroadcastDecision.cancelled,
                now,
                review_reason="connection deleted",
            )
            await record(
                session,
                workspace_id=workspace_id,
                action="broadcast_cancelled",
                message_id=None,
                broadcast_id=broadcast.id,
                actor_token_id=actor_token_id,
                at=now,
                reason="connection deleted",
            )
    await states.cancel_unsent_of_deleted_connection(session, connection_id, actor_token_id)
