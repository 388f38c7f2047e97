"""The outbound queue's gauges (`integrations_outbound_messages`,
`integrations_outbound_oldest_due_seconds`), read from the database when scraped.

A gauge kept up to date by every transition would be wrong as soon as two
processes make transitions; the database holds the truth, so a scrape asks it.
One grouped COUNT over the unfinished statuses (the `(status, next_attempt_at)`
index serves it; finished messages are never counted, however many there are)
and one MIN (the longest a queued message has been due, paused connections
left out: their queue waits for a new token, not for a worker), at most every
`ttl` seconds, however often and by however many scrapers the endpoint is read.
Across all workspaces: these are the operator's.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import datetime

import structlog
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app import metrics
from app.connections.repository import not_sending
from app.db import utcnow
from app.messages.models import MessageStatus
from app.messages.states import MESSAGES

logger = structlog.get_logger("app.messages.queue_metrics")

UNFINISHED = (MessageStatus.pending_approval, MessageStatus.queued, MessageStatus.sending)


class QueueGauges:
    """Refreshes the queue gauges from the database, at most every `ttl` seconds."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        ttl: float = 5.0,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._engine = engine
        self._ttl = ttl
        self._clock = clock
        self._refreshed_at: float | None = None
        self._lock = asyncio.Lock()

    async def refresh(self) -> None:
        """Query unless a refresh is younger than `ttl`; a failure keeps the last values."""
        async with self._lock:
            if self._refreshed_at is not None and time.monotonic() - self._refreshed_at < self._ttl:
                return
            try:
                counts, oldest_due = await self._read()
            except Exception as exc:
                logger.warning("queue_metrics_failed", error_type=type(exc).__name__)
                return
            now = self._clock()
            waited = (now - oldest_due).total_seconds() if oldest_due is not None else 0.0
            metrics.set_outbound_queue(counts, waited)
            self._refreshed_at = time.monotonic()

    async def _read(self) -> tuple[dict[str, int], datetime | None]:
        status, due = MESSAGES.c.status, MESSAGES.c.next_attempt_at
        async with self._engine.connect() as connection:
            rows = await connection.execute(
                select(status, func.count()).where(status.in_(UNFINISHED)).group_by(status)
            )
            counts = {str(row[0]): int(row[1]) for row in rows}
            oldest_due: datetime | None = await connection.scalar(
                select(func.min(due)).where(
                    status == MessageStatus.queued,
                    due <= self._clock(),
                    # A paused connection's queue waits for its new token, not a worker.
                    MESSAGES.c.connection_id.not_in(not_sending().scalar_subquery()),
                )
            )
        return counts, oldest_due
