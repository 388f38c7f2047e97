"""Durable storage of accepted updates, with group commit.

`store_updates` writes a batch, atomically: the updates themselves (`ON CONFLICT
DO NOTHING` on (connection, update_id), so a redelivery has no second effect),
and for the new ones only, the inbox's records of them (`app.inbox.recording`).
On PostgreSQL that is one statement (`app.ingress.statements`); on SQLite the
caller's transaction holds its statements together. Nothing is half-stored: it
all commits or none.

`UpdateWriter` is the group commit in front of it: each webhook request hands its
update over and waits; the writer task takes whatever has queued up (up to a batch
size) and stores it with that one statement, its own transaction, then answers
every waiting request. Under load the batches grow by themselves (while one is in
flight the next gathers); when idle a batch is a single update, so no request
waits for a timer.

The statements (`app.ingress.statements`, `app.inbox.statements`) are fixed text
on PostgreSQL (arrays through `unnest`), so each is parsed and planned once per
connection whatever the batch size; the ORM's unit of work, or a multi-row VALUES
whose text changes with every batch size, would cost more than everything else on
this path.
"""

from __future__ import annotations

import asyncio
import enum
import time
import uuid
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime

import structlog
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app import metrics
from app.inbox.recording import InboundRecords, RecentlyWritten, Written, clean_text
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


async def store_alone(connection: AsyncConnection, item: IncomingUpdate) -> StoreOutcome:
    """One update of a batch the database refused, in the caller's transaction: in
    full if the database takes it (in a savepoint), else the update alone, raw.

    The raw update is the last resort: kept and acknowledged, so Telegram does not
    redeliver for a day an update whose derived records can never be stored.
    Outages propagate (the caller answers 503 or retries).
    """
    try:
        async with connection.begin_nested():
            (outcome,) = await store_updates(connection, [item])
            return outcome
    except Exception as exc:
        if is_outage(exc):
            raise
        logger.warning(
            "update_stored_without_derived_records",
            connection_id=str(item.connection_id),
            update_id=item.parsed.update_id,
            error_type=type(exc).__name__,
        )
    (outcome,) = await store_updates(connection, [item], derive=False)
    return outcome


async def store_batch(
    connection: AsyncConnection,
    items: Sequence[IncomingUpdate],
    *,
    derive: bool = True,
    recent: RecentlyWritten | None = None,
) -> tuple[list[StoreOutcome], Written]:
    """`store_updates`, skipping rows `recent` knows are already written.

    Also returns the contact and conversation rows written, for
    `recent.remember()` once the transaction has committed.
    """
    statements = statements_for(connection)
    first_of: dict[tuple[uuid.UUID, int], int] = {}
    for index, item in enumerate(items):
        first_of.setdefault((item.connection_id, item.parsed.update_id), index)
    update_rows = [
        {
            "workspace_id": items[index].workspace_id,
            "connection_id": items[index].connection_id,
            "update_id": items[index].parsed.update_id,
            "kind": clean_text(items[index].parsed.kind, 64),
            "source": items[index].source,
            "payload": items[index].raw,
            "received_at": items[index].received_at,
        }
        for index in first_of.values()
    ]
    written: Written = []
    if derive:
        records = InboundRecords.of([items[index] for index in first_of.values()], recent)
        inserted = await statements.store(update_rows, records)
        written = records.written(inserted)
    else:
        inserted = await statements.insert_updates(update_rows)
    outcomes = []
    for index, item in enumerate(items):
        key = (item.connection_id, item.parsed.update_id)
        is_new = key in inserted and first_of[key] == index
        outcomes.append(StoreOutcome.stored if is_new else StoreOutcome.duplicate)
    return outcomes, written


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
        writers: int = 1,
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
        # One writer by default: while its batch is in flight the next one
        # gathers; a second writer would take the first update that arrives and
        # send it alone, halving the batches and doubling what each update costs
        # (measured: bench/README.md). SQLite has one writer at a time anyway.
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
        loop = asyncio.get_running_loop()
        done: asyncio.Future[StoreOutcome] = loop.create_future()
        self._queue.put_nowait(_Pending(item, done))
        # A timer that fails the future, rather than asyncio.timeout() around the
        # await: the same bound for half the cost per request. The writer skips
        # futures that are done (expired, or cancelled with their request).
        expiry = loop.call_later(self._submit_timeout, _expire, done)
        try:
            return await done
        finally:
            expiry.cancel()

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
        metrics.INGRESS_BATCH_SIZE.observe(len(batch))
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
        try:
            async with self._engine.begin() as connection:
                outcome = await store_alone(connection, pending.item)
        except Exception as exc:
            self._fail([pending], exc)
            return
        if not pending.done.done():
            pending.done.set_result(outcome)

    async def _store(self, items: list[IncomingUpdate]) -> list[StoreOutcome]:
        async with self._connect() as connection:
            outcomes, written = await store_batch(connection, items, recent=self._recent)
        self._recent.remember(written, time.monotonic())
        return outcomes

    def _connect(self) -> AbstractAsyncContextManager[AsyncConnection]:
        # PostgreSQL stores a batch with one statement, atomic on its own: outside
        # a transaction it is its own, without a BEGIN and a COMMIT round trip
        # around it (two of the three a batch would otherwise cost).
        if self._engine.dialect.name == "postgresql":
            return self._engine.connect()
        return self._engine.begin()

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


def _expire(done: asyncio.Future[StoreOutcome]) -> None:
    if not done.done():
        done.set_exception(StorageUnavailable("storing the update took too long"))


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
    # The group commit's statement reaches the driver directly: its errors come
    # as the driver raised them, with the SQLSTATE on the exception itself.
    cause = exc.orig if isinstance(exc, DBAPIError) else exc
    code = getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)
    if isinstance(code, str):
        return code[:2] in ("22", "23")
    if isinstance(exc, DBAPIError):
        return False
    return isinstance(exc, ValueError | TypeError | OverflowError)


def is_outage(exc: BaseException) -> bool:
    """Whether a failed store should be answered 503 (try again later), not retried
    item by item: anything that is not the data's fault."""
    return not is_data_error(exc)
