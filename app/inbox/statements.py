"""The inbox's upserts (contacts, conversations, messages), per dialect.

`PostgresInboxStatements` sends fixed SQL with one array per column (`unnest`), so
the text never changes with the batch size: PostgreSQL parses and plans each once
per connection (asyncpg's prepared statement cache). `PortableInboxStatements`
(the embedded SQLite default) builds the same upserts with SQLAlchemy's dialect
`insert`; its volume is a laptop's.

Rows are dicts keyed by column name (see `app.inbox.recording`); ids are derived
from natural keys by the caller, so the upserts return nothing. A contact or
conversation whose fields are unchanged is rewritten only when its activity time
is more than `ACTIVITY_REFRESH_SECONDS` behind (on PostgreSQL; the process's write
cache applies the same window on both backends).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Protocol

from sqlalchemy import Table, and_, literal_column, or_
from sqlalchemy.dialects import sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from app.inbox.models import Contact, Conversation, ConversationMessage

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


class InboxStatements(Protocol):
    async def upsert_contacts(self, rows: list[dict[str, Any]]) -> None: ...

    async def upsert_conversations(self, rows: list[dict[str, Any]]) -> None: ...

    async def upsert_messages(self, rows: list[dict[str, Any]]) -> None: ...


def inbox_statements_for(connection: AsyncConnection) -> InboxStatements:
    if connection.dialect.name == "postgresql":
        return PostgresInboxStatements(connection)
    return PortableInboxStatements(connection)


def _columns(rows: list[dict[str, Any]], names: tuple[str, ...]) -> tuple[list[Any], ...]:
    return tuple([row[name] for row in rows] for name in names)


# -- PostgreSQL: fixed text, arrays through unnest ------------------------------------

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
_UPSERT_CONTACTS = """
INSERT INTO contacts
    (id, workspace_id, connection_id, telegram_chat_id, telegram_username, first_name,
     last_name, title, is_bot, is_chat, created_at, last_seen_at)
SELECT * FROM unnest(
    $1::uuid[], $2::uuid[], $3::uuid[], $4::bigint[], $5::varchar[], $6::varchar[],
    $7::varchar[], $8::varchar[], $9::boolean[], $10::boolean[], $11::timestamptz[],
    $12::timestamptz[])
ON CONFLICT (connection_id, telegram_chat_id) DO UPDATE SET
    telegram_username = excluded.telegram_username,
    first_name = excluded.first_name,
    last_name = excluded.last_name,
    title = excluded.title,
    is_bot = excluded.is_bot,
    is_chat = excluded.is_chat,
    last_seen_at = excluded.last_seen_at
WHERE (contacts.telegram_username, contacts.first_name, contacts.last_name, contacts.title,
       contacts.is_bot, contacts.is_chat)
      IS DISTINCT FROM
      (excluded.telegram_username, excluded.first_name, excluded.last_name, excluded.title,
       excluded.is_bot, excluded.is_chat)
   OR contacts.last_seen_at < excluded.last_seen_at - $13::interval
"""

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
_UPSERT_CONVERSATIONS = """
INSERT INTO conversations
    (id, workspace_id, connection_id, key, chat_id, chat_type, title,
     business_connection_id, thread_id, direct_messages_topic_id, created_at,
     last_activity_at)
SELECT * FROM unnest(
    $1::uuid[], $2::uuid[], $3::uuid[], $4::varchar[], $5::bigint[], $6::varchar[],
    $7::varchar[], $8::varchar[], $9::bigint[], $10::bigint[], $11::timestamptz[],
    $12::timestamptz[])
ON CONFLICT (connection_id, key) DO UPDATE SET
    title = excluded.title,
    chat_type = excluded.chat_type,
    last_activity_at = excluded.last_activity_at
WHERE (conversations.title, conversations.chat_type)
      IS DISTINCT FROM (excluded.title, excluded.chat_type)
   OR conversations.last_activity_at < excluded.last_activity_at - $13::interval
"""

MESSAGE_COLUMNS = (
    "id",
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
# An edit replaces the text; a late copy of the original, or of an older edit,
# never undoes a newer one (edited_at is Telegram's edit_date).
_UPSERT_MESSAGES = """
INSERT INTO conversation_messages
    (id, workspace_id, connection_id, conversation_id, direction, telegram_message_id,
     sender_contact_id, content_kind, text, sent_at, edited_at, received_at)
SELECT * FROM unnest(
    $1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[], $5::varchar[], $6::bigint[],
    $7::uuid[], $8::varchar[], $9::text[], $10::timestamptz[], $11::timestamptz[],
    $12::timestamptz[])
ON CONFLICT (conversation_id, direction, telegram_message_id) DO UPDATE SET
    text = excluded.text,
    content_kind = excluded.content_kind,
    edited_at = excluded.edited_at
WHERE excluded.edited_at IS NOT NULL
  AND (conversation_messages.edited_at IS NULL
       OR excluded.edited_at >= conversation_messages.edited_at)
"""


class PostgresInboxStatements:
    def __init__(self, connection: AsyncConnection) -> None:
        self._connection = connection

    async def _run(
        self, sql: str, rows: list[dict[str, Any]], names: tuple[str, ...], *extra: Any
    ) -> None:
        await self._connection.exec_driver_sql(sql, (*_columns(rows, names), *extra))

    async def upsert_contacts(self, rows: list[dict[str, Any]]) -> None:
        await self._run(_UPSERT_CONTACTS, rows, CONTACT_COLUMNS, ACTIVITY_REFRESH)

    async def upsert_conversations(self, rows: list[dict[str, Any]]) -> None:
        await self._run(_UPSERT_CONVERSATIONS, rows, CONVERSATION_COLUMNS, ACTIVITY_REFRESH)

    async def upsert_messages(self, rows: list[dict[str, Any]]) -> None:
        await self._run(_UPSERT_MESSAGES, rows, MESSAGE_COLUMNS)


# -- Portable (SQLite): SQLAlchemy's dialect insert ----------------------------------


class PortableInboxStatements:
    def __init__(self, connection: AsyncConnection) -> None:
        self._connection = connection

    async def upsert_contacts(self, rows: list[dict[str, Any]]) -> None:
        insert = sqlite.insert(CONTACTS)
        excluded = insert.excluded
        stmt = insert.values(rows).on_conflict_do_update(
            index_elements=["connection_id", "telegram_chat_id"],
            set_={name: excluded[name] for name in (*CONTACT_FIELDS, "last_seen_at")},
        )
        await self._connection.execute(stmt)

    async def upsert_conversations(self, rows: list[dict[str, Any]]) -> None:
        insert = sqlite.insert(CONVERSATIONS)
        excluded = insert.excluded
        stmt = insert.values(rows).on_conflict_do_update(
            index_elements=["connection_id", "key"],
            set_={name: excluded[name] for name in (*CONVERSATION_FIELDS, "last_activity_at")},
        )
        await self._connection.execute(stmt)

    async def upsert_messages(self, rows: list[dict[str, Any]]) -> None:
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
