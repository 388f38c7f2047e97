"""The inbox's upserts (contacts, conversations, messages), per dialect.

What is written is chosen from candidate rows (`app.inbox.recording.Candidate`):
one per received update, each naming the update it came from. Only candidates of
updates that are new are written (a redelivered update has no second effect);
per row, the latest candidate wins (the batch's order; messages are ordered by
update_id first), so no statement touches a row twice; a contact or conversation
the process's write cache says is written already is skipped.

On PostgreSQL the three upserts are CTE fragments (`inbound_ctes`), fixed text
with one array per column (`unnest`), that read the new updates' keys from a
relation named by the caller: ingress composes them with its own insert of the
updates into one statement (`app.ingress.statements`), so a batch is one round
trip, and PostgreSQL parses and plans it once per connection whatever the batch
size. Foreign keys between the fragments (a message naming the contact and
conversation inserted beside it) hold: PostgreSQL checks them at the end of the
statement, when every fragment's rows are in place. Each fragment's rows are
sorted by its conflict key (DISTINCT ON's order), so two statements upserting the
same contacts lock them in the same order and cannot deadlock on them.
`PostgresInboxStatements` runs the same fragments on their own, for keys already
stored.

`PortableInboxStatements` (the embedded SQLite default) makes the same choice in
Python (`app.inbox.recording`) and writes the rows with SQLAlchemy's dialect
`insert`; its volume is a laptop's.

A contact or conversation whose fields are unchanged is rewritten only when its
activity time is more than `ACTIVITY_REFRESH_SECONDS` behind (on PostgreSQL; the
process's write cache applies the same window on both backends).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import Table, and_, literal_column, or_
from sqlalchemy.dialects import sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from app.inbox.models import Contact, Conversation, ConversationMessage

if TYPE_CHECKING:
    from app.inbox.recording import InboundRecords, UpdateKey

CONTACTS: Table = Contact.__table__  # type: ignore[assignment]
CONVERSATIONS: Table = Conversation.__table__  # type: ignore[assignment]
MESSAGES: Table = ConversationMessage.__table__  # type: ignore[assignment]

# How stale a contact's last_seen_at (a conversation's last_activity_at) may get
# before an otherwise unchanged row is written again: rewriting a busy chat's rows
# on every message costs more than storing the message.
ACTIVITY_REFRESH_SECONDS = 10
ACTIVITY_REFRESH = timedelta(seconds=ACTIVITY_REFRESH_SECONDS)

CONTACT_FIELDS = (
    "telegram_username",
    "first_name",
    "last_name",
    "title",
    "is_bot",
    "is_chat",
)
CONVERSATION_FIELDS = ("title", "chat_type")
# What an edit may change in a message row.
MESSAGE_EDIT_FIELDS = ("text", "content_kind", "edited_at")
# Each table's conflict key: at most one row per key is written per statement.
CONTACT_KEY = ("connection_id", "telegram_chat_id")
CONVERSATION_KEY = ("connection_id", "key")
MESSAGE_KEY = ("conversation_id", "direction", "telegram_message_id")


class InboxStatements(Protocol):
    async def record(self, records: InboundRecords, new: Collection[UpdateKey]) -> None: ...


def inbox_statements_for(connection: AsyncConnection) -> InboxStatements:
    if connection.dialect.name == "postgresql":
        return PostgresInboxStatements(connection)
    return PortableInboxStatements(connection)


# -- PostgreSQL: CTE fragments, fixed text, arrays through unnest ---------------------

CONTACT_COLUMNS = (
    "id",
    "workspace_id",
    "connection_id",
    "telegram_chat_id",
    "telegram_username",
    "first_name",
    "last_name",
    "title",
    "is_bot",
    "is_chat",
    "created_at",
    "last_seen_at",
)
_CONTACT_TYPES = (
    "uuid",
    "uuid",
    "uuid",
    "bigint",
    "varchar",
    "varchar",
    "varchar",
    "varchar",
    "boolean",
    "boolean",
    "timestamptz",
    "timestamptz",
)
_CONTACT_CONFLICT = """ON CONFLICT (connection_id, telegram_chat_id) DO UPDATE SET
        telegram_username = excluded.telegram_username,
        first_name = excluded.first_name,
        last_name = excluded.last_name,
        title = excluded.title,
        is_bot = excluded.is_bot,
        is_chat = excluded.is_chat,
        last_seen_at = excluded.last_seen_at
    WHERE (contacts.telegram_username, contacts.first_name, contacts.last_name,
           contacts.title, contacts.is_bot, contacts.is_chat)
          IS DISTINCT FROM
          (excluded.telegram_username, excluded.first_name, excluded.last_name,
           excluded.title, excluded.is_bot, excluded.is_chat)
       OR contacts.last_seen_at < excluded.last_seen_at - {refresh}::interval"""

CONVERSATION_COLUMNS = (
    "id",
    "workspace_id",
    "connection_id",
    "key",
    "chat_id",
    "chat_type",
    "title",
    "business_connection_id",
    "thread_id",
    "direct_messages_topic_id",
    "created_at",
    "last_activity_at",
)
_CONVERSATION_TYPES = (
    "uuid",
    "uuid",
    "uuid",
    "varchar",
    "bigint",
    "varchar",
    "varchar",
    "varchar",
    "bigint",
    "bigint",
    "timestamptz",
    "timestamptz",
)
_CONVERSATION_CONFLICT = """ON CONFLICT (connection_id, key) DO UPDATE SET
        title = excluded.title,
        chat_type = excluded.chat_type,
        last_activity_at = excluded.last_activity_at
    WHERE (conversations.title, conversations.chat_type)
          IS DISTINCT FROM (excluded.title, excluded.chat_type)
       OR conversations.last_activity_at < excluded.last_activity_at - {refresh}::interval"""

# Without `id`: PostgreSQL draws it for the rows inserted (gen_random_uuid), the
# model's default on SQLite.
MESSAGE_COLUMNS = (
    "workspace_id",
    "connection_id",
    "conversation_id",
    "direction",
    "telegram_message_id",
    "sender_contact_id",
    "content_kind",
    "text",
    "sent_at",
    "edited_at",
    "received_at",
)
_MESSAGE_TYPES = (
    "uuid",
    "uuid",
    "uuid",
    "varchar",
    "bigint",
    "uuid",
    "varchar",
    "text",
    "timestamptz",
    "timestamptz",
    "timestamptz",
)
# An edit replaces the text; a late copy of the original, or of an older edit,
# never undoes a newer one (edited_at is Telegram's edit_date).
_MESSAGE_CONFLICT = """ON CONFLICT (conversation_id, direction, telegram_message_id) DO UPDATE SET
        text = excluded.text,
        content_kind = excluded.content_kind,
        edited_at = excluded.edited_at
    WHERE excluded.edited_at IS NOT NULL
      AND (conversation_messages.edited_at IS NULL
           OR excluded.edited_at >= conversation_messages.edited_at)"""


@dataclass(frozen=True, slots=True)
class _Table:
    cte: str
    name: str
    columns: tuple[str, ...]
    types: tuple[str, ...]
    key: tuple[str, ...]  # the conflict key: one candidate per key is written
    conflict: str
    cached: bool  # candidates carry `fresh` (the process's write cache)
    drawn_id: bool = False  # `id` is not a column of the candidates: drawn here

    @property
    def arrays(self) -> int:
        return len(self.columns) + 1 + self.cached


_TABLES = (
    _Table(
        "contacts_written",
        "contacts",
        CONTACT_COLUMNS,
        _CONTACT_TYPES,
        CONTACT_KEY,
        _CONTACT_CONFLICT,
        cached=True,
    ),
    _Table(
        "conversations_written",
        "conversations",
        CONVERSATION_COLUMNS,
        _CONVERSATION_TYPES,
        CONVERSATION_KEY,
        _CONVERSATION_CONFLICT,
        cached=True,
    ),
    _Table(
        "messages_written",
        "conversation_messages",
        MESSAGE_COLUMNS,
        _MESSAGE_TYPES,
        MESSAGE_KEY,
        _MESSAGE_CONFLICT,
        cached=False,
        drawn_id=True,
    ),
)

# Parameters `inbound_ctes` takes: each table's arrays, then the refresh interval.
INBOUND_PARAMETERS = sum(table.arrays for table in _TABLES) + 1


def _fragment(table: _Table, source: str, first: int, refresh: str) -> str:
    columns = ", ".join(table.columns)
    types = (*table.types, "bigint", *(("boolean",) if table.cached else ()))
    arrays = ", ".join(f"${first + n}::{kind}[]" for n, kind in enumerate(types))
    names = f"{columns}, update_id{', fresh' if table.cached else ''}, position"
    key = ", ".join(f"c.{name}" for name in table.key)
    # DISTINCT ON keeps the last candidate per key among the new updates' (the
    # join drops those of duplicates), so ON CONFLICT never meets a row twice.
    # Built once, at import, from this module's constants: no value is in the text.
    target, chosen = (
        (f"id, {columns}", f"gen_random_uuid(), {columns}")
        if table.drawn_id
        else (columns, columns)
    )
    return f"""{table.cte} AS (
    INSERT INTO {table.name} ({target})
    SELECT {chosen} FROM (
        SELECT DISTINCT ON ({key}) c.*
        FROM unnest({arrays}) WITH ORDINALITY AS c({names})
        JOIN {source} AS n ON n.connection_id = c.connection_id AND n.update_id = c.update_id
        ORDER BY {key}, c.position DESC
    ) AS latest
    {"WHERE NOT latest.fresh" if table.cached else ""}
    {table.conflict.format(refresh=refresh)}
)"""  # noqa: S608


def inbound_ctes(source: str, first: int) -> str:
    """The three upserts as CTEs of one statement, parameters numbered from
    `first` (`INBOUND_PARAMETERS` of them, see `inbound_arguments`).

    `source` names a relation of the statement with the columns (connection_id,
    update_id): the keys of the updates whose records are to be written.
    """
    refresh = f"${first + INBOUND_PARAMETERS - 1}"
    fragments = []
    for table in _TABLES:
        fragments.append(_fragment(table, source, first, refresh))
        first += table.arrays
    return ",\n".join(fragments)


def inbound_arguments(records: InboundRecords) -> tuple[Any, ...]:
    """The arrays for `inbound_ctes`, in its parameter order."""
    arguments: list[Any] = []
    for table, candidates in zip(
        _TABLES, (records.contacts, records.conversations, records.messages), strict=True
    ):
        arguments += [[c.row[name] for c in candidates] for name in table.columns]
        arguments.append([c.update[1] for c in candidates])
        if table.cached:
            arguments.append([c.fresh for c in candidates])
    arguments.append(ACTIVITY_REFRESH)
    return tuple(arguments)


_RECORD_INBOUND = f"""
WITH new_updates AS (
    SELECT * FROM unnest($1::uuid[], $2::bigint[]) AS n(connection_id, update_id)
),
{inbound_ctes("new_updates", first=3)}
SELECT 1
"""  # noqa: S608 (constants only)


class PostgresInboxStatements:
    def __init__(self, connection: AsyncConnection) -> None:
        self._connection = connection

    async def record(self, records: InboundRecords, new: Collection[UpdateKey]) -> None:
        keys = list(new)
        await self._connection.exec_driver_sql(
            _RECORD_INBOUND,
            ([k[0] for k in keys], [k[1] for k in keys], *inbound_arguments(records)),
        )


# -- Portable (SQLite): SQLAlchemy's dialect insert ----------------------------------


class PortableInboxStatements:
    def __init__(self, connection: AsyncConnection) -> None:
        self._connection = connection

    async def record(self, records: InboundRecords, new: Collection[UpdateKey]) -> None:
        contacts, conversations, messages = records.chosen(new)
        if contacts:
            await self._upsert_contacts(contacts)
        if conversations:
            await self._upsert_conversations(conversations)
        if messages:
            await self._upsert_messages(messages)

    async def _upsert_contacts(self, rows: list[dict[str, Any]]) -> None:
        insert = sqlite.insert(CONTACTS)
        excluded = insert.excluded
        stmt = insert.values(rows).on_conflict_do_update(
            index_elements=["connection_id", "telegram_chat_id"],
            set_={name: excluded[name] for name in (*CONTACT_FIELDS, "last_seen_at")},
        )
        await self._connection.execute(stmt)

    async def _upsert_conversations(self, rows: list[dict[str, Any]]) -> None:
        insert = sqlite.insert(CONVERSATIONS)
        excluded = insert.excluded
        stmt = insert.values(rows).on_conflict_do_update(
            index_elements=["connection_id", "key"],
            set_={name: excluded[name] for name in (*CONVERSATION_FIELDS, "last_activity_at")},
        )
        await self._connection.execute(stmt)

    async def _upsert_messages(self, rows: list[dict[str, Any]]) -> None:
        insert = sqlite.insert(MESSAGES)
        excluded = insert.excluded
        stmt = insert.values(rows).on_conflict_do_update(
            index_elements=["conversation_id", "direction", "telegram_message_id"],
            set_={name: excluded[name] for name in MESSAGE_EDIT_FIELDS},
            where=and_(
                literal_column("excluded.edited_at").is_not(None),
                or_(
                    MESSAGES.c.edited_at.is_(None),
                    literal_column("excluded.edited_at") >= MESSAGES.c.edited_at,
                ),
            ),
        )
        await self._connection.execute(stmt)
