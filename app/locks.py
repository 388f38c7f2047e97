"""Serialising changes to one resource across every replica.

Changes to a connection talk to Telegram between database writes (setWebhook,
deleteWebhook), so a database row lock cannot cover them without holding a
transaction open across network calls, and two interleaved changes can leave
Telegram and the database disagreeing (e.g. a rotated secret that Telegram never
got). `OperationLocks.hold(name)` admits one holder at a time; a second caller is
told at once (409 `operation_in_progress`) rather than queued behind a slow
Telegram call. With Redis the lock is shared by all replicas (SET NX PX, released
only by its holder); without it (the embedded default) it is per process.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from app.errors import Conflict, ServiceUnavailable
from app.redis_client import RedisClient

# The lock expires by itself this long after its holder dies; while the holder
# lives it is renewed every third of that, however long the operation takes.
LOCK_TTL_MS = 30_000

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""


class OperationInProgress(Conflict):
    code = "operation_in_progress"
    default_message = "Another change to this connection is in progress; retry shortly."


class OperationLocks:
    def __init__(
        self, redis: RedisClient | None, *, prefix: str = "lock", ttl_ms: int = LOCK_TTL_MS
    ) -> None:
        self._redis = redis
        self._prefix = prefix
        self._ttl_ms = ttl_ms
        self._local: dict[str, asyncio.Lock] = {}

    @asynccontextmanager
    async def hold(self, name: str) -> AsyncIterator[None]:
        if self._redis is None:
            lock = self._local.setdefault(name, asyncio.Lock())
            if lock.locked():
                raise OperationInProgress()
            async with lock:
                yield
            return
        key = f"{self._prefix}:{{{name}}}"
        token = secrets.token_hex(16)
        try:
            acquired = await self._redis.set(key, token, nx=True, px=self._ttl_ms)
        except Exception:
            raise ServiceUnavailable("Redis is unavailable; try again shortly.") from None
        if not acquired:
            raise OperationInProgress()
        renewal = asyncio.create_task(self._renew(key, token), name=f"lock-renewal:{name}")
        try:
            yield
        finally:
            renewal.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewal
            # If Redis is gone the lock expires by itself.
            with contextlib.suppress(Exception):
                await self._redis.eval(_RELEASE, 1, key, token)

    async def _renew(self, key: str, token: str) -> None:
        assert self._redis is not None
        while True:
            await asyncio.sleep(self._ttl_ms / 3000)
            # A failed renewal is retried on the next tick; the lock has two more
            # thirds of its time to run.
            with contextlib.suppress(Exception):
                await self._redis.eval(_RENEW, 1, key, token, str(self._ttl_ms))
