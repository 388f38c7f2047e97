"""The outbound dispatcher (in `integrations worker`): claims due messages, paces them
to Telegram's limits, sends them, and records what happened.

Contract:

- Claims: due `queued` messages (and `sending` ones whose lease ran out: their
  worker died) become `sending` under this worker's lease, in a transaction that
  commits before Telegram is called. On PostgreSQL the claim uses SKIP LOCKED, so
  any number of workers claim disjoint messages without waiting on each other. On
  SQLite (the embedded default, one worker) the claim is one atomic statement.
- Pacing (`app.messages.pacing`): a message that may not go yet returns to
  `queued` with the moment it may (`next_attempt_at`); nothing sleeps on it, and a
  slow chat never holds up the others. The connection's `daily_limit` counts
  messages sent since midnight UTC; over it, the message waits for the next day.
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
  (the connection could not be made) is retried without that risk.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import Row, func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.audit.repository import record_many
from app.connections.credentials import ConnectionCredentials
from app.connections.repository import not_sending, pause_outbound, senders
from app.connections.status import UNAUTHORIZED_HINT
from app.db import utcnow
from app.inbox.recording import SentOutbound, move_chat, record_outbound_sent, set_outbound_status
from app.messages import states
from app.messages.models import MessageStatus, telegram_chat_id
from app.messages.pacing import Pacer
from app.ratelimit import RateLimiter, RateLimiterUnavailable
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
from app.telegram.types import BotToken
from app.vault import VaultError

logger = structlog.get_logger("app.messages.dispatcher")
MESSAGES = states.MESSAGES


@dataclass(frozen=True)
class DispatchSettings:
    max_retries: int = 3
    batch_size: int = 100
    # Sends in flight at once in this worker.
    concurrency: int = 32
    lease_seconds: float = 60.0
    # How long an idle dispatcher waits before looking for due messages again.
    idle_wait: float = 0.5
    backoff_base: float = 1.0
    backoff_cap: float = 300.0


class Dispatcher:
    def __init__(
        self,
        *,
        engine: AsyncEngine,
        credentials: ConnectionCredentials,
        telegram: TelegramClient,
        limiter: RateLimiter,
        owner: str,
        settings: DispatchSettings,
        clock: Callable[[], datetime] = utcnow,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self._engine = engine
        self._credentials = credentials
        self._telegram = telegram
        self._pacer = Pacer(limiter)
        self._owner = owner
        self._settings = settings
        self._clock = clock
        self._rand = rand
        self._log = logger.bind(worker_id=owner)

    async def run(self, stop: asyncio.Event) -> None:
        """Dispatch until `stop` is set; what is claimed when it is set is finished."""
        while not stop.is_set():
            try:
                handled = await self.dispatch_once()
            except Exception as exc:
                # The database or Redis may be away for a while: nothing claimed is
                # lost (an unfinished claim's lease runs out), so wait and go on.
                self._log.warning("dispatch_failed", error_type=type(exc).__name__)
                handled = 0
            if handled == 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self._settings.idle_wait)

    async def dispatch_once(self) -> int:
        """Claim one batch and see each message through; returns how many were claimed."""
        now = self._clock()
        async with self._engine.begin() as connection:
            claimed = await states.claim(
                connection,
                owner=self._owner,
                now=now,
                lease_until=now + timedelta(seconds=self._settings.lease_seconds),
                limit=self._settings.batch_size,
                paused_connections=MESSAGES.c.connection_id.in_(not_sending().scalar_subquery()),
            )
            targets = await senders(connection, {row.connection_id for row in claimed})
        if not claimed:
            return 0
        sent_today = await self._sent_today({row.connection_id for row in claimed})
        gate = asyncio.Semaphore(self._settings.concurrency)

        async def one(row: Row[Any]) -> None:
            async with gate:
                await self._deliver(row, targets.get(row.connection_id), sent_today)

        await asyncio.gather(*(one(row) for row in claimed))
        return len(claimed)

    async def _sent_today(self, connection_ids: set[uuid.UUID]) -> dict[uuid.UUID, int]:
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
            return {row[0]: row[1] for row in await connection.execute(stmt)}

    # -- one message ---------------------------------------------------------------

    async def _deliver(
        self, row: Row[Any], target: Row[Any] | None, sent_today: dict[uuid.UUID, int]
    ) -> None:
        log = self._log.bind(message_id=str(row.id), connection_id=str(row.connection_id))
        if target is None or not target.may_send or target.bot_token is None:
            # Paused or deleted since the claim: back in the queue, untouched (the
            # claim skips a paused connection's messages until it sends again).
            await self._defer(row, 1.0, attempted=False)
            return
        if sent_today.get(row.connection_id, 0) >= target.daily_limit:
            await self._defer(row, _seconds_to_midnight(self._clock()), attempted=False)
            return
        chat_id = telegram_chat_id(row.chat_id)
        try:
            verdict = await self._pacer.admit(row.connection_id, chat_id)
        except RateLimiterUnavailable:
            await self._defer(row, 1.0, attempted=False)
            return
        if not verdict.allowed:
            await self._defer(row, verdict.retry_after, attempted=False)
            return
        try:
            token = self._credentials.open_sealed_token(
                row.connection_id, target.workspace_id, target.bot_token
            )
        except VaultError:
            log.error("outbound_credentials_unreadable")
            await self._defer(row, 300.0, attempted=False)
            return
        sent_today[row.connection_id] = sent_today.get(row.connection_id, 0) + 1
        try:
            sent = await self._telegram.send_message(
                token,
                chat_id=chat_id,
                text=row.text,
                parse_mode=row.parse_mode,
                reply_to_message_id=row.reply_to_message_id,
                message_thread_id=row.message_thread_id,
                disable_notification=row.disable_notification,
                business_connection_id=row.business_connection_id,
                direct_messages_topic_id=row.direct_messages_topic_id,
            )
        except TelegramError as exc:
            await self._on_error(row, token, exc, log)
            return
        await self._record_sent(row, sent.message_id, sent.chat_id, sent.chat_type, sent.chat_title)

    async def _on_error(self, row: Row[Any], token: BotToken, exc: TelegramError, log: Any) -> None:
        if isinstance(exc, TelegramTooManyRequests):
            wait = float(max(exc.retry_after or 1, 1))
            log.info("outbound_rate_limited", retry_after=wait)
            await self._defer(row, wait, attempted=False, error=exc.description)
        elif isinstance(exc, TelegramMigrated):
            log.info("outbound_chat_migrated")
            await self._migrate(row, exc.migrate_to_chat_id)
        elif isinstance(exc, TelegramUnauthorized):
            log.warning("outbound_token_rejected")
            async with self._engine.begin() as connection:
                await pause_outbound(
                    connection, row.connection_id, UNAUTHORIZED_HINT, self._clock()
                )
            # Claimed again only once the token is replaced (the pause is lifted).
            await self._defer(row, 1.0, attempted=False, error=exc.description)
        elif isinstance(exc, TelegramBadRequest | TelegramForbidden | TelegramNotFound):
            await self._fail(row, exc.description)
        else:
            # 5xx, network errors, anything else: worth retrying, a few times.
            retries_left = self._settings.max_retries - row.attempts
            if retries_left <= 0:
                await self._fail(row, exc.description)
                return
            if isinstance(exc, TelegramNetworkError) and exc.maybe_delivered:
                # The answer was lost: Telegram may have sent it (see the docstring).
                log.warning("outbound_answer_lost")
            delay = min(self._settings.backoff_cap, self._settings.backoff_base * 2.0**row.attempts)
            await self._defer(
                row, delay / 2 + self._rand() * delay / 2, attempted=True, error=exc.description
            )

    # -- recording -----------------------------------------------------------------

    async def _record_sent(
        self,
        row: Row[Any],
        telegram_message_id: int,
        chat_id: int,
        chat_type: str,
        chat_title: str | None,
    ) -> None:
        now = self._clock()
        async with self._engine.begin() as connection:
            if not await states.mark_sent(
                connection, row.id, self._owner, telegram_message_id, now
            ):
                # The lease ran out and another worker has it: it records the send.
                return
            found = await record_outbound_sent(
                connection,
                [
                    SentOutbound(
                        outbound_message_id=row.id,
                        workspace_id=row.workspace_id,
                        connection_id=row.connection_id,
                        conversation_id=row.conversation_id,
                        chat_id=chat_id,
                        chat_type=chat_type,
                        chat_title=chat_title,
                        telegram_message_id=telegram_message_id,
                        text=row.text,
                        sent_at=now,
                    )
                ],
            )
            if row.id in found:
                await states.set_conversation(connection, row.id, found[row.id])
            await _audit(connection, row, "sent", now)

    async def _fail(self, row: Row[Any], error: str) -> None:
        now = self._clock()
        async with self._engine.begin() as connection:
            if await states.mark_failed(connection, row.id, self._owner, error, now):
                await set_outbound_status(connection, [row.id], MessageStatus.failed)
                await _audit(connection, row, "failed", now, reason=error)

    async def _defer(
        self, row: Row[Any], seconds: float, *, attempted: bool, error: str | None = None
    ) -> None:
        now = self._clock()
        async with self._engine.begin() as connection:
            await states.defer(
                connection,
                row.id,
                self._owner,
                now + timedelta(seconds=seconds),
                now,
                attempted=attempted,
                error=error,
            )

    async def _migrate(self, row: Row[Any], new_chat_id: int) -> None:
        now = self._clock()
        async with self._engine.begin() as connection:
            conversation = await move_chat(
                connection, row.connection_id, int(row.chat_id), new_chat_id, now
            )
            await states.move_chat(
                connection, row.connection_id, int(row.chat_id), new_chat_id, conversation
            )
            await states.defer(connection, row.id, self._owner, now, now, attempted=False)


async def _audit(
    connection: AsyncConnection, row: Row[Any], action: str, at: datetime, reason: str | None = None
) -> None:
    await record_many(
        connection,
        [
            {
                "workspace_id": row.workspace_id,
                "actor_token_id": None,
                "action": action,
                "message_id": row.id,
                "reason": reason,
                "created_at": at,
            }
        ],
    )


def _seconds_to_midnight(now: datetime) -> float:
    tomorrow = (now.astimezone(UTC) + timedelta(days=1)).replace(
        hour=0, minute=0, second=0, microsecond=0
    )
    return (tomorrow - now).total_seconds()
