"""Which connection a webhook key belongs to, cached in process.

The hot path must not query the database per request, and must never decrypt:
a key is found through its keyed lookup hash (one candidate per vault key, so
lookups keep working during key rotation), and what the request is checked
against is the secret's keyed hash.

Entries live `ttl` seconds. Rotate-secret, token replacement and delete drop the
entry at once in this process and broadcast the drop to the other replicas over
Redis pub/sub (`INVALIDATION_CHANNEL`); the TTL bounds staleness should a
broadcast be missed (e.g. a replica reconnecting to Redis).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from app.connections.repository import find_webhook_route
from app.redis_client import RedisClient, open_pubsub
from app.vault import Vault

logger = structlog.get_logger("app.ingress")

INVALIDATION_CHANNEL = "integrations:connections:invalidate"
MAX_ENTRIES = 50_000
# Unknown keys are remembered apart and evicted oldest first, so a flood of random
# keys can never push the routes of real connections out of the cache.
MAX_UNKNOWN = 10_000


@dataclass(frozen=True, slots=True)
class WebhookRoute:
    """What a verified delivery needs to know about its connection."""

    connection_id: uuid.UUID
    workspace_id: uuid.UUID
    secret_hash: str | None
    previous_secret_hash: str | None
    previous_secret_expires_at: datetime | None


class ConnectionDirectory:
    def __init__(
        self,
        engine: AsyncEngine,
        vault: Vault,
        *,
        ttl: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._engine = engine
        self._vault = vault
        self._ttl = ttl
        self._clock = clock
        # Keyed by a digest of the webhook key, so plaintext keys are not retained.
        self._entries: dict[bytes, tuple[float, WebhookRoute]] = {}
        self._unknown: OrderedDict[bytes, float] = OrderedDict()
        # Bumped by every invalidation: a load that started before one may have
        # read the old row and must not be cached.
        self._generation = 0
        self._loading: dict[bytes, asyncio.Future[WebhookRoute | None]] = {}

    async def lookup(self, key: str) -> WebhookRoute | None:
        """The live connection whose webhook key is `key`, or None.

        One load per key at a time: when an entry expires under load, one request
        reloads it and the others keep using the expired entry meanwhile (or, for a
        key never seen, wait for that one load) instead of all querying at once.
        """
        digest = hashlib.sha256(key.encode()).digest()
        now = self._clock()
        unknown_until = self._unknown.get(digest)
        if unknown_until is not None and unknown_until > now:
            return None
        cached = self._entries.get(digest)
        if cached is not None and cached[0] > now:
            return cached[1]
        loading = self._loading.get(digest)
        if loading is not None:
            if cached is not None:
                return cached[1]
            return await asyncio.shield(loading)
        loading = asyncio.get_running_loop().create_future()
        self._loading[digest] = loading
        generation = self._generation
        try:
            route = await self._load(key)
        except BaseException as exc:
            # Waiting requests get an ordinary error even if this one was cancelled.
            failure = exc if isinstance(exc, Exception) else RuntimeError("lookup interrupted")
            loading.set_exception(failure)
            # Retrieved here so a failure nobody waited for is not reported as lost.
            loading.exception()
            raise
        finally:
            self._loading.pop(digest, None)
        loading.set_result(route)
        if generation == self._generation:
            self._remember(digest, route, now + self._ttl)
        return route

    def _remember(self, digest: bytes, route: WebhookRoute | None, until: float) -> None:
        if route is None:
            self._entries.pop(digest, None)
            self._unknown[digest] = until
            self._unknown.move_to_end(digest)
            while len(self._unknown) > MAX_UNKNOWN:
                self._unknown.popitem(last=False)
            return
        self._unknown.pop(digest, None)
        if len(self._entries) >= MAX_ENTRIES:
            self._entries.clear()
        self._entries[digest] = (until, route)

    async def _load(self, key: str) -> WebhookRoute | None:
        async with self._engine.connect() as connection:
            row = await find_webhook_route(connection, self._vault.lookup_candidates(key))
        if row is None:
            return None
        return WebhookRoute(
            connection_id=row.id,
            workspace_id=row.workspace_id,
            secret_hash=row.webhook_secret_hash,
            previous_secret_hash=row.previous_secret_hash,
            previous_secret_expires_at=row.previous_secret_expires_at,
        )

    def invalidate(self, connection_id: uuid.UUID | None = None) -> None:
        """Forget one connection's entry (or all, with None)."""
        self._generation += 1
        # A load already under way may have read the old row: later requests must
        # start their own rather than join it.
        self._loading.clear()
        # Unknown keys go too: a key may have just become valid.
        self._unknown.clear()
        if connection_id is None:
            self._entries.clear()
            return
        stale = [
            digest
            for digest, (_, route) in self._entries.items()
            if route is not None and route.connection_id == connection_id
        ]
        for digest in stale:
            self._entries.pop(digest, None)


class RouteChangePublisher:
    """Tells every replica's directory that a connection's webhook route changed.

    What a process without a directory of its own uses (the worker): it only
    publishes. Without Redis there are no other replicas to tell.
    """

    def __init__(self, redis: RedisClient | None) -> None:
        self._redis = redis

    async def connection_changed(self, connection_id: uuid.UUID) -> None:
        if self._redis is None:
            return
        try:
            await self._redis.publish(INVALIDATION_CHANNEL, str(connection_id))
        except Exception as exc:
            # The TTL still bounds how long other replicas keep the old entry.
            logger.warning("directory_broadcast_failed", error_type=type(exc).__name__)


class DirectoryInvalidator:
    """Drops directory entries here and, through Redis, in every other replica."""

    def __init__(self, directory: ConnectionDirectory, redis: RedisClient | None) -> None:
        self._directory = directory
        self._redis = redis
        self._publisher = RouteChangePublisher(redis)
        self._listener: asyncio.Task[None] | None = None
        self._stopping = False
        # Set while this replica is subscribed to other replicas' invalidations.
        self.subscribed = asyncio.Event()

    async def connection_changed(self, connection_id: uuid.UUID) -> None:
        self._directory.invalidate(connection_id)
        await self._publisher.connection_changed(connection_id)

    def start(self) -> None:
        if self._redis is not None and self._listener is None:
            self._stopping = False
            self._listener = asyncio.create_task(self._listen(), name="directory-invalidation")

    async def stop(self) -> None:
        """Stop listening. Bounded: redis-py can swallow a cancellation inside its
        reads, so the loop also checks a flag, and stop() waits a few seconds at most."""
        listener, self._listener = self._listener, None
        if listener is None:
            return
        self._stopping = True
        listener.cancel()
        _, pending = await asyncio.wait({listener}, timeout=3.0)
        if pending:
            logger.warning("directory_listener_did_not_stop")

    async def _listen(self) -> None:
        assert self._redis is not None
        while not self._stopping:
            try:
                async with await open_pubsub(self._redis) as pubsub:
                    await pubsub.subscribe(INVALIDATION_CHANNEL)
                    # Whatever changed while we were not listening is unknown.
                    self._directory.invalidate()
                    self.subscribed.set()
                    while not self._stopping:
                        message = await pubsub.get_message(
                            ignore_subscribe_messages=True, timeout=1.0
                        )
                        if message is not None and message.get("type") == "message":
                            self._on_message(message["data"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.subscribed.clear()
                logger.warning("directory_listener_reconnecting", error_type=type(exc).__name__)
                self._directory.invalidate()
                await asyncio.sleep(1.0)

    def _on_message(self, data: object) -> None:
        try:
            connection_id = uuid.UUID(data.decode() if isinstance(data, bytes) else str(data))
        except ValueError:
            return
        self._directory.invalidate(connection_id)
