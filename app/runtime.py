"""How each process assembles what it uses; the one module that knows every domain.

- `open_api_runtime`: the HTTP server. The API's engine, Redis, the Telegram
  client, the vault, the webhook ingress (an engine of its own, the group-commit
  writer, the key directory and its cross-replica invalidation listener), and
  what the connections domain needs (`ConnectionCollaborators`).
- `open_worker_runtime`: the worker. One engine, the Telegram client (over
  aiohttp: the dispatcher keeps dozens of sends in flight, see
  app/telegram/transport.py), the vault, the outbound pacer, and a publisher of
  route changes (no ingress pool, no writer, no listener).
- One-shot commands (`app.cli`) open one engine and nothing else.

Each opens its resources in order and closes them in reverse. Domain modules
never import this one: they take their collaborators as arguments.
"""

from __future__ import annotations

import functools
import gc
import ssl
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Annotated

import aiohttp
import httpx
import structlog
from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.broadcasts.service import cancel_unsent_of_deleted_connection
from app.config import Settings
from app.connections.credentials import ConnectionCredentials
from app.connections.service import ConnectionCollaborators
from app.db import create_engine, create_ingress_engine, create_session_factory
from app.ingress.directory import ConnectionDirectory, DirectoryInvalidator, RouteChangePublisher
from app.ingress.store import UpdateWriter
from app.ingress.webhook import WebhookIngress
from app.locks import OperationLocks
from app.messages.pacing import LocalOutboundPacer, OutboundPacer, RedisOutboundPacer
from app.messages.queue_metrics import QueueGauges
from app.metrics import MetricsAccess
from app.ratelimit import (
    CachedPeek,
    LeasedRateLimiter,
    LocalRateLimiter,
    RateLimiter,
    RedisRateLimiter,
)
from app.redis_client import RedisClient, create_redis
from app.telegram.client import TelegramClient
from app.vault import Keyring, Vault, load_keyring

logger = structlog.get_logger("app.runtime")


@dataclass
class ApiRuntime:
    """What the HTTP server holds while it runs."""

    settings: Settings
    engine: AsyncEngine
    session_factory: async_sessionmaker[AsyncSession]
    redis: RedisClient | None
    vault: Vault
    telegram: TelegramClient
    ingress: WebhookIngress
    directory: DirectoryInvalidator
    connections: ConnectionCollaborators
    # Who may read /metrics, and the queue gauges it refreshes when read.
    metrics_access: MetricsAccess
    queue_gauges: QueueGauges


@dataclass
class WorkerRuntime:
    """What the worker holds while it runs."""

    settings: Settings
    engine: AsyncEngine
    redis: RedisClient | None
    vault: Vault
    credentials: ConnectionCredentials
    telegram: TelegramClient
    routes: RouteChangePublisher
    # Telegram's sending limits, shared by every worker through Redis.
    pacer: OutboundPacer


def _engine(stack: AsyncExitStack, settings: Settings, role: str) -> AsyncEngine:
    if settings.database_url is None:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        settings.effective_database_url,
        application_name=f"{settings.database_application_name}-{role}",
        pgbouncer=settings.database_pgbouncer,
        pool_size=settings.database_pool_size,
        max_overflow=settings.database_max_overflow,
    )
    stack.push_async_callback(engine.dispose)
    return engine


def _redis(stack: AsyncExitStack, settings: Settings, role: str) -> RedisClient | None:
    if not settings.redis_url:
        logger.warning(
            "redis_not_configured",
            detail="REDIS_URL is unset: rate limits are kept in process and are not "
            "shared between replicas",
        )
        return None
    redis = create_redis(settings, f"{settings.database_application_name}-{role}")
    stack.push_async_callback(redis.aclose)
    return redis


def _worker_telegram(stack: AsyncExitStack, settings: Settings) -> TelegramClient:
    # No total limit: the dispatcher bounds its sends in flight itself, and the
    # pollers hold one long poll per bot.
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=30),
        raise_for_status=False,
    )
    stack.push_async_callback(session.close)
    return TelegramClient(
        session, settings.telegram_api_base, request_timeout=settings.telegram_request_timeout
    )


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """httpx's default verification (certifi's CA bundle), built once per process:
    loading the bundle costs about 25 ms of CPU each time."""
    return httpx.create_ssl_context()


def _telegram(stack: AsyncExitStack, settings: Settings) -> TelegramClient:
    http = httpx.AsyncClient(
        verify=_tls_context(),
        timeout=httpx.Timeout(settings.telegram_request_timeout, connect=5.0),
        limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
        follow_redirects=False,
    )
    stack.push_async_callback(http.aclose)
    return TelegramClient(
        http, settings.telegram_api_base, request_timeout=settings.telegram_request_timeout
    )


def _ingress(
    stack: AsyncExitStack, settings: Settings, vault: Vault, redis: RedisClient | None
) -> tuple[WebhookIngress, DirectoryInvalidator, RateLimiter]:
    """The webhook path; also returns the shared limiter the API uses."""
    limiter: RateLimiter
    update_limiter: RateLimiter
    if redis is not None:
        limiter = RedisRateLimiter(redis)
        # Most update decisions are spent from tokens leased in batches: no
        # Redis round trip per webhook request, and never above the limit.
        update_limiter = LeasedRateLimiter(RedisRateLimiter(redis), lease_size=20)
    else:
        limiter = update_limiter = LocalRateLimiter()
    # Ingress has a pool of its own, so API requests waiting on Telegram can never
    # starve webhook deliveries of database connections, and tight timeouts, so a
    # slow database answers 503 (Telegram redelivers) instead of holding
    # Telegram's connections.
    ingress_engine = create_ingress_engine(
        settings.effective_database_url,
        application_name=f"{settings.database_application_name}-ingress",
        pgbouncer=settings.database_pgbouncer,
        pool_size=settings.ingress_database_pool_size,
    )
    stack.push_async_callback(ingress_engine.dispose)
    writer = UpdateWriter(ingress_engine)
    writer.start()
    stack.push_async_callback(writer.stop)
    directory = ConnectionDirectory(ingress_engine, vault)
    invalidator = DirectoryInvalidator(directory, redis)
    invalidator.start()
    stack.push_async_callback(invalidator.stop)
    ingress = WebhookIngress(
        settings=settings,
        vault=vault,
        directory=directory,
        writer=writer,
        auth_limiter=CachedPeek(limiter, ttl=1.0),
        update_limiter=update_limiter,
    )
    return ingress, invalidator, limiter


@asynccontextmanager
async def open_api_runtime(
    settings: Settings, *, keyring: Keyring | None = None
) -> AsyncIterator[ApiRuntime]:
    """The HTTP server's resources; `keyring`, if the caller has loaded it already
    (loading it again would repeat its warnings)."""
    # The keyring first: a missing or malformed keyring must stop start-up
    # before anything else is opened.
    vault = Vault(keyring if keyring is not None else load_keyring(settings))
    async with AsyncExitStack() as stack:
        engine = _engine(stack, settings, "api")
        redis = _redis(stack, settings, "api")
        telegram = _telegram(stack, settings)
        ingress, invalidator, limiter = _ingress(stack, settings, vault, redis)
        yield ApiRuntime(
            settings=settings,
            engine=engine,
            session_factory=create_session_factory(engine),
            redis=redis,
            vault=vault,
            telegram=telegram,
            ingress=ingress,
            directory=invalidator,
            connections=ConnectionCollaborators(
                settings=settings,
                credentials=ConnectionCredentials(vault),
                telegram=telegram,
                locks=OperationLocks(redis),
                routes=invalidator,
                limiter=limiter,
                on_deleted=cancel_unsent_of_deleted_connection,
            ),
            metrics_access=metrics_access(settings),
            queue_gauges=QueueGauges(engine),
        )


@asynccontextmanager
async def open_worker_runtime(
    settings: Settings, *, keyring: Keyring | None = None
) -> AsyncIterator[WorkerRuntime]:
    """The worker's resources (see the module docstring)."""
    vault = Vault(keyring if keyring is not None else load_keyring(settings))
    async with AsyncExitStack() as stack:
        engine = _engine(stack, settings, "worker")
        redis = _redis(stack, settings, "worker")
        yield WorkerRuntime(
            settings=settings,
            engine=engine,
            redis=redis,
            vault=vault,
            credentials=ConnectionCredentials(vault),
            telegram=_worker_telegram(stack, settings),
            routes=RouteChangePublisher(redis),
            pacer=RedisOutboundPacer(redis) if redis is not None else LocalOutboundPacer(),
        )


_heap_collected = False
_serving = 0
_thresholds_before: tuple[int, int, int] = gc.get_threshold()
# Allocations between two collections of the young generation, while serving.
SERVING_YOUNG_THRESHOLD = 50_000


@contextmanager
def serving_collector() -> Iterator[None]:
    """The garbage collector as a serving process wants it, while it runs.

    What the process allocated at start-up (and keeps as long as it runs) is moved
    out of the collector's sight, so full collections under load stay short
    (otherwise each stalls every request or send in flight for tens of ms). The
    first start in a process collects first, so start-up's garbage is not frozen
    with it. A later start in the same process (the tests start hundreds of apps in
    one) only freezes: a full collection of a large heap costs about 100 ms, and what
    it would free goes back to the collector when the heap is unfrozen on the way out.

    The young generation is collected every `SERVING_YOUNG_THRESHOLD` allocations
    instead of Python's 700: a batch of sends allocates hundreds of objects a message
    (rows, answers, verdicts), nearly all freed by reference counting, and a worker
    spent a sixth of its CPU collecting them again and again (1,300 collections for
    10,000 sends, 0.7 s of 4.5 s); with 50,000 it spends 0.1 s. The garbage cycles
    left for longer are a few MB at most.

    Nested (the API server with its worker inside, `serve --with-worker`), the inner
    one freezes what it added, and only the outermost unfreezes and restores the
    thresholds.
    """
    global _heap_collected, _serving, _thresholds_before
    if not _heap_collected:
        gc.collect()
        _heap_collected = True
    if _serving == 0:
        _thresholds_before = gc.get_threshold()
        gc.set_threshold(SERVING_YOUNG_THRESHOLD, *_thresholds_before[1:])
    gc.freeze()
    _serving += 1
    try:
        yield
    finally:
        _serving -= 1
        if _serving == 0:
            gc.unfreeze()
            gc.set_threshold(*_thresholds_before)


def metrics_access(settings: Settings) -> MetricsAccess:
    return MetricsAccess.for_settings(
        settings.metrics_allowed_networks, production=settings.is_production
    )


def get_api_runtime(request: Request) -> ApiRuntime:
    runtime: ApiRuntime = request.app.state.runtime
    return runtime


ApiRuntimeDep = Annotated[ApiRuntime, Depends(get_api_runtime)]
