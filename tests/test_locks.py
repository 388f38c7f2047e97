"""Per-connection operation locks (Redis, or in process)."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from redis.asyncio import Redis

from app.locks import OperationInProgress, OperationLocks
from tests.conftest import (
    TEST_REDIS_URL,
)


async def test_an_operation_lock_is_renewed_while_it_is_held() -> None:
    redis = Redis.from_url(TEST_REDIS_URL)
    prefix = f"test-lock-{uuid.uuid4().hex}"
    locks = OperationLocks(redis, prefix=prefix, ttl_ms=300)
    loop = asyncio.get_running_loop()
    try:
        async with locks.hold("connection:x"):
            # Held for three times its time to live, it never lapses.
            until = loop.time() + 1.0
            while loop.time() < until:
                assert await redis.exists(f"{prefix}:{{connection:x}}") == 1
                await asyncio.sleep(0.05)
            with pytest.raises(OperationInProgress):
                async with locks.hold("connection:x"):
                    pass
        async with locks.hold("connection:x"):
            pass  # released at the end of the first
    finally:
        await redis.aclose()
