"""The long-lived resources a process holds: engine, Redis, HTTP client, vault...

`open_runtime(settings)` opens them and closes them in reverse order; the HTTP
server's lifespan, the worker and the command line all use it, so each runs with
the same wiring.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import httpx
import structlog
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.config import Settings
from app.db import create_engine, create_ingress_engine, create_session_factory
from app.ingress.directory import ConnectionDirectory, DirectoryInvalidator
from app.ingress.store import UpdateWriter
from app.ingress.webhook import WebhookIngress
from app.locks import OperationLocks
from app.ratelimit import (
    CachedPeek,
    LeasedRateLimiter,
    LocalRateLimiter,
    RateLimiter,
    RedisRateLimiter,
)
from app.telegram.client import TelegramClient
from app.vault import Keyring, Vault, load_keyring

logger = structlog.get_logger("app.runtime")


@dataclass
class Runtime:
    settings: Settings
    engine: AsyncEngine
    session_factory: async_sessionmaker[AsyncSession]
    redis: Redis | None
    http: httpx.AsyncClient
    vault: Vault
    telegram: TelegramClient
    writer: UpdateWriter
    directory: DirectoryInvalidator
    ingress: WebhookIngress
    locks: OperationLocks
    # Shared limits for API endpoints that cost a Telegram call.
    api_limiter: RateLimiter


def create_redis(url: str) -> Redis:
    # Short timeouts: a request waiting on a dead Redis should fail fast with 503
    # (Telegram redelivers) rather than hold a webhook connection open.
    return Redis.from_url(
        url,
        socket_connect_timeout=1.0,
        socket_timeout=1.0,
        health_check_interval=30,
        decode_responses=False,
    )


@asynccontextmanager
async def open_runtime(
    settings: Settings, *, keyring: Keyring | None = None
) -> AsyncIterator[Runtime]:
    """Open the process's resources; `keyring`, if the caller has loaded it already
    (loading it again would repeat its warnings)."""
    # The keyring first: a missing or malformed keyring must stop start-up
    # before anything else is opened.
    vault = Vault(keyring if keyring is not None else load_keyring(settings))
    async with AsyncExitStack() as stack:
        if settings.database_url is None:
            settings.data_dir.mkdir(parents=True, exist_ok=True)
        engine = create_engine(settings.effective_database_url)
        stack.push_async_callback(engine.dispose)
        redis: Redis | None = None
        if settings.redis_url:
            redis = create_redis(settings.redis_url)
            stack.push_async_callback(redis.aclose)
        else:
            logger.warning(
                "redis_not_configured",
                detail="REDIS_URL is unset: rate limits are kept in process and are not "
                "shared between replicas",
            )
        http = httpx.AsyncClient(
            timeout=httpx.Timeout(settings.telegram_request_timeout, connect=5.0),
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
            follow_redirects=False,
        )
        stack.push_async_callback(http.aclose)

        limiter: RateLimiter
        update_limiter: RateLimiter
        if redis is not None:
            limiter = RedisRateLimiter(redis)
            # Most update decisions are spent from tokens leased in batches: no
            # Redis round trip per webhook request, and never above the limit.
            update_limiter = LeasedRateLimiter(RedisRateLimiter(redis), lease_size=20)
        else:
            limiter = update_limiter = LocalRateLimiter()
        auth_limiter = CachedPeek(limiter, ttl=1.0)

        # Ingress has a pool of its own, so API requests waiting on Telegram can
        # never starve webhook deliveries of database connections, and tight
        # timeouts, so a slow database answers 503 (Telegram redelivers) instead
        # of holding Telegram's connections.
        ingress_engine = create_ingress_engine(settings.effective_database_url)
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
            auth_limiter=auth_limiter,
            update_limiter=update_limiter,
        )
        yield Runtime(
            settings=settings,
            engine=engine,
            session_factory=create_session_factory(engine),
            redis=redis,
            http=http,
            vault=vault,
            telegram=TelegramClient(
                http,
                settings.telegram_api_base,
                request_timeout=settings.telegram_request_timeout,
            ),
            writer=writer,
            directory=invalidator,
            ingress=ingress,
            locks=OperationLocks(redis),
            api_limiter=limiter,
        )
