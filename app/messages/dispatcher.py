"""The outbound dispatcher (in `integrations worker`): claims due messages, paces them
to Telegram's limits, sends them, and records what happened.

Contract:

- Claims: `queued` messages due within `lookahead` (and `sending` ones whose lease
  ran out: their worker died) become `sending` under this worker's lease, in a
  transaction that commits before Telegram is called. On PostgreSQL the claim
  uses SKIP LOCKED, so any number of workers claim disjoint messages without
  waiting on each other. On SQLite (the embedded default, one worker) the claim
  is one atomic statement.
- Batches: each claimed batch is paced by `app.messages.pacing` (one round trip
  to Redis for all the messages due at one moment), the allowed sends go out
  together, one round trip tells the pacer when Telegram answered them, and one
  transaction records every outcome. While a batch is under way the next one is
  claimed (up to `batches_in_flight` at once).
- Timing: a message is claimed up to `lookahead` (50 ms) before its moment and
  asked for at that moment; one the pacer gives a moment less than `lookahead`
  away is asked for again then, within its batch. That is how sends keep to
  Telegram's pace with millisecond precision instead of the precision of a
  database round trip. Any longer wait is spent in the database: the message
  returns to `queued` with the moment it may go (`next_attempt_at`); no worker
  sleeps on it, and a slow chat never holds up the others. The connection's
  `daily_limit` counts messages sent since midnight UTC; over it, the message
  waits for the next day. With nothing due the dispatcher waits until the next
  message is (at most `idle_wait`).
- Telegram's answers: 429 waits `retry_after` for that message, without counting
  an attempt; 5xx and network errors back off exponentially, failing after
  `TELEGRAM_MAX_RETRIES` retries; 400 and 403 fail at once with Telegram's
  description; a group that became a supergroup (`migrate_to_chat_id`) moves the
  message (and its conversation) to the new chat and retries; 401 pauses the
  connection's queue and marks it `action_required` (nothing is failed; the
  messages go once the token is replaced).
- Delivery: exactly once when nothing crashes. A crash (or a lost answer) between
  Telegram accepting a message and the record of it can send it again: the lease
  runs out and another worker sends it. A request that never reached Telegram
  (the connection could not be made) is retried without that risk. Recording is
  retried while the batch's lease holds when the database fails (a database
  restart shorter than the lease sends nothing twice), and if recording a batch
  fails for one bad row, each outcome is recorded on its own, so one row cannot
  send its whole batch again.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import Row, func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app import metrics
from app.audit.repository import record_many
from app.connections.credentials import ConnectionCredentials
from app.connections.repository import not_sending, pause_outbound, senders
from app.connections.status import UNAUTHORIZED_HINT
from app.db import utcnow
from app.inbox.recording import (
    SentOutbound,
    conversation_for_chat,
    move_chat,
    open_conversations,
    record_outbound_sent,
    set_outbound_status,
)
from app.messages import states
from app.messages.models import MessageStatus, telegram_chat_id
from app.messages.pacing import Confirmation, OutboundPacer, PaceRequest
from app.ratelimit import RateLimiterUnavailable
from app.telegram.client import TelegramClient
from app.telegram.errors import (
    TelegramBadRequest,
    TelegramError,
    TelegramForbidden,
    TelegramMigrated,
    TelegramNetworkError,
    TelegramNotFound,
    TelegramTooManyRequests,
    TelegramUnauthorized,
)
from app.telegram.types import BotToken, SentMessage
from app.vault import VaultError

logger = structlog.get_logger("app.messages.dispatcher")
MESSAGES = states.MESSAGES

# How long a message waits when its connection cannot send for now (paused or
# deleted since the claim, the pacing store unreachable) and when its
# credentials cannot be opened.
SHORT_WAIT = 1.0
UNREADABLE_CREDENTIALS_WAIT = 300.0
# Waits before recording a batch's outcomes again when the database failed (the
# last one repeats), while the batch's lease holds with this much to spare.
RECORD_RETRY_DELAYS = (0.2, 1.0, 3.0)
RECORD_LEASE_MARGIN = 1.0
# How often the dispatcher logs what the pacer said (and what it claimed).
STATS_INTERVAL = 10.0
# The shortest wait before looking for due messages again.
MIN_IDLE_WAIT = 0.002


@dataclass(frozen=True)
class DispatchSettings:
    max_retries: int = 3
    # Messages claimed at once.
    batch_size: int = 500
    # Sends in flight at once in this worker.
    concurrency: int = 64
    # Batches being sent and recorded while the next is claimed.
    batches_in_flight: int = 4
    # How far ahead of its moment a message is claimed (see the module docstring).
    lookahead: float = 0.05
    lease_seconds: float = 60.0
    # The longest wait before looking for due messages again.
    idle_wait: float = 0.5
    backoff_base: float = 1.0
    backoff_cap: float = 300.0
    # After `stop`: how long batches in flight may take to finish before their sends
    # are cut off; what is still claimed then goes back to the queue, due at once.
    shutdown_grace: float = 20.0


@dataclass
class _Candidate:
    """A claimed message that may be sent once the pacer agrees."""

    row: Row[Any]
    token: BotToken
    chat_id: int | str
    daily_limit: int
    # Its moment on this process's monotonic clock, and its ticket in its chat's
    # order (it may have been given one within this batch).
    due: float
    ticket: int | None


@dataclass(frozen=True)
class _Send:
    row: Row[Any]
    token: BotToken
    chat_id: int | str
    # When the pacer admitted it (its clock), and when that answer came (ours).
    admitted_at: float
    admitted_here: float


@dataclass(frozen=True)
class _Failure:
    row: Row[Any]
    error: str


@dataclass
class _Outcomes:
    """What one batch did, recorded in one transaction."""

    # The sends Telegram answered (or may have received), for the pacer.
    confirmations: list[Confirmation] = field(default_factory=list)
    sent: list[tuple[Row[Any], SentMessage]] = field(default_factory=list)
    deferred: list[states.Deferral] = field(default_factory=list)
    failed: list[_Failure] = field(default_factory=list)
    migrated: list[tuple[Row[Any], int]] = field(default_factory=list)
    unauthorized: set[uuid.UUID] = field(default_factory=set)

    def __len__(self) -> int:
        return len(self.sent) + len(self.deferred) + len(self.failed) + len(self.migrated)


@dataclass
class _Batch:
    claimed: int
    candidates: list[_Candidate]
    outcomes: _Outcomes
    # When its lease runs out, on this process's monotonic clock.
    lease_ends: float


class Dispatcher:
    def __init__(
        self,
        *,
        engine: AsyncEngine,
        credentials: ConnectionCredentials,
        telegram: TelegramClient,
        pacer: OutboundPacer,
        owner: str,
        settings: DispatchSettings,
        clock: Callable[[], datetime] = utcnow,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self._engine = engine
        self._credentials = credentials
        self._telegram = telegram
        self._pacer = pacer
        self._owner = owner
        self._settings = settings
        self._clock = clock
        self._rand = rand
        self._gate = asyncio.Semaphore(settings.concurrency)
        self._log = logger.bind(worker_id=owner)
        # What the pacer said, by outcome: for the logs now, metrics later.
        self.verdicts: collections.Counter[str] = collections.Counter()

    async def run(self, stop: asyncio.Event) -> None:
        """Dispatch until `stop` is set; what is claimed when it is set is finished."""
        in_flight: set[asyncio.Task[None]] = set()
        next_report = time.monotonic() + STATS_INTERVAL
        try:
            while not stop.is_set():
                if time.monotonic() >= next_report:
                    next_report = time.monotonic() + STATS_INTERVAL
                    self._report()
                try:
                    batch = await self._claim()
                    wait = 0.0 if batch is not None else await self._until_next_due()
                except Exception as exc:
                    # The database may be away for a while: nothing claimed is lost
                    # (an unfinished claim's lease runs out), so wait and go on.
                    self._log.warning("dispatch_failed", error_type=type(exc).__name__)
                    batch, wait = None, self._settings.idle_wait
                if batch is not None:
                    task = asyncio.create_task(self._finish(batch))
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
                    if len(in_flight) >= self._settings.batches_in_flight:
                        await _first_done_or_stop(in_flight, stop)
                elif in_flight:
                    # A batch being recorded may bring due messages back sooner.
                    await asyncio.wait(in_flight, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
                else:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), wait)
        except asyncio.CancelledError:
            for task in in_flight:
                task.cancel()
            raise
        finally:
            if in_flight:
                _, late = await asyncio.wait(in_flight, timeout=self._settings.shutdown_grace)
                for task in late:
                    task.cancel()
                if late:
                    self._log.warning("outbound_shutdown_cut_off", batches=len(late))
                    await asyncio.wait(late)
            await self._release_claims()

    async def _release_claims(self) -> None:
        """Stopping: messages this worker still holds go back to the queue, due now,
        so none waits for its lease to run out. A send cut off mid-request may have
        reached Telegram: the same risk as a lease running out (the delivery rule)."""
        try:
            async with self._engine.begin() as connection:
                released = await states.release_claims(connection, self._owner, self._clock())
        except Exception as exc:
            # Their leases run out instead.
            self._log.warning("outbound_release_failed", error_type=type(exc).__name__)
            return
        if released:
            self._log.info("outbound_claims_released", count=released)

    def _report(self) -> None:
        if self.verdicts:
            self._log.info("outbound_dispatch_stats", **dict(self.verdicts))
            self.verdicts.clear()

    async def dispatch_once(self) -> int:
        """Claim one batch and see it through; returns how many messages were claimed."""
        batch = await self._claim()
        if batch is None:
            return 0
        await self._finish(batch)
        return batch.claimed

    async def _until_next_due(self) -> float:
        """Seconds until the next queued message comes within the lookahead (at most
        `idle_wait`)."""
        async with self._engine.connect() as connection:
            due: datetime | None = await connection.scalar(
                select(func.min(MESSAGES.c.next_attempt_at)).where(
                    MESSAGES.c.status == MessageStatus.queued, ~_paused()
                )
            )
        if due is None:
            return self._settings.idle_wait
        ahead = (due - self._clock()).total_seconds() - self._settings.lookahead
        return min(self._settings.idle_wait, max(MIN_IDLE_WAIT, ahead))

    # -- claiming: the connection, its credentials, the daily limit ------------------------

    async def _claim(self) -> _Batch | None:
        # The same instant on both clocks: moments and the lease in the claim are
        # wall-clock times, the batch keeps them on the monotonic clock. Read after
        # the claim, they would come late by the claim's own duration.
        now, here = self._clock(), time.monotonic()
        async with self._engine.begin() as connection:
            claimed = await states.claim(
                connection,
                owner=self._owner,
                now=now,
                due_by=now + timedelta(seconds=self._settings.lookahead),
                lease_until=now + timedelta(seconds=self._settings.lease_seconds),
                limit=self._settings.batch_size,
                paused_connections=_paused(),
            )
            if not claimed:
                return None
            targets = await senders(connection, {row.connection_id for row in claimed})
        self.verdicts["claimed"] += len(claimed)
        outcomes = _Outcomes()
        tokens: dict[uuid.UUID, BotToken | None] = {}
        candidates: list[_Candidate] = []
        for row in claimed:
            target = targets.get(row.connection_id)
            if target is None or not target.may_send or target.bot_token is None:
                # Paused or deleted since the claim: back in the queue, untouched (the
                # claim skips a paused connection's messages until it sends again).
                outcomes.deferred.append(_wait(row, now, SHORT_WAIT))
                metrics.DEFERRED_PAUSED.inc()
                continue
            if row.connection_id not in tokens:
                tokens[row.connection_id] = self._open_token(row, target)
            token = tokens[row.connection_id]
            if token is None:
                outcomes.deferred.append(_wait(row, now, UNREADABLE_CREDENTIALS_WAIT))
                metrics.DEFERRED_CREDENTIALS.inc()
                continue
            # Its moment: at most `lookahead` away (a reclaimed lease's is past).
            due = row.next_attempt_at or now
            ahead = max(0.0, (due - now).total_seconds())
            candidates.append(
                _Candidate(
                    row,
                    token,
                    telegram_chat_id(row.chat_id),
                    target.daily_limit,
                    here + ahead,
                    row.pacing_ticket,
                )
            )
        return _Batch(len(claimed), candidates, outcomes, here + self._settings.lease_seconds)

    async def _sent_today(self, connection_ids: set[uuid.UUID]) -> dict[uuid.UUID, int]:
        """Messages each connection has sent since midnight UTC (the pacer's day count
        when it has none: the day's first batch, or its store lost its state)."""
        midnight = self._clock().astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        stmt = (
            select(MESSAGES.c.connection_id, func.count())
            .where(
                MESSAGES.c.connection_id.in_(list(connection_ids)),
                MESSAGES.c.status == MessageStatus.sent,
                MESSAGES.c.sent_at >= midnight,
            )
            .group_by(MESSAGES.c.connection_id)
        )
        async with self._engine.connect() as connection:
            found = {row[0]: row[1] for row in await connection.execute(stmt)}
        return {connection_id: found.get(connection_id, 0) for connection_id in connection_ids}

    def _open_token(self, row: Row[Any], target: Row[Any]) -> BotToken | None:
        try:
            return self._credentials.open_sealed_token(
                row.connection_id, target.workspace_id, target.bot_token
            )
        except VaultError:
            self._log.error("outbound_credentials_unreadable", connection_id=str(row.connection_id))
            return None

    # -- pacing: each message at its moment ------------------------------------------------

    async def _finish(self, batch: _Batch) -> None:
        """Pace and send the batch, tell the pacer when Telegram answered, record it all."""
        outcomes = batch.outcomes
        releasing: list[asyncio.Task[None]] = []

        def release_deferred() -> None:
            # What waits in the database may be due again before this batch is done
            # (a wait of a little over the lookahead): it goes back to the queue now,
            # not when the batch's sends are recorded.
            if outcomes.deferred:
                waiting, outcomes.deferred = outcomes.deferred, []
                releasing.append(asyncio.create_task(self._release(waiting, outcomes)))

        try:
            sending: list[asyncio.Task[None]] = []
            pending = batch.candidates
            release_deferred()
            while pending:
                moment = min(candidate.due for candidate in pending)
                delay = moment - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                now = time.monotonic()
                ready = [c for c in pending if c.due <= now]
                pending = [c for c in pending if c.due > now]
                pending += await self._admit(ready, outcomes, sending)
                release_deferred()
            await asyncio.gather(*sending)
            # A release that failed is recorded with the rest, retried while the lease holds.
            await asyncio.gather(*releasing)
            try:
                await self._pacer.confirm(outcomes.confirmations)
            except RateLimiterUnavailable:
                # The sends stay counted from their admission: a little less margin.
                self._log.warning("outbound_pacing_confirm_failed")
            await self._record_retrying(outcomes, batch.lease_ends)
        except Exception as exc:
            # Unrecorded claims are sent again after their lease (the delivery rule).
            self._log.error("outbound_batch_failed", error_type=type(exc).__name__)

    async def _admit(
        self,
        ready: list[_Candidate],
        outcomes: _Outcomes,
        sending: list[asyncio.Task[None]],
    ) -> list[_Candidate]:
        """Ask the pacer about `ready`: start the allowed sends, defer the long waits;
        returns the candidates to ask about again within this batch."""
        now = self._clock()
        # Taken before asking: the pacer admits after this, so a send's time from
        # here to its answer is never less than from its admission (see `confirm`).
        here = time.monotonic()
        requests = [
            PaceRequest(c.row.connection_id, c.chat_id, c.ticket, c.daily_limit) for c in ready
        ]
        try:
            verdicts = await self._pacer.admit(requests)
            uncounted = [i for i, verdict in enumerate(verdicts) if verdict.needs_count]
            if uncounted:
                # The pacer has no count of these connections' day yet: count it here.
                counted = await self._sent_today({requests[i].connection_id for i in uncounted})
                recounted = await self._pacer.admit([requests[i] for i in uncounted], counted)
                for index, verdict in zip(uncounted, recounted, strict=True):
                    verdicts[index] = verdict
        except RateLimiterUnavailable:
            self._log.warning("outbound_pacing_unavailable", deferred=len(ready))
            outcomes.deferred.extend(_wait(c.row, now, SHORT_WAIT) for c in ready)
            metrics.DEFERRED_PACER_UNAVAILABLE.inc(len(ready))
            return []
        asked = time.monotonic()
        again = []
        for candidate, verdict in zip(ready, verdicts, strict=True):
            self.verdicts[verdict.limited_by or "allowed"] += 1
            if verdict.needs_count:
                # Counted meanwhile by nobody, and still not known: look again soon.
                outcomes.deferred.append(_wait(candidate.row, now, SHORT_WAIT))
            elif verdict.allowed:
                send = _Send(
                    candidate.row, candidate.token, candidate.chat_id, verdict.admitted_at, here
                )
                sending.append(asyncio.create_task(self._send(send, outcomes)))
            elif verdict.wait < self._settings.lookahead:
                candidate.due = asked + verdict.wait
                candidate.ticket = verdict.ticket
                again.append(candidate)
            else:
                outcomes.deferred.append(
                    states.Deferral(
                        candidate.row.id,
                        now + timedelta(seconds=verdict.wait),
                        ticket=verdict.ticket,
                    )
                )
                if verdict.limited_by is not None:
                    metrics.DEFERRED_BY_LIMIT[verdict.limited_by].inc()
        return again

    # -- sending -----------------------------------------------------------------------

    async def _send(self, send: _Send, outcomes: _Outcomes) -> None:
        row = send.row
        async with self._gate:
            try:
                sent = await self._telegram.send_message(
                    send.token,
                    chat_id=send.chat_id,
                    text=row.text,
                    parse_mode=row.parse_mode,
                    reply_to_message_id=row.reply_to_message_id,
                    message_thread_id=row.message_thread_id,
                    disable_notification=row.disable_notification,
                    business_connection_id=row.business_connection_id,
                    direct_messages_topic_id=row.direct_messages_topic_id,
                    protect_content=row.protect_content,
                    link_preview_options=(
                        None
                        if row.link_preview_options is None
                        else json.loads(row.link_preview_options)
                    ),
                )
            except TelegramError as exc:
                self._confirm(send, outcomes)
                self._on_error(row, exc, outcomes)
                return
        self._confirm(send, outcomes)
        outcomes.sent.append((row, sent))
        metrics.SENDS_SENT.inc()

    def _confirm(self, send: _Send, outcomes: _Outcomes) -> None:
        # Every attempt counts, answered or not: Telegram may count it too.
        outcomes.confirmations.append(
            Confirmation(
                send.row.connection_id,
                send.chat_id,
                send.admitted_at,
                time.monotonic() - send.admitted_here,
            )
        )

    def _on_error(self, row: Row[Any], exc: TelegramError, outcomes: _Outcomes) -> None:
        log = self._log.bind(message_id=str(row.id), connection_id=str(row.connection_id))
        now = self._clock()
        if isinstance(exc, TelegramTooManyRequests):
            wait = float(max(exc.retry_after or 1, 1))
            log.info("outbound_rate_limited", retry_after=wait)
            outcomes.deferred.append(_wait(row, now, wait, error=exc.description))
            metrics.SENDS_RATE_LIMITED.inc()
        elif isinstance(exc, TelegramMigrated):
            log.info("outbound_chat_migrated")
            outcomes.migrated.append((row, exc.migrate_to_chat_id))
            metrics.SENDS_MIGRATED.inc()
        elif isinstance(exc, TelegramUnauthorized):
            log.warning("outbound_token_rejected")
            outcomes.unauthorized.add(row.connection_id)
            metrics.SENDS_UNAUTHORIZED.inc()
            # Claimed again only once the token is replaced (the pause is lifted).
            outcomes.deferred.append(_wait(row, now, SHORT_WAIT, error=exc.description))
        elif isinstance(exc, TelegramBadRequest | TelegramForbidden | TelegramNotFound):
            outcomes.failed.append(_Failure(row, exc.description))
            metrics.SENDS_FAILED.inc()
        else:
            # 5xx, network errors, anything else: worth retrying, a few times.
            if self._settings.max_retries - row.attempts <= 0:
                outcomes.failed.append(_Failure(row, exc.description))
                metrics.SENDS_FAILED.inc()
                return
            metrics.SENDS_RETRIED.inc()
            if isinstance(exc, TelegramNetworkError) and exc.maybe_delivered:
                # The answer was lost: Telegram may have sent it (see the docstring).
                log.warning("outbound_answer_lost")
            delay = min(self._settings.backoff_cap, self._settings.backoff_base * 2.0**row.attempts)
            outcomes.deferred.append(
                _wait(
                    row,
                    now,
                    delay / 2 + self._rand() * delay / 2,
                    attempted=True,
                    error=exc.description,
                )
            )

    # -- recording -----------------------------------------------------------------------

    async def _release(self, waiting: list[states.Deferral], outcomes: _Outcomes) -> None:
        """Put messages that wait back in the queue, ahead of the batch's record."""
        try:
            async with self._engine.begin() as connection:
                await states.defer(connection, self._owner, waiting, self._clock())
        except Exception as exc:
            self._log.warning("outbound_release_failed", error_type=type(exc).__name__)
            outcomes.deferred.extend(waiting)

    async def _record_retrying(self, outcomes: _Outcomes, lease_ends: float) -> None:
        """Record, retrying while the lease holds: until it runs out no other worker
        can take these messages, so what Telegram accepted is worth waiting for (or
        it is sent again after the lease)."""
        attempt = 0
        while True:
            try:
                await self._record(outcomes)
                return
            except Exception as exc:
                delay = RECORD_RETRY_DELAYS[min(attempt, len(RECORD_RETRY_DELAYS) - 1)]
                if time.monotonic() + delay > lease_ends - RECORD_LEASE_MARGIN:
                    raise
                self._log.warning("outbound_record_retry", error_type=type(exc).__name__)
                await asyncio.sleep(delay)
                attempt += 1

    async def _record(self, outcomes: _Outcomes) -> None:
        now = self._clock()
        for connection_id in outcomes.unauthorized:
            async with self._engine.begin() as connection:
                await pause_outbound(connection, connection_id, UNAUTHORIZED_HINT, now)
        try:
            async with self._engine.begin() as connection:
                await self._record_in(connection, outcomes, now)
        except Exception as exc:
            if len(outcomes) <= 1:
                raise
            # One bad row must not send the whole batch again after its lease:
            # record each outcome on its own, and let only the bad one wait.
            # When none can be recorded it is the database, not a row, that fails:
            # raise, so the caller retries the batch while its lease holds.
            self._log.warning("outbound_batch_record_failed", error_type=type(exc).__name__)
            failures: list[Exception] = []
            singles = _one_by_one(outcomes)
            for single in singles:
                try:
                    async with self._engine.begin() as connection:
                        await self._record_in(connection, single, now)
                except Exception as single_exc:
                    failures.append(single_exc)
            if len(failures) == len(singles):
                raise failures[-1] from exc
            for failure in failures:
                self._log.error("outbound_record_failed", error_type=type(failure).__name__)
        for row, new_chat_id in outcomes.migrated:
            await self._migrate(row, new_chat_id, now)

    async def _record_in(
        self, connection: AsyncConnection, outcomes: _Outcomes, now: datetime
    ) -> None:
        sent = [(row, _sent_outbound(row, answer, now)) for row, answer in outcomes.sent]
        # Before the messages name them: a message sent by chat id belongs to the
        # conversation of the chat Telegram answered with.
        await open_conversations(connection, [item for _, item in sent])
        held = await states.mark_sent(
            connection,
            self._owner,
            [
                states.Sent(
                    item.outbound_message_id,
                    item.telegram_message_id,
                    None if item.conversation_id is not None else item.chat_conversation_id,
                )
                for _, item in sent
            ],
            now,
        )
        # A message whose lease ran out (another worker has it) is its to record.
        sent = [(row, item) for row, item in sent if row.id in held]
        if sent:
            await record_outbound_sent(connection, [item for _, item in sent])
            await record_many(connection, [_audit(row, "sent", now) for row, _ in sent])
        await states.defer(connection, self._owner, outcomes.deferred, now)
        for failure in outcomes.failed:
            if await states.mark_failed(
                connection, failure.row.id, self._owner, failure.error, now
            ):
                await set_outbound_status(connection, [failure.row.id], MessageStatus.failed)
                await record_many(
                    connection, [_audit(failure.row, "failed", now, reason=failure.error)]
                )

    async def _migrate(self, row: Row[Any], new_chat_id: int, now: datetime) -> None:
        async with self._engine.begin() as connection:
            conversation = await move_chat(
                connection, row.connection_id, int(row.chat_id), new_chat_id, now
            )
            await states.move_chat(
                connection, row.connection_id, int(row.chat_id), new_chat_id, conversation
            )
            await states.defer(connection, self._owner, [states.Deferral(row.id, now)], now)


async def _first_done_or_stop(tasks: set[asyncio.Task[None]], stop: asyncio.Event) -> None:
    """Wait for one of `tasks`, or for `stop` (so a stop is seen at once, and the
    shutdown grace counts from it even while sends hang)."""
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({*tasks, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()


def _paused() -> Any:
    return MESSAGES.c.connection_id.in_(not_sending().scalar_subquery())


def _wait(
    row: Row[Any],
    now: datetime,
    seconds: float,
    *,
    attempted: bool = False,
    error: str | None = None,
) -> states.Deferral:
    return states.Deferral(
        row.id, now + timedelta(seconds=seconds), attempted=attempted, error=error
    )


def _one_by_one(outcomes: _Outcomes) -> list[_Outcomes]:
    return [
        *(_Outcomes(sent=[item]) for item in outcomes.sent),
        *(_Outcomes(deferred=[item]) for item in outcomes.deferred),
        *(_Outcomes(failed=[item]) for item in outcomes.failed),
    ]


def _sent_outbound(row: Row[Any], sent: SentMessage, now: datetime) -> SentOutbound:
    return SentOutbound(
        outbound_message_id=row.id,
        workspace_id=row.workspace_id,
        connection_id=row.connection_id,
        conversation_id=row.conversation_id,
        chat_id=sent.chat_id,
        chat_conversation_id=conversation_for_chat(row.connection_id, sent.chat_id),
        chat_type=sent.chat_type,
        chat_title=sent.chat_title,
        telegram_message_id=sent.message_id,
        text=row.text,
        sent_at=now,
    )


def _audit(row: Row[Any], action: str, at: datetime, reason: str | None = None) -> dict[str, Any]:
    return {
        "workspace_id": row.workspace_id,
        "actor_token_id": None,
        "action": action,
        "message_id": row.id,
        "reason": reason,
        "created_at": at,
    }
