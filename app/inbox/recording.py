"""Recording messages in the inbox: the contacts, conversations and messages that
received updates imply, written with the updates themselves.

Ingress builds `InboundRecords` for a batch before storing it: one candidate row
per update, each naming its update. Only the candidates of updates that turn
out to be new are written (`chosen`), in the statement or transaction that stores
the updates, so an acknowledged update's records commit with it or not at all,
and a redelivery writes nothing. On PostgreSQL the choice is made in SQL, in the
same statement as the updates' insert (`app.inbox.statements.inbound_ctes`); on
SQLite `record_inbound` writes the chosen rows after the insert.

Contacts and conversations get ids derived from their natural keys
(`contact_id`, `conversation_id`), so a message row names them without a round
trip, and anyone (the outbound dispatcher too) can name them the same way.
"""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import Table, bindparam, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from app.db import insert_many, new_id
from app.inbox.models import Conversation, ConversationMessage
from app.inbox.statements import (
    ACTIVITY_REFRESH_SECONDS,
    CONTACT_FIELDS,
    CONTACT_KEY,
    CONVERSATION_FIELDS,
    CONVERSATION_KEY,
    MESSAGE_KEY,
    inbox_statements_for,
)
from app.telegram.conversation_keys import ConversationKey
from app.telegram.updates import ParsedUpdate

# A row written, as (id, fingerprint of its fields), for `RecentlyWritten.remember`.
Written = list[tuple[uuid.UUID, tuple[Any, ...]]]


class ReceivedUpdate(Protocol):
    """What the inbox needs of a received update (ingress's `IncomingUpdate`)."""

    @property
    def connection_id(self) -> uuid.UUID: ...

    @property
    def workspace_id(self) -> uuid.UUID: ...

    @property
    def parsed(self) -> ParsedUpdate: ...

    @property
    def received_at(self) -> datetime: ...


def _timestamp(seconds: int, fallback: datetime) -> datetime:
    """Telegram's unix date, or `fallback` when it is missing or out of range."""
    if seconds <= 0:
        return fallback
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        return fallback


def clean_text(value: str | None, limit: int | None = None) -> str | None:
    """Text the database will take: no NUL, no lone surrogates (both valid in JSON)."""
    if value is None:
        return None
    cleaned = value.encode("utf-8", errors="replace").decode("utf-8").replace("\x00", "")
    return cleaned[:limit] if limit is not None else cleaned


# Contacts and conversations get ids derived from their natural keys, so a message
# row can name its contact and conversation without a round trip to learn them.
_ID_NAMESPACE = uuid.UUID("6f1c2a52-3d0e-4c55-9a43-2b7c51f0e7a1")


@functools.lru_cache(maxsize=65536)
def contact_id(connection_id: uuid.UUID, telegram_chat_id: int) -> uuid.UUID:
    return uuid.uuid5(_ID_NAMESPACE, f"contact:{connection_id}:{telegram_chat_id}")


@functools.lru_cache(maxsize=65536)
def conversation_id(connection_id: uuid.UUID, key: str) -> uuid.UUID:
    return uuid.uuid5(_ID_NAMESPACE, f"conversation:{connection_id}:{key}")


class RecentlyWritten:
    """Contacts and conversations this process wrote moments ago, as it wrote them.

    A busy chat sends the same sender and chat in update after update; rewriting
    those rows each time costs more than storing the update itself and makes
    concurrent batches wait on each other's row locks. A row whose fields are as
    this process last committed them, less than `freshness` seconds ago, is not
    written again (its activity time is then at most that much behind). Only
    committed rows are remembered, so a message never names a contact or
    conversation that does not exist; `forget()` empties it after any failure.
    """

    def __init__(
        self, freshness: float = ACTIVITY_REFRESH_SECONDS, max_entries: int = 100_000
    ) -> None:
        self._freshness = freshness
        self._max_entries = max_entries
        self._rows: dict[uuid.UUID, tuple[tuple[Any, ...], float]] = {}

    def is_fresh(self, row_id: uuid.UUID, fingerprint: tuple[Any, ...], now: float) -> bool:
        known = self._rows.get(row_id)
        return known is not None and known[0] == fingerprint and now - known[1] < self._freshness

    def remember(self, written: list[tuple[uuid.UUID, tuple[Any, ...]]], now: float) -> None:
        if len(self._rows) + len(written) > self._max_entries:
            self._rows.clear()
        for row_id, fingerprint in written:
            self._rows[row_id] = (fingerprint, now)

    def forget(self) -> None:
        self._rows.clear()


UpdateKey = tuple[uuid.UUID, int]  # (connection_id, update_id)


@dataclass(frozen=True, slots=True)
class Candidate:
    """A row the inbox writes if `update` turns out to be new (not a redelivery).

    `fresh`: the write cache holds the row as it is here; it is then not written.
    """

    row: dict[str, Any]
    update: UpdateKey
    fresh: bool = False


@dataclass(frozen=True, slots=True)
class InboundRecords:
    """The inbox's rows a batch of received updates implies, as candidates: built
    before the database says which updates are new (so the updates and their
    records can be stored by one statement), chosen by `chosen()` (or the same
    choice in SQL, `app.inbox.statements.inbound_ctes`).

    The last candidate per row wins. Contacts and conversations are in the
    batch's order, as they arrived; messages are ordered by update_id, so of a
    message and its edits delivered in parallel the newest copy is kept.
    """

    contacts: list[Candidate]
    conversations: list[Candidate]
    messages: list[Candidate]

    @classmethod
    def of(
        cls, updates: Sequence[ReceivedUpdate], recent: RecentlyWritten | None = None
    ) -> InboundRecords:
        """Candidates for `updates`, one copy of each update (the caller dedups)."""
        now = time.monotonic()
        return cls(
            contacts=_unless_fresh(_contact_rows(updates), CONTACT_FIELDS, recent, now),
            conversations=_unless_fresh(
                _conversation_rows(updates), CONVERSATION_FIELDS, recent, now
            ),
            messages=_message_rows(updates),
        )

    def chosen(
        self, new: Collection[UpdateKey]
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
        """The contact, conversation and message rows to write, given the new updates."""
        return (
            _latest(self.contacts, new, CONTACT_KEY),
            _latest(self.conversations, new, CONVERSATION_KEY),
            _latest(self.messages, new, MESSAGE_KEY),
        )

    def written(self, new: Collection[UpdateKey]) -> Written:
        """The contact and conversation rows written, given the new updates: for
        `RecentlyWritten.remember()` once they are committed."""
        contacts = _latest(self.contacts, new, CONTACT_KEY)
        conversations = _latest(self.conversations, new, CONVERSATION_KEY)
        written = [(row["id"], _fingerprint(row, CONTACT_FIELDS)) for row in contacts]
        written += [(row["id"], _fingerprint(row, CONVERSATION_FIELDS)) for row in conversations]
        return written


async def record_inbound(
    connection: AsyncConnection, records: InboundRecords, new: Collection[UpdateKey]
) -> None:
    """Write the records of the `new` updates (stored already, in the caller's
    transaction). Ingress on PostgreSQL writes them in its own statement instead."""
    await inbox_statements_for(connection).record(records, new)


def _latest(
    candidates: Sequence[Candidate], new: Collection[UpdateKey], key: tuple[str, ...]
) -> list[dict[str, Any]]:
    latest: dict[tuple[Any, ...], Candidate] = {}
    for candidate in candidates:
        if candidate.update in new:
            latest[tuple(candidate.row[name] for name in key)] = candidate
    return [c.row for c in latest.values() if not c.fresh]


def _fingerprint(row: dict[str, Any], fields: tuple[str, ...]) -> tuple[Any, ...]:
    return tuple(row[name] for name in fields)


def _unless_fresh(
    candidates: list[Candidate],
    fields: tuple[str, ...],
    recent: RecentlyWritten | None,
    now: float,
) -> list[Candidate]:
    """Candidates marked fresh where the cache holds their row as it is; a row all
    of whose candidates are fresh is left out (whichever wins, it is skipped)."""
    if recent is None:
        return candidates
    marked = [
        Candidate(c.row, c.update, recent.is_fresh(c.row["id"], _fingerprint(c.row, fields), now))
        for c in candidates
    ]
    stale = {c.row["id"] for c in marked if not c.fresh}
    return [c for c in marked if c.row["id"] in stale]


def _contact_rows(items: Sequence[ReceivedUpdate]) -> list[Candidate]:
    candidates = []
    for item in items:
        sender = item.parsed.sender
        if sender is None:
            continue
        row = {
            "id": contact_id(item.connection_id, sender.id),
            "workspace_id": item.workspace_id,
            "connection_id": item.connection_id,
            "telegram_chat_id": sender.id,
            "telegram_username": clean_text(sender.username, 64),
            "first_name": clean_text(sender.first_name, 256),
            "last_name": clean_text(sender.last_name, 256),
            "title": clean_text(sender.title, 256),
            "is_bot": sender.is_bot,
            "is_chat": sender.is_chat,
            "created_at": item.received_at,
            "last_seen_at": item.received_at,
        }
        candidates.append(Candidate(row, (item.connection_id, item.parsed.update_id)))
    return candidates


def _conversation_rows(items: Sequence[ReceivedUpdate]) -> list[Candidate]:
    candidates = []
    for item in items:
        key, chat = item.parsed.conversation, item.parsed.chat
        if key is None or chat is None:
            continue
        encoded = key.encode()
        names = " ".join(part for part in (chat.first_name, chat.last_name) if part)
        row = {
            "id": conversation_id(item.connection_id, encoded),
            "workspace_id": item.workspace_id,
            "connection_id": item.connection_id,
            "key": encoded,
            "chat_id": key.chat_id,
            "chat_type": clean_text(chat.type, 32),
            "title": clean_text(chat.title or names or chat.username, 256),
            "business_connection_id": key.business_connection_id,
            "thread_id": key.thread_id,
            "direct_messages_topic_id": key.direct_messages_topic_id,
            "created_at": item.received_at,
            "last_activity_at": item.received_at,
        }
        candidates.append(Candidate(row, (item.connection_id, item.parsed.update_id)))
    return candidates


def _message_rows(items: Sequence[ReceivedUpdate]) -> list[Candidate]:
    candidates = []
    # Deliveries run in parallel: of several copies of a message (the original,
    # its edits), the newest update is the last candidate and wins.
    for item in sorted(items, key=lambda item: item.parsed.update_id):
        parsed = item.parsed
        if parsed.message is None or parsed.conversation is None or parsed.chat is None:
            continue
        conversation = conversation_id(item.connection_id, parsed.conversation.encode())
        sender = contact_id(item.connection_id, parsed.sender.id) if parsed.sender else None
        message = parsed.message
        edited_at = None
        if message.edited:
            edited_at = _timestamp(message.edit_date, item.received_at)
        # No id: each backend draws one for the rows it inserts (see
        # app.inbox.statements), so a candidate that loses costs no uuid4().
        row = {
            "workspace_id": item.workspace_id,
            "connection_id": item.connection_id,
            "conversation_id": conversation,
            "direction": "inbound",
            "telegram_message_id": message.message_id,
            "sender_contact_id": sender,
            "content_kind": clean_text(message.kind, 64),
            "text": clean_text(message.text),
            "sent_at": _timestamp(message.date, item.received_at),
            "edited_at": edited_at,
            "received_at": item.received_at,
        }
        candidates.append(Candidate(row, (item.connection_id, parsed.update_id)))
    return candidates


# -- outbound ---------------------------------------------------------------------
# The messages domain reports its messages here, inside its own transactions, so a
# conversation shows what was sent (and what waits for approval) beside what came in.

MESSAGES_TABLE: Table = ConversationMessage.__table__  # type: ignore[assignment]
CONVERSATIONS_TABLE: Table = Conversation.__table__  # type: ignore[assignment]


async def record_outbound(
    executor: AsyncSession | AsyncConnection,
    *,
    outbound_message_id: uuid.UUID,
    workspace_id: uuid.UUID,
    connection_id: uuid.UUID,
    conversation_id: uuid.UUID,
    text: str,
    status: str,
    at: datetime,
) -> None:
    """Show a requested outbound message in its conversation (no Telegram id yet)."""
    await executor.execute(
        insert(MESSAGES_TABLE).values(
            _outbound_row(
                outbound_message_id=outbound_message_id,
                workspace_id=workspace_id,
                connection_id=connection_id,
                conversation_id=conversation_id,
                text=text,
                status=status,
                telegram_message_id=None,
                at=at,
            )
        )
    )


# On PostgreSQL a batch of sends is one statement whatever its size (one array per
# column), instead of one update per message.
_SENT_POSTGRES = """
UPDATE conversation_messages AS c SET
    telegram_message_id = v.telegram_message_id, delivery_status = 'sent', sent_at = v.sent_at
FROM unnest(CAST(:ids AS uuid[]), CAST(:telegram_ids AS bigint[]), CAST(:sent_at AS timestamptz[]))
    AS v(outbound_message_id, telegram_message_id, sent_at)
WHERE c.outbound_message_id = v.outbound_message_id
"""


def _outbound_row(
    *,
    outbound_message_id: uuid.UUID,
    workspace_id: uuid.UUID,
    connection_id: uuid.UUID,
    conversation_id: uuid.UUID,
    text: str,
    status: str,
    telegram_message_id: int | None,
    at: datetime,
) -> dict[str, Any]:
    """The inbox row of an outbound message: its request or, once sent, its send
    time stands for both when it was sent and when the inbox learnt of it."""
    return {
        "id": new_id(),
        "workspace_id": workspace_id,
        "connection_id": connection_id,
        "conversation_id": conversation_id,
        "direction": "outbound",
        "telegram_message_id": telegram_message_id,
        "sender_contact_id": None,
        "content_kind": "text",
        "text": clean_text(text),
        "sent_at": at,
        "edited_at": None,
        "received_at": at,
        "outbound_message_id": outbound_message_id,
        "delivery_status": status,
    }


async def set_outbound_status(
    executor: AsyncSession | AsyncConnection,
    outbound_message_ids: Sequence[uuid.UUID],
    status: str,
) -> None:
    """The messages domain moved these messages to `status`."""
    if outbound_message_ids:
        await executor.execute(
            update(MESSAGES_TABLE)
            .where(MESSAGES_TABLE.c.outbound_message_id.in_(list(outbound_message_ids)))
            .values(delivery_status=status)
        )


@dataclass(frozen=True, slots=True)
class SentOutbound:
    """An outbound message Telegram accepted, as the dispatcher reports it."""

    outbound_message_id: uuid.UUID
    workspace_id: uuid.UUID
    connection_id: uuid.UUID
    # None when the message was addressed by chat id and no conversation was known.
    conversation_id: uuid.UUID | None
    chat_id: int
    # The conversation of the chat Telegram answered with (`conversation_for_chat`):
    # the one a message sent by chat id belongs to. Worked out once, by whoever
    # reports the send, for the several places that need it.
    chat_conversation_id: uuid.UUID
    chat_type: str
    chat_title: str | None
    telegram_message_id: int
    text: str
    sent_at: datetime


async def open_conversations(
    executor: AsyncSession | AsyncConnection, sent: Sequence[SentOutbound]
) -> None:
    """The conversations of messages sent by chat id, where there are none yet: the
    conversation of the chat Telegram answered with (`chat_conversation_id`, which
    the messages domain records on each message). Ingress (or another worker) may be
    creating the same conversation at this moment: an existing one is left as is."""
    conversations: dict[uuid.UUID, dict[str, Any]] = {}
    for item in sent:
        if item.conversation_id is None and item.chat_conversation_id not in conversations:
            key = ConversationKey(chat_id=item.chat_id).encode()
            conversations[item.chat_conversation_id] = _conversation_row(
                item, key, item.chat_conversation_id
            )
    await insert_many(
        executor, CONVERSATIONS_TABLE, list(conversations.values()), skip_existing=True
    )


async def record_outbound_sent(
    executor: AsyncSession | AsyncConnection, sent: Sequence[SentOutbound]
) -> None:
    """Record Telegram's message ids in the inbox; a message sent by chat id gets its
    inbox row now, in the conversation `open_conversations` opened.

    A batch costs a few statements, however many messages it holds.
    """
    known = [item for item in sent if item.conversation_id is not None]
    if known and _dialect_name(executor) == "postgresql":
        await executor.execute(
            text(_SENT_POSTGRES),
            {
                "ids": [item.outbound_message_id for item in known],
                "telegram_ids": [item.telegram_message_id for item in known],
                "sent_at": [item.sent_at for item in known],
            },
        )
    elif known:
        await executor.execute(
            update(MESSAGES_TABLE)
            .where(MESSAGES_TABLE.c.outbound_message_id == bindparam("o_id"))
            .values(
                telegram_message_id=bindparam("o_telegram_id"),
                delivery_status="sent",
                sent_at=bindparam("o_sent_at", type_=MESSAGES_TABLE.c.sent_at.type),
            ),
            [
                {
                    "o_id": item.outbound_message_id,
                    "o_telegram_id": item.telegram_message_id,
                    "o_sent_at": item.sent_at,
                }
                for item in known
            ],
        )
    await insert_many(
        executor,
        MESSAGES_TABLE,
        [
            _outbound_row(
                outbound_message_id=item.outbound_message_id,
                workspace_id=item.workspace_id,
                connection_id=item.connection_id,
                conversation_id=item.chat_conversation_id,
                text=item.text,
                status="sent",
                telegram_message_id=item.telegram_message_id,
                at=item.sent_at,
            )
            for item in sent
            if item.conversation_id is None
        ],
    )


def _conversation_row(item: SentOutbound, key: str, row_id: uuid.UUID) -> dict[str, Any]:
    return {
        "id": row_id,
        "workspace_id": item.workspace_id,
        "connection_id": item.connection_id,
        "key": key,
        "chat_id": item.chat_id,
        "chat_type": clean_text(item.chat_type, 32),
        "title": clean_text(item.chat_title, 256),
        "business_connection_id": None,
        "thread_id": None,
        "direct_messages_topic_id": None,
        "created_at": item.sent_at,
        "last_activity_at": item.sent_at,
    }


def _dialect_name(executor: AsyncSession | AsyncConnection) -> str:
    return (executor.bind if isinstance(executor, AsyncSession) else executor).dialect.name


def conversation_for_chat(connection_id: uuid.UUID, chat_id: int) -> uuid.UUID:
    """The id of a chat's plain conversation (no business connection, topic or thread)."""
    return conversation_id(connection_id, ConversationKey(chat_id=chat_id).encode())


async def move_chat(
    executor: AsyncSession | AsyncConnection,
    connection_id: uuid.UUID,
    old_chat_id: int,
    new_chat_id: int,
    at: datetime,
) -> uuid.UUID | None:
    """A group became a supergroup with a new chat id: its conversation moves there.

    Conversation ids follow from their keys, so the supergroup gets the conversation
    its own updates will name, and the group's messages move into it. Returns the
    new conversation's id (None if the group had no conversation here).
    """
    old_id = conversation_for_chat(connection_id, old_chat_id)
    old = (
        await executor.execute(
            select(CONVERSATIONS_TABLE).where(CONVERSATIONS_TABLE.c.id == old_id)
        )
    ).first()
    if old is None:
        return None
    new_id_ = conversation_for_chat(connection_id, new_chat_id)
    exists = await executor.execute(
        select(CONVERSATIONS_TABLE.c.id).where(CONVERSATIONS_TABLE.c.id == new_id_)
    )
    if exists.first() is None:
        await executor.execute(
            insert(CONVERSATIONS_TABLE).values(
                id=new_id_,
                workspace_id=old.workspace_id,
                connection_id=connection_id,
                key=ConversationKey(chat_id=new_chat_id).encode(),
                chat_id=new_chat_id,
                chat_type="supergroup",
                title=old.title,
                business_connection_id=None,
                thread_id=None,
                direct_messages_topic_id=None,
                created_at=old.created_at,
                last_activity_at=at,
            )
        )
    await executor.execute(
        update(MESSAGES_TABLE)
        .where(MESSAGES_TABLE.c.conversation_id == old_id)
        .values(conversation_id=new_id_)
    )
    return new_id_


@dataclass(frozen=True, slots=True)
class OutboundShown:
    """A requested outbound message to show in its conversation (`record_outbound_many`)."""

    outbound_message_id: uuid.UUID
    workspace_id: uuid.UUID
    connection_id: uuid.UUID
    conversation_id: uuid.UUID
    text: str
    status: str


async def record_outbound_many(
    executor: AsyncSession | AsyncConnection, shown: Sequence[OutboundShown], at: datetime
) -> None:
    """`record_outbound` for many messages at once (a broadcast's): one statement."""
    if not shown:
        return
    await insert_many(
        executor,
        MESSAGES_TABLE,
        [
            _outbound_row(
                outbound_message_id=item.outbound_message_id,
                workspace_id=item.workspace_id,
                connection_id=item.connection_id,
                conversation_id=item.conversation_id,
                text=item.text,
                status=item.status,
                telegram_message_id=None,
                at=at,
            )
            for item in shown
        ],
    )
