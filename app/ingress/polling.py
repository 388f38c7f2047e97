"""Long-polling ingestion (SPEC section 4): one poller per polling-mode connection.

Without a public URL Telegram cannot call a webhook, so the worker asks for each
bot's updates with getUpdates and stores them through the webhook's pipeline
(`store_updates`, source ``"polling"``).

Contract:

- Nothing skipped, nothing stored twice, across restarts. The next offset lives in
  ``telegram_connections.polling_offset``. A batch is stored and the offset moved
  to max(update_id) + 1 in ONE transaction, so the offset only moves once the
  batch is durable. A crash before that commit leaves the offset where it was:
  Telegram still holds the unconfirmed batch and the next getUpdates returns it
  again (the (connection, update_id) dedup makes any copy harmless). After the
  commit, the next getUpdates carries the new offset, and that call is what
  confirms the batch to Telegram. Nothing is confirmed before it is stored.
- An update that fails `parse_update` (it has no usable update_id) is logged
  without its content and skipped: it can never become valid, and waiting for it
  would block the bot. A batch of nothing but such updates gives no offset to
  advance to; it is handled like a server error (backoff), never confirmed blindly.
- A batch the database refuses (a data error, not an outage) is stored again one
  update at a time, each in a savepoint: the refused update is kept raw without
  its derived records (as the webhook's writer does), the others in full, and the
  offset still moves in the same transaction. Retrying the batch unchanged would
  block the bot for good.
- One poller per connection across all worker replicas: a lease on the
  connection row (``poll_owner``, ``poll_lease_until``), taken and renewed by a
  conditional UPDATE before every getUpdates and while waiting out a backoff.
  Every write a poller makes (offset, status) is fenced on still holding the
  lease of a live polling-mode connection, so a replica that lost the lease (or
  whose connection was deleted or switched to webhook mode) cannot move the
  offset: its transaction rolls back and the poller stops. A lease outlasts one
  cycle (long poll + request timeout + margin) and is released on a clean stop;
  after a crash another replica takes over once it expires. Replicas' clocks must
  agree to well within that margin (NTP).
- Failures: 409 Conflict (a webhook is set, or another program calls getUpdates)
  and 401/404 (token rejected) mark the connection ``action_required`` with a hint
  saying what to do, then wait `RetryDelays.conflict` / `.token_rejected`. 429 waits
  Telegram's ``retry_after``; network errors, 5xx, database errors and anything
  unexpected back off exponentially with jitter (capped). The first success after
  a failure (and a poller's first success) sets the status back to ``active`` and
  clears the hint. Every wait ends early when the poller is asked to stop.
- Stopping: an in-flight getUpdates is abandoned (nothing is lost: its updates
  were not confirmed), a store in progress completes, then the lease is released.
- Logs carry ``connection_id``, never the token (the client never logs it either).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any, TypeVar

import structlog
from sqlalchemy import Update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from app import metrics
from app.connections.credentials import ConnectionCredentials
from app.connections.models import ConnectionStatus
from app.connections.registration import ALLOWED_UPDATES
from app.connections.repository import PollingLeases
from app.connections.status import (
    CONFLICT_OTHER_CONSUMER_HINT,
    CONFLICT_WEBHOOK_HINT,
    CREDENTIALS_UNREADABLE_HINT,
    UNAUTHORIZED_HINT,
)
from app.db import utcnow
from app.ingress.store import (
    IncomingUpdate,
    StoreOutcome,
    is_outage,
    store_alone,
    store_updates,
)
from app.telegram.client import TelegramClient
from app.telegram.errors import (
    TelegramConflict,
    TelegramError,
    TelegramNotFound,
    TelegramTooManyRequests,
    TelegramUnauthorized,
)
from app.telegram.types import BotToken
from app.telegram.updates import InvalidUpdate, parse_update
from app.vault import SealedSecret, VaultError

__all__ = [
    "GET_UPDATES_LIMIT",
    "LEASE_MARGIN_SECONDS",
    "SOURCE",
    "Backoff",
    "ConnectionPoller",
    "PollerSupervisor",
    "RetryDelays",
    "wait_for_event",
]

logger = structlog.get_logger("app.ingress.polling")

T = TypeVar("T")
SOURCE = "polling"
GET_UPDATES_LIMIT = 100
# Added to one cycle's longest duration to get the lease time: room for the store,
# a slow database, and clock differences between replicas.
LEASE_MARGIN_SECONDS = 30.0
# How long a stop waits for pollers to finish their current store before cancelling.
STOP_GRACE_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class RetryDelays:
    """Seconds a poller waits after each kind of failure (tests make them small)."""

    conflict: float = 30.0
    token_rejected: float = 300.0
    backoff_base: float = 1.0
    backoff_cap: float = 60.0


class Backoff:
    """Exponential backoff with "equal jitter".

    The n-th consecutive failure (n from 0) waits between d/2 and d, where
    d = min(cap, base * 2**n): growing, capped, never close to zero (no hot loop),
    and spread so that replicas that failed together do not retry together.
    """

    def __init__(
        self, base: float, cap: float, *, rand: Callable[[], float] = random.random
    ) -> None:
        if base <= 0 or cap < base:
            raise ValueError("backoff needs 0 < base <= cap")
        self._base, self._cap, self._rand = base, cap, rand
        self._failures = 0

    def next_delay(self) -> float:
        """The wait before the next attempt; counts one more failure."""
        # The exponent is bounded so a long outage cannot overflow the float.
        ceiling = min(self._cap, self._base * 2.0 ** min(self._failures, 32))
        self._failures += 1
        return ceiling / 2 + self._rand() * ceiling / 2

    def reset(self) -> None:
        """After a success: the next failure starts from `base` again."""
        self._failures = 0


async def wait_for_event(event: asyncio.Event, seconds: float) -> bool:
    """Wait up to `seconds` for `event`; True if it is set."""
    if seconds > 0 and not event.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), seconds)
    return event.is_set()


class LeaseLost(Exception):
    """This replica no longer holds the connection's lease (or the connection is gone)."""


@dataclass(frozen=True, slots=True)
class _Lease:
    """What a renewed lease hands the cycle: the sealed token and the stored offset."""

    workspace_id: uuid.UUID
    sealed_token: SealedSecret
    offset: int | None


def _raw_json(update: dict[str, Any]) -> str:
    """The update as JSON text for the payload column.

    getUpdates hands over decoded JSON, so unlike the webhook there is no body to
    keep byte for byte. Text with a lone surrogate (which `json` decodes from an
    escape) has no UTF-8 form; such an update is kept ASCII-escaped instead.
    """
    text = json.dumps(update, ensure_ascii=False, separators=(",", ":"))
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(update, separators=(",", ":"))
    return text


class ConnectionPoller:
    """Polls one connection's bot until asked to stop or the lease is lost.

    `run()` never raises except on cancellation: failures are logged and waited
    out (see the module docstring). `stop()` asks it to finish; `run()` returns
    after releasing the lease.
    """

    def __init__(
        self,
        *,
        engine: AsyncEngine,
        credentials: ConnectionCredentials,
        telegram: TelegramClient,
        connection_id: uuid.UUID,
        owner: str,
        long_poll_timeout: float,
        lease_seconds: float,
        delays: RetryDelays,
        rand: Callable[[], float] = random.random,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        if long_poll_timeout <= 0:
            raise ValueError("long_poll_timeout must be positive (0 would poll in a busy loop)")
        if lease_seconds <= long_poll_timeout:
            raise ValueError("a lease must outlast the long poll it covers")
        self.connection_id = connection_id
        self.owner = owner
        self._engine = engine
        self._credentials = credentials
        self._leases = PollingLeases(owner)
        self._telegram = telegram
        # getUpdates takes whole seconds.
        self._long_poll = max(1, math.ceil(long_poll_timeout))
        self._lease = timedelta(seconds=lease_seconds)
        self._delays = delays
        self._backoff = Backoff(delays.backoff_base, delays.backoff_cap, rand=rand)
        self._clock = clock
        self._stop = asyncio.Event()
        # None until the first success; False after a failure: the next success
        # then reconciles the connection's status.
        self._status_ok: bool | None = None
        # The kind of the failure being retried, so each is logged once when it
        # starts rather than on every retry.
        self._fault: str | None = None
        self._log = logger.bind(connection_id=str(connection_id))

    def stop(self) -> None:
        """Ask the poller to finish: the current store completes, nothing new starts."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    async def run(self) -> None:
        self._log.info("poller_started", worker_id=self.owner)
        reason = "cancelled"
        try:
            reason = await self._loop()
        finally:
            await self._release()
            self._log.info("poller_stopped", reason=reason)

    async def _loop(self) -> str:
        while not self._stop.is_set():
            try:
                delay = await self._cycle()
            except LeaseLost:
                return "lease_lost"
            except Exception as exc:
                # Database outage, a bug: none of it may end polling for good, and
                # none of it lost an update (nothing was confirmed).
                delay = self._backoff.next_delay()
                self._status_ok = False
                self._report_fault(
                    "polling_cycle_failed",
                    type(exc).__name__,
                    retry_in=round(delay, 2),
                    # A database error says enough by its type; anything else is a
                    # surprise worth its traceback (once, not on every retry).
                    exc_info=not isinstance(exc, SQLAlchemyError | OSError),
                )
            if delay and not await self._pause(delay):
                return "lease_lost"
        return "stopped"

    async def _cycle(self) -> float:
        """One getUpdates and, if it brought any, one store; returns the wait before the next."""
        lease = await self._renew()
        if lease is None:
            raise LeaseLost
        try:
            token = self._open_token(lease)
        except VaultError as exc:
            # Not transient: no retry opens it until an operator restores the key
            # or replaces the token, so the connection says so.
            self._status_ok = False
            self._report_fault("polling_credentials_unreadable", type(exc).__name__)
            await self._set_status(ConnectionStatus.action_required, CREDENTIALS_UNREADABLE_HINT)
            return self._delays.token_rejected
        try:
            updates = await self._unless_stopped(
                self._telegram.get_updates(
                    token,
                    offset=lease.offset,
                    limit=GET_UPDATES_LIMIT,
                    timeout=self._long_poll,
                    allowed_updates=list(ALLOWED_UPDATES),
                )
            )
        except TelegramError as exc:
            self._status_ok = False
            return await self._on_telegram_error(exc)
        if updates is None:
            return 0.0
        if updates and not await self._store(updates, lease):
            self._status_ok = False
            delay = self._backoff.next_delay()
            self._log.error(
                "polling_batch_unusable", received=len(updates), retry_in=round(delay, 2)
            )
            return delay
        self._backoff.reset()
        self._fault = None
        if not self._status_ok:
            await self._set_status(ConnectionStatus.active, None)
            self._status_ok = True
        return 0.0

    # -- the lease ---------------------------------------------------------------

    async def _renew(self) -> _Lease | None:
        """Take or extend the lease; None if another replica holds it or the connection is gone."""
        now = self._clock()
        async with self._engine.begin() as connection:
            row = await self._leases.renew(connection, self.connection_id, now + self._lease, now)
        if row is None:
            return None
        return _Lease(row.workspace_id, row.bot_token, row.polling_offset)

    async def _release(self) -> None:
        """Give the lease up so another replica can poll at once (best effort)."""
        try:
            async with self._engine.begin() as connection:
                await self._leases.release(connection, self.connection_id)
        except Exception as exc:
            # The lease then simply expires.
            self._log.warning("polling_lease_release_failed", error_type=type(exc).__name__)

    def _open_token(self, lease: _Lease) -> BotToken:
        return self._credentials.open_sealed_token(
            self.connection_id, lease.workspace_id, lease.sealed_token
        )

    # -- storing -----------------------------------------------------------------

    async def _store(self, updates: list[dict[str, Any]], lease: _Lease) -> bool:
        """Store a batch and advance the offset atomically; False if no update was usable.

        Raises LeaseLost (after rolling back) when the lease was lost meanwhile.
        """
        received_at = self._clock()
        items = self._parse(updates, lease.workspace_id, received_at)
        if not items:
            return False
        new_offset = max(item.parsed.update_id for item in items) + 1
        if lease.offset is not None:
            # Telegram never sends ids below the offset; should it, never go back.
            new_offset = max(new_offset, lease.offset)
        advance = self._leases.advance_offset(
            self.connection_id, new_offset, received_at + self._lease
        )
        try:
            outcomes = await self._commit(items, advance, one_by_one=False)
        except LeaseLost:
            raise
        except Exception as exc:
            if is_outage(exc):
                raise
            # The database refuses something in this batch. Retried one update at a
            # time, so the refused one is kept raw and the rest are stored in full:
            # retrying the same batch as it is would block the bot for good.
            self._log.warning("polling_batch_refused", error_type=type(exc).__name__)
            outcomes = await self._commit(items, advance, one_by_one=True)
        stored = sum(outcome is StoreOutcome.stored for outcome in outcomes)
        metrics.POLLING_RECEIVED.inc(len(outcomes))
        metrics.POLLING_DUPLICATE.inc(len(outcomes) - stored)
        self._log.info(
            "polling_batch_stored",
            received=len(updates),
            stored=stored,
            duplicates=len(outcomes) - stored,
            skipped=len(updates) - len(items),
            offset=new_offset,
        )
        return True

    async def _commit(
        self, items: list[IncomingUpdate], advance: Update, *, one_by_one: bool
    ) -> list[StoreOutcome]:
        """Store `items` and run `advance` (the offset) in one transaction."""
        async with self._engine.begin() as connection:
            # The fence first: a replica that lost the lease stores nothing. On
            # SQLite this write also opens the transaction (the driver begins
            # lazily), so the savepoints of `one_by_one` nest inside it.
            if (await connection.execute(advance)).rowcount != 1:
                raise LeaseLost
            if one_by_one:
                return [await store_alone(connection, item) for item in items]
            return await store_updates(connection, items)

    def _parse(
        self, updates: list[dict[str, Any]], workspace_id: uuid.UUID, received_at: datetime
    ) -> list[IncomingUpdate]:
        items = []
        for position, update_payload in enumerate(updates):
            try:
                parsed = parse_update(update_payload)
            except InvalidUpdate:
                # Position only: the content may be anything, including personal data.
                self._log.warning("polling_update_invalid", position=position)
                continue
            items.append(
                IncomingUpdate(
                    connection_id=self.connection_id,
                    workspace_id=workspace_id,
                    parsed=parsed,
                    raw=_raw_json(update_payload),
                    source=SOURCE,
                    received_at=received_at,
                )
            )
        return items

    # -- failures and status -----------------------------------------------------

    def _report_fault(
        self, event: str, error_type: str, *, exc_info: bool = False, **fields: Any
    ) -> None:
        """Log a failure as an error when it starts, and at debug level while it repeats."""
        fault = f"{event}:{error_type}"
        if fault == self._fault:
            self._log.debug(event, error_type=error_type, repeated=True, **fields)
            return
        self._fault = fault
        self._log.error(event, error_type=error_type, exc_info=exc_info, **fields)

    async def _on_telegram_error(self, exc: TelegramError) -> float:
        """Report what the user must fix, if anything; returns the wait before retrying."""
        if isinstance(exc, TelegramConflict):
            webhook = "webhook" in exc.description.lower()
            self._log.warning(
                "polling_conflict", cause="webhook_set" if webhook else "other_consumer"
            )
            hint = CONFLICT_WEBHOOK_HINT if webhook else CONFLICT_OTHER_CONSUMER_HINT
            await self._set_status(ConnectionStatus.action_required, hint)
            return self._delays.conflict
        if isinstance(exc, TelegramUnauthorized | TelegramNotFound):
            self._log.warning("polling_token_rejected", error_code=exc.error_code)
            await self._set_status(ConnectionStatus.action_required, UNAUTHORIZED_HINT)
            return self._delays.token_rejected
        if isinstance(exc, TelegramTooManyRequests):
            wait = float(max(exc.retry_after or 1, 1))
            self._log.info("polling_rate_limited", retry_after=wait)
            return wait
        delay = self._backoff.next_delay()
        self._log.warning(
            "polling_request_failed",
            error_type=type(exc).__name__,
            error_code=exc.error_code,
            retry_in=round(delay, 2),
        )
        return delay

    async def _set_status(self, status: ConnectionStatus, hint: str | None) -> None:
        async with self._engine.begin() as connection:
            changed = await self._leases.set_status(
                connection, self.connection_id, status, hint, self._clock()
            )
        if changed:
            self._log.info("connection_status_changed", status=status)

    # -- waiting -----------------------------------------------------------------

    async def _unless_stopped(self, call: Coroutine[Any, Any, T]) -> T | None:
        """Await `call`, abandoning it when stop() comes first (then None).

        Abandoning a getUpdates loses nothing: what it would have returned was not
        confirmed, so the next poll (here or on another replica) gets it.
        """
        request = asyncio.ensure_future(call)
        stopping = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait((request, stopping), return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            if not request.done():
                request.cancel()
                # asyncio.wait never raises the request's own CancelledError, so a
                # cancellation of this task still propagates.
                await asyncio.wait((request,))
        if request.cancelled():
            return None
        return request.result()

    async def _pause(self, seconds: float) -> bool:
        """Wait `seconds` (less if stopped), keeping the lease; False if it was lost."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        # Renew well before expiry, so a long wait does not hand the bot to another replica.
        step = self._lease.total_seconds() / 3
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0 or await wait_for_event(self._stop, min(remaining, step)):
                return True
            if deadline - loop.time() <= 0:
                return True
            try:
                if await self._renew() is None:
                    return False
            except Exception as exc:
                # The next cycle renews again, or finds the lease gone.
                self._log.warning("polling_lease_renewal_failed", error_type=type(exc).__name__)


class PollerSupervisor:
    """Keeps one `ConnectionPoller` running per pollable connection this replica may lease.

    `refresh()` (called periodically by the worker) starts pollers for live
    polling-mode connections whose lease is free, expired or already ours, asks the
    pollers of deleted or switched-to-webhook connections to stop, and forgets
    pollers that ended (lease lost). `stop_all()` stops them gracefully;
    `abort()` cancels them (their transactions roll back, which loses nothing).
    """

    def __init__(
        self,
        *,
        engine: AsyncEngine,
        credentials: ConnectionCredentials,
        telegram: TelegramClient,
        owner: str,
        long_poll_timeout: float,
        lease_seconds: float,
        delays: RetryDelays,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.owner = owner
        self._engine = engine
        self._leases = PollingLeases(owner)
        self._clock = clock
        self._new_poller = partial(
            ConnectionPoller,
            engine=engine,
            credentials=credentials,
            telegram=telegram,
            owner=owner,
            long_poll_timeout=long_poll_timeout,
            lease_seconds=lease_seconds,
            delays=delays,
            clock=clock,
        )
        self._running: dict[uuid.UUID, tuple[ConnectionPoller, asyncio.Task[None]]] = {}

    async def refresh(self) -> None:
        self._reap()
        live, available = await self._pollable_connections()
        for connection_id, (poller, _) in self._running.items():
            if connection_id not in live and not poller.stopping:
                poller.stop()
        for connection_id in available - self._running.keys():
            poller = self._new_poller(connection_id=connection_id)
            task = asyncio.create_task(poller.run(), name=f"poller-{connection_id}")
            self._running[connection_id] = (poller, task)

    async def stop_all(self, grace_seconds: float = STOP_GRACE_SECONDS) -> None:
        for poller, _ in self._running.values():
            poller.stop()
        tasks = [task for _, task in self._running.values()]
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=grace_seconds)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late)
        self._running.clear()

    async def abort(self) -> None:
        tasks = [task for _, task in self._running.values()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        self._running.clear()

    def _reap(self) -> None:
        for connection_id, (_, task) in list(self._running.items()):
            if task.done():
                del self._running[connection_id]
                if not task.cancelled() and task.exception() is not None:
                    logger.error(
                        "poller_crashed",
                        connection_id=str(connection_id),
                        error_type=type(task.exception()).__name__,
                    )

    async def _pollable_connections(self) -> tuple[set[uuid.UUID], set[uuid.UUID]]:
        """(live polling-mode connections, those whose lease this replica may take)."""
        async with self._engine.connect() as connection:
            # Connections leased by another live replica are left alone: starting a
            # poller for them would only find the lease taken.
            return await self._leases.pollable_connections(connection, self._clock())
