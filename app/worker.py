"""The worker process (`integrations worker`): the outbound dispatcher, long-polling
ingestion and housekeeping.

`run_worker` opens the runtime, runs the outbound dispatcher
(`app.messages.dispatcher`) and, every `refresh_interval`, expires messages left
pending past APPROVAL_TTL and reconciles the pollers with the database (see
`PollerSupervisor`: live polling-mode connections are polled, deleted or
switched-to-webhook ones stop being polled) and runs the housekeeping. Any number
of replicas may run: leases keep each bot with one poller, claims each message with
one worker.

Stopping: setting `stop` (the CLI wires SIGTERM and SIGINT to it) lets every
poller finish the batch it is storing, then releases the leases so another
replica takes over at once. Cancelling the task instead is a hard stop: stores in
progress roll back (which loses nothing: their updates were not confirmed to
Telegram) and the leases are still released where possible.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog

from app.config import Settings
from app.connections.repository import clear_expired_previous_secrets
from app.db import utcnow
from app.ingress.polling import (
    LEASE_MARGIN_SECONDS,
    PollerSupervisor,
    RetryDelays,
    wait_for_event,
)
from app.messages.dispatcher import Dispatcher, DispatchSettings
from app.messages.queue_metrics import QueueGauges
from app.messages.states import expire_due
from app.metrics import serve_metrics
from app.runtime import WorkerRuntime, metrics_access, open_worker_runtime, serving_collector
from app.vault import Keyring

__all__ = ["default_worker_id", "run_worker"]

logger = structlog.get_logger("app.worker")

# Housekeeping is tidying, not a deadline: no need to run it on every refresh.
HOUSEKEEPING_INTERVAL_SECONDS = 60.0


def default_worker_id() -> str:
    """Host, process and a random suffix: unique per run, readable in the lease column."""
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{secrets.token_hex(4)}"[:64]


async def run_worker(
    settings: Settings,
    *,
    stop: asyncio.Event | None = None,
    refresh_interval: float = 5.0,
    long_poll_timeout: float = 25.0,
    worker_id: str | None = None,
    retry_delays: RetryDelays | None = None,
    keyring: Keyring | None = None,
    dispatch: DispatchSettings | None = None,
) -> None:
    """Run until `stop` is set (forever without one); see the module docstring.

    `long_poll_timeout` is getUpdates' server-side wait; a poller's lease lasts
    that plus the Telegram request timeout plus `LEASE_MARGIN_SECONDS`, so it
    covers a whole cycle. `worker_id` names this replica in the lease column
    (default: `default_worker_id()`); `retry_delays` sets the waits after failures;
    `keyring` is the vault's, when the caller has loaded it already; `dispatch`
    tunes the outbound dispatcher (default: from `settings`).
    """
    if refresh_interval <= 0:
        raise ValueError("refresh_interval must be positive")
    if stop is None:
        stop = asyncio.Event()
    owner = worker_id or default_worker_id()
    lease_seconds = long_poll_timeout + settings.telegram_request_timeout + LEASE_MARGIN_SECONDS
    log = logger.bind(worker_id=owner)
    async with open_worker_runtime(settings, keyring=keyring) as runtime:
        supervisor = PollerSupervisor(
            engine=runtime.engine,
            credentials=runtime.credentials,
            telegram=runtime.telegram,
            owner=owner,
            long_poll_timeout=long_poll_timeout,
            lease_seconds=lease_seconds,
            delays=retry_delays or RetryDelays(),
        )
        dispatcher = Dispatcher(
            engine=runtime.engine,
            credentials=runtime.credentials,
            telegram=runtime.telegram,
            pacer=runtime.pacer,
            owner=owner,
            settings=dispatch
            or DispatchSettings(
                max_retries=settings.telegram_max_retries,
                lease_seconds=settings.dispatch_lease_seconds,
                shutdown_grace=settings.shutdown_grace_seconds,
            ),
        )
        # As the API server does (see `serving_collector`).
        with serving_collector():
            async with _metrics_endpoint(runtime):
                log.info("worker_started", long_poll_timeout=long_poll_timeout)
                sending = asyncio.create_task(dispatcher.run(stop), name="outbound-dispatcher")
                try:
                    await _serve(runtime, supervisor, stop, refresh_interval)
                    # The dispatcher finishes what it has claimed (within the shutdown
                    # grace), puts back what it could not, then ends with `stop`.
                    await sending
                except BaseException:
                    sending.cancel()
                    await asyncio.wait((sending,))
                    await supervisor.abort()
                    log.info("worker_aborted")
                    raise
                await supervisor.stop_all()
                log.info("worker_stopped")


@asynccontextmanager
async def _metrics_endpoint(runtime: WorkerRuntime) -> AsyncIterator[None]:
    """`GET /metrics` on WORKER_METRICS_HOST:WORKER_METRICS_PORT while the worker runs
    (nothing when the port is unset)."""
    settings = runtime.settings
    if settings.worker_metrics_port is None:
        yield
        return
    server = await serve_metrics(
        settings.worker_metrics_host,
        settings.worker_metrics_port,
        metrics_access(settings),
        refresh=QueueGauges(runtime.engine).refresh,
    )
    logger.info(
        "worker_metrics_listening",
        host=settings.worker_metrics_host,
        port=settings.worker_metrics_port,
    )
    try:
        yield
    finally:
        server.close()
        await server.wait_closed()


async def _serve(
    runtime: WorkerRuntime,
    supervisor: PollerSupervisor,
    stop: asyncio.Event,
    refresh_interval: float,
) -> None:
    loop = asyncio.get_running_loop()
    next_housekeeping = loop.time()
    while not stop.is_set():
        await _refresh_pollers(supervisor)
        await _expire_pending(runtime)
        if loop.time() >= next_housekeeping:
            await _housekeeping(runtime)
            next_housekeeping = loop.time() + HOUSEKEEPING_INTERVAL_SECONDS
        await wait_for_event(stop, refresh_interval)


async def _expire_pending(runtime: WorkerRuntime) -> None:
    """Messages left pending past APPROVAL_TTL expire (and are never sent)."""
    try:
        async with runtime.engine.begin() as connection:
            expired = await expire_due(connection, utcnow())
    except Exception as exc:
        logger.warning("expiry_failed", error_type=type(exc).__name__)
        return
    if expired:
        logger.info("pending_messages_expired", count=len(expired))


async def _refresh_pollers(supervisor: PollerSupervisor) -> None:
    try:
        await supervisor.refresh()
    except Exception as exc:
        # The database may be away for a while; running pollers go on meanwhile.
        logger.warning("poller_refresh_failed", error_type=type(exc).__name__)


async def _housekeeping(runtime: WorkerRuntime) -> None:
    try:
        async with runtime.engine.begin() as connection:
            cleared = await clear_expired_previous_secrets(connection, utcnow())
    except Exception as exc:
        logger.warning("housekeeping_failed", error_type=type(exc).__name__)
        return
    for connection_id in cleared:
        # Cached webhook routes still carry the old hash (harmless once expired,
        # but there is no reason to keep it around).
        await runtime.routes.connection_changed(connection_id)
    if cleared:
        logger.info("previous_webhook_secrets_cleared", count=len(cleared))
