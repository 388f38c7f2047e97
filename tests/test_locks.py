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
    locks = OperationLocks(redis, prefix=f"test-lock-{uuid.uuid4().hex}", ttl_ms=300)
    try:
        async with locks.hold("connection:x"):
            await asyncio.sleep(1.0)  # three times the lock's time to live
            with pytest.raises(OperationInProgress):
                async with locks.hold("connection:x"):
                    pass
        async with locks.hold("connection:x"):
            pass  # released at the end of the first
    finally:
        await redis.aclose()
