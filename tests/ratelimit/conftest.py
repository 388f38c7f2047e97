"""Fixtures for the rate-limit tests.

The shared Redis is this test process's database (TEST_REDIS_URL, as
tests/conftest.py gives each process its own): every test gets its own random
key prefix, deletes only its own keys, and never flushes anything. Tests that count commands or
restart Redis use a private `redis-server` instead.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from app.ratelimit.redis_gcra import GCRA_SCRIPT
from tests.ratelimit._support import (
    REDIS_SERVER,
    SHARED_REDIS_URL,
    FakeClock,
    RedisServer,
    free_port,
)


@pytest.fixture
def key_prefix() -> str:
    return f"test-rl-{uuid.uuid4().hex}"


@pytest.fixture
async def redis_client(key_prefix: str) -> AsyncIterator[Redis]:
    """A client of the shared Redis; this test's keys are removed afterwards."""
    client = Redis.from_url(SHARED_REDIS_URL, socket_timeout=5, socket_connect_timeout=5)
    yield client
    keys = [key async for key in client.scan_iter(match=f"{key_prefix}:*", count=1000)]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="session")
def private_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server only these tests talk to, so command counts are exact."""
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed")
    server = RedisServer(free_port(), tmp_path_factory.mktemp("private-redis"))
    server.start()
    yield server
    server.kill()


@pytest.fixture
def private_redis_url(private_redis: RedisServer) -> str:
    return private_redis.url


@pytest.fixture
async def private_client(private_redis: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(private_redis.url, socket_timeout=5, socket_connect_timeout=5)
    # Connect and load the script now, so that neither the handshake nor a
    # NOSCRIPT retry shows up in a test's command counts.
    await client.script_load(GCRA_SCRIPT)
    yield client
    await client.aclose()


@pytest.fixture
def throwaway_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server for one test, which may kill and restart it."""
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed")
    server = RedisServer(free_port(), tmp_path)
    yield server
    server.kill()
