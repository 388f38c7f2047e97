"""Durable storage of accepted updates, with group commit.

`store_updates` writes a batch in one transaction: the updates themselves
(`ON CONFLICT DO NOTHING` on (connection, update_id), so a redelivery has no
second effect), then for the new ones only, the contacts, conversations and
inbox messages derived from them. Nothing is half-stored: it all commits or none.

`UpdateWriter` is the group commit in front of it: each webhook request hands its
update over and waits; a writer task takes whatever has queued up (up to a batch
size) and stores it with one statement per table and one commit, then answers
every waiting request. Under load the batches grow by themselves; when idle a
batch is a single update, so no request waits for a timer.

The statements (`app.ingress.statements`) are fixed text on PostgreSQL (arrays
through `unnest`), so each is parsed and planned once per connection whatever the
batch size; the ORM's unit of work, or a multi-row VALUES whose text changes with
every batch size, would cost more than everything else on this path. Rows of one
statement are sorted by their conflict key, so two writers upserting the same
contacts lock them in the same order and cannot deadlock.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.db import new_id
from app.ingress.statements import statements_for
from app.telegram.updates import ParsedUpdate

logger = structlog.get_logger("app.ingress")


class StoreOutcome(enum.Enum):
    stored = "stored"
    duplicate = "duplicate"


class StorageUnavailable(Exception):
    """The database did not take the batch; the caller answers 503 (Telegram redelivers)."""


@dataclass(frozen=True, slots=True)
class IncomingUpdate:
    connection_id: uuid.UUID
    workspace_id: uuid.UUID
    parsed: ParsedUpdate
    raw: str
    source: str
    received_at: datetime


def _timestamp(seconds: int, fallback: datetime) -> datetime:
    """Telegram's unix date, or `fallback` when it is missing or out of range."""
    if seconds <= 0:
        return fallback
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        return fallback


def _text(value: str | None, limit: int | None = None) -> str | None:
    """Text the database will take: no NUL, no lone surrogates (both valid in JSON)."""
    if value is None:
        return None
    cleaned = value.encode("utf-8", errors="replace").decode("utf-8").replace("\x00", "")
    return cleaned[:limit] if limit is not None else cleaned


def _sorted(rows: dict[tuple[uuid.UUID, Any], dict[str, Any]]) -> list[dict[str, Any]]:
    return [rows[key] for key in sorted(rows, key=lambda k: (str(k[0]), k[1]))]


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

    def __init__(self, freshness: float = 10.0, max_entries: int = 100_000) -> None:
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


async def store_updates(
    connection: AsyncConnection, items: Sequence[IncomingUpdate], *, derive: bool = True
) -> list[StoreOutcome]:
    """Store a batch inside the caller's transaction; one outcome per item, in order.

    With `derive=False` only the updates themselves are stored (the last resort for
    an update whose derived records the database refuses: the raw update is kept
    and acknowledged, so Telegram does not redeliver it for a day).
    """
    outcomes, _ = await store_batch(connection, items, derive=derive)
    return outcomes


async def store_batch(
    connection: AsyncConnection,
    items: Sequence[IncomingUpdate],
    *,
    derive: bool = True,
    recent: RecentlyWritten | None = None,
) -> tuple[list[StoreOutcome], list[tuple[uuid.UUID, tuple[Any, ...]]]]:
    """`store_updates`, skipping rows `recent` knows are already written.

    Also returns the contact and conversation rows written, for
    `recent.remember()` once the transaction has committed.
    """
    statements = statements_for(connection)
    first_of: dict[tuple[uuid.UUID, int], int] = {}
    for index, item in enumerate(items):
        first_of.setdefault((item.connection_id, item.parsed.update_id), index)
    update_rows = {
        key: {
            "id": new_id(),
            "workspace_id": items[index].workspace_id,
            "connection_id": items[index].connection_id,
            "update_id": items[index].parsed.update_id,
            "kind": _text(items[index].parsed.kind, 64),
            "source": items[index].source,
            "payload": items[index].raw,
            "received_at": items[index].received_at,
        }
        for key, index in first_of.items()
    }
    inserted = await statements.insert_updates(_sorted(update_rows))
    new_items = [items[index] for key, index in first_of.items() if key in inserted]
    written: list[tuple[uuid.UUID, tuple[Any, ...]]] = []
    if new_items and derive:
        now = time.monotonic()
        contacts = _unless_fresh(_contact_rows(new_items), _CONTACT_FINGERPRINT, recent, now)
        conversations = _unless_fresh(
            _conversation_rows(new_items), _CONVERSATION_FINGERPRINT, recent, now
        )
        if contacts:
            await statements.upsert_contacts(contacts)
        if conversations:
            await statements.upsert_conversations(conversations)
        messages = _message_rows(new_items)
        if messages:
            await statements.upsert_messages(messages)
        written = [(row["id"], _fingerprint(row, _CONTACT_FINGERPRINT)) for row in contacts]
        written += [
            (row["id"], _fingerprint(row, _CONVERSATION_FINGERPRINT)) for row in conversations
        ]
    outcomes = []
    for index, item in enumerate(items):
        key = (item.connection_id, item.parsed.update_id)
        is_new = key in inserted and first_of[key] == index
        outcomes.append(StoreOutcome.stored if is_new else StoreOutcome.duplicate)
    return outcomes, written


_CONTACT_FINGERPRINT = (
    "telegram_username",
    "first_name",
    "last_name",
    "title",
    "is_bot",
    "is_chat",
)
_CONVERSATION_FINGERPRINT = ("title", "chat_type")


def _fingerprint(row: dict[str, Any], fields: tuple[str, ...]) -> tuple[Any, ...]:
    return tuple(row[name] for name in fields)


def _unless_fresh(
    rows: list[dict[str, Any]],
    fields: tuple[str, ...],
    recent: RecentlyWritten | None,
    now: float,
) -> list[dict[str, Any]]:
    if recent is None:
        return rows
    return [row for row in rows if not recent.is_fresh(row["id"], _fingerprint(row, fields), now)]


def _contact_rows(items: Sequence[IncomingUpdate]) -> list[dict[str, Any]]:
    latest: dict[tuple[uuid.UUID, int], dict[str, Any]] = {}
    for item in items:
        sender = item.parsed.sender
        if sender is None:
            continue
        latest[(item.connection_id, sender.id)] = {
            "id": contact_id(item.connection_id, sender.id),
            "workspace_id": item.workspace_id,
            "connection_id": item.connection_id,
            "telegram_chat_id": sender.id,
            "telegram_username": _text(sender.username, 64),
            "first_name": _text(sender.first_name, 256),
            "last_name": _text(sender.last_name, 256),
            "title": _text(sender.title, 256),
            "is_bot": sender.is_bot,
            "is_chat": sender.is_chat,
            "created_at": item.received_at,
            "last_seen_at": item.received_at,
        }
    return _sorted(latest)


def _conversation_rows(items: Sequence[IncomingUpdate]) -> list[dict[str, Any]]:
    latest: dict[tuple[uuid.UUID, str], dict[str, Any]] = {}
    for item in items:
        key, chat = item.parsed.conversation, item.parsed.chat
        if key is None or chat is None:
            continue
        encoded = key.encode()
        names = " ".join(part for part in (chat.first_name, chat.last_name) if part)
        latest[(item.connection_id, encoded)] = {
            "id": conversation_id(item.connection_id, encoded),
            "workspace_id": item.workspace_id,
            "connection_id": item.connection_id,
            "key": encoded,
            "chat_id": key.chat_id,
            "chat_type": _text(chat.type, 32),
            "title": _text(chat.title or names or chat.username, 256),
            "business_connection_id": key.business_connection_id,
            "thread_id": key.thread_id,
            "direct_messages_topic_id": key.direct_messages_topic_id,
            "created_at": item.received_at,
            "last_activity_at": item.received_at,
        }
    return _sorted(latest)


def _message_rows(items: Sequence[IncomingUpdate]) -> list[dict[str, Any]]:
    latest: dict[tuple[uuid.UUID, int], dict[str, Any]] = {}
    versions: dict[tuple[uuid.UUID, int], int] = {}
    for item in items:
        parsed = item.parsed
        if parsed.message is None or parsed.conversation is None or parsed.chat is None:
            continue
        conversation = conversation_id(item.connection_id, parsed.conversation.encode())
        sender = contact_id(item.connection_id, parsed.sender.id) if parsed.sender else None
        message = parsed.message
        # Deliveries run in parallel: within a batch keep the newest copy.
        if versions.get((conversation, message.message_id), -1) > parsed.update_id:
            continue
        versions[(conversation, message.message_id)] = parsed.update_id
        edited_at = None
        if message.edited:
            edited_at = _timestamp(message.edit_date, item.received_at)
        latest[(conversation, message.message_id)] = {
            "id": new_id(),
            "workspace_id": item.workspace_id,
            "connection_id": item.connection_id,
            "conversation_id": conversation,
            "direction": "inbound",
            "telegram_message_id": message.message_id,
            "sender_contact_id": sender,
            "content_kind": _text(message.kind, 64),
            "text": _text(message.text),
            "sent_at": _timestamp(message.date, item.received_at),
            "edited_at": edited_at,
            "received_at": item.received_at,
        }
    return _sorted(latest)


@dataclass(slots=True)
class _Pending:
    item: IncomingUpdate
    done: asyncio.Future[StoreOutcome]


class UpdateWriter:
    """Group commit for accepted updates (see the module docstring).

    `submit()` returns once the update is durable (or known to be a duplicate) and
    raises StorageUnavailable when its batch could not be committed: then nothing
    of that batch was stored and the caller answers 503.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        writers: int = 2,
        max_batch: int = 256,
        max_queued: int = 5000,
        submit_timeout: float = 10.0,
    ) -> None:
        self._engine = engine
        # None is the stop signal: a writer that takes it finishes its batch and ends.
        self._queue: asyncio.Queue[_Pending | None] = asyncio.Queue()
        # Past this, new updates are refused (503) rather than held in memory.
        self._max_queued = max_queued
        # A request never waits longer than this for its batch; if the batch commits
        # later anyway, Telegram's redelivery is a harmless duplicate.
        self._submit_timeout = submit_timeout
        self._max_batch = max_batch
        # SQLite has one writer at a time; more tasks would only queue on its lock.
        self._writers = 1 if engine.dialect.name == "sqlite" else max(1, writers)
        self._tasks: list[asyncio.Task[None]] = []
        self._accepting = False
        self._recent = RecentlyWritten()

    def start(self) -> None:
        if not self._tasks:
            self._accepting = True
            self._tasks = [
                asyncio.create_task(self._run(), name=f"update-writer-{n}")
                for n in range(self._writers)
            ]

    async def stop(self, grace_seconds: float = 10.0) -> None:
        """Store what is queued, then stop the writer tasks."""
        self._accepting = False
        for _ in self._tasks:
            self._queue.put_nowait(None)
        _, late = (
            await asyncio.wait(self._tasks, timeout=grace_seconds) if self._tasks else ((), ())
        )
        for task in late:
            task.cancel()
        self._tasks = []

    async def submit(self, item: IncomingUpdate) -> StoreOutcome:
        if not self._accepting:
            raise StorageUnavailable("the update writer is not running")
        if self._queue.qsize() >= self._max_queued:
            raise StorageUnavailable("the update queue is full")
        done: asyncio.Future[StoreOutcome] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(item, done))
        try:
            # On timeout `done` is cancelled; the writer skips cancelled futures.
            async with asyncio.timeout(self._submit_timeout):
                return await done
        except TimeoutError:
            raise StorageUnavailable("storing the update took too long") from None

    async def _run(self) -> None:
        stopping = False
        while not stopping:
            first = await self._queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < self._max_batch and not self._queue.empty():
                pending = self._queue.get_nowait()
                if pending is None:
                    stopping = True
                    break
                batch.append(pending)
            await self._write(batch)

    async def _write(self, batch: list[_Pending]) -> None:
        try:
            outcomes = await self._store([p.item for p in batch])
        except Exception as exc:
            self._recent.forget()
            if is_outage(exc):
                self._fail(batch, exc)
                return
            # A data error: find the item(s) the database refuses, so one bad
            # update does not fail (and keep failing) everyone else's.
            for pending in batch:
                await self._write_alone(pending)
            return
        for pending, outcome in zip(batch, outcomes, strict=True):
            if not pending.done.done():
                pending.done.set_result(outcome)

    async def _write_alone(self, pending: _Pending) -> None:
        for derive in (True, False):
            try:
                (outcome,) = await self._store([pending.item], derive=derive)
            except Exception as exc:
                if is_outage(exc) or not derive:
                    self._fail([pending], exc)
                    return
                logger.warning(
                    "update_stored_without_derived_records",
                    connection_id=str(pending.item.connection_id),
                    update_id=pending.item.parsed.update_id,
                    error_type=type(exc).__name__,
                )
                continue
            if not pending.done.done():
                pending.done.set_result(outcome)
            return

    async def _store(
        self, items: list[IncomingUpdate], *, derive: bool = True
    ) -> list[StoreOutcome]:
        async with self._engine.begin() as connection:
            outcomes, written = await store_batch(
                connection, items, derive=derive, recent=self._recent
            )
        self._recent.remember(written, time.monotonic())
        return outcomes

    def _fail(self, batch: list[_Pending], exc: BaseException) -> None:
        logger.error(
            "update_batch_failed",
            size=len(batch),
            error_type=type(exc).__name__,
            updates=[(str(p.item.connection_id), p.item.parsed.update_id) for p in batch[:10]],
        )
        for pending in batch:
            if not pending.done.done():
                pending.done.set_exception(StorageUnavailable(type(exc).__name__))


def is_data_error(exc: BaseException) -> bool:
    """Whether the database refused this data (rather than being unwell).

    Only SQLSTATE classes 22 (data exception) and 23 (integrity constraint) are
    the data's fault, and Python's own conversions failing. Lock and statement
    timeouts, deadlocks, serialization failures and connection limits are the
    database's state: retrying (Telegram redelivers) is right for those, and
    storing the update without its derived records would be wrong.
    """
    if isinstance(exc, DataError | IntegrityError):
        return True
    if isinstance(exc, DBAPIError):
        code = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
        return isinstance(code, str) and code[:2] in ("22", "23")
    return isinstance(exc, ValueError | TypeError | OverflowError)


def is_outage(exc: BaseException) -> bool:
    """Whether a failed store should be answered 503 (try again later), not retried
    item by item: anything that is not the data's fault."""
    return not is_data_error(exc)
