"""Redis or PostgreSQL going away: 503s (Telegram redelivers), then recovery, nothing lost.

Both use services of their own (a redis-server on a free port, a TCP proxy in
front of PostgreSQL), never the shared ones.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tests.conftest import WorkspaceFixture, make_settings, running_app
from tests.connections.helpers import connect_bot
from tests.faults.services import RedisProcess, TcpProxy
from tests.ingress.helpers import stored_update_ids
from tests.telegram_double.double import TelegramDouble
from tests.telegram_double.fixtures import load_update
from tests.telegram_double.state import FakeBot

# Services stopped and started: nothing else runs beside them (see pyproject markers).
pytestmark = pytest.mark.exclusive


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    redis = RedisProcess(tmp_path)
    redis.start()
    yield redis
    redis.stop()


def numbered(n: int) -> dict[str, object]:
    base = load_update("01_message")
    return {**base, "update_id": 500_000 + n}


async def deliver_until(
    double: TelegramDouble,
    bot: FakeBot,
    client: httpx.AsyncClient,
    start: int,
    wanted: int,
    *,
    attempts: int = 60,
) -> tuple[int, list[int]]:
    """Deliver numbered updates until one is answered `wanted`; returns (next n, statuses)."""
    statuses = []
    n = start
    for _ in range(attempts):
        status = await double.deliver(bot, numbered(n), client=client)
        statuses.append(status)
        n += 1
        if status == wanted:
            return n, statuses
        await asyncio.sleep(0.1)
    raise AssertionError(f"never answered {wanted}: {statuses}")


async def test_redis_stopped_is_503_and_after_restart_nothing_is_lost(
    tmp_path: Path,
    database_url: str,
    own_redis: RedisProcess,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    db_session_factory: async_sessionmaker[AsyncSession],
) -> None:
    settings = make_settings(
        tmp_path, database_url, redis_url=own_redis.url, telegram_api_base=telegram_double.base_url
    )
    async with running_app(settings) as (_app, client):
        bot, _ = await connect_bot(client, workspace, telegram_double)
        assert await telegram_double.deliver(bot, numbered(0), client=client) == 200

        own_redis.stop()
        # Decisions cached in process (at most ~1 s old) may still admit a few.
        next_n, statuses = await deliver_until(telegram_double, bot, client, 1, 503)
        ready = await client.get("/ready")
        assert ready.status_code == 503 and ready.json()["checks"]["redis"] == "unavailable"

        own_redis.start()
        for _ in range(50):
            redelivered = await telegram_double.redeliver_pending(bot, client=client)
            if all(status == 200 for status in redelivered):
                break
            await asyncio.sleep(0.1)
        assert telegram_double.pending_updates(bot) == []

    expected = list(range(500_000, 500_000 + next_n))
    assert await stored_update_ids(db_session_factory) == expected
    assert 503 in statuses


@pytest.fixture
async def database_proxy(database_url: str) -> AsyncIterator[tuple[TcpProxy, str]]:
    url = make_url(database_url)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    await proxy.start()
    proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    yield proxy, proxied
    await proxy.cut()


async def test_database_unreachable_is_503_and_after_recovery_nothing_is_lost(
    tmp_path: Path,
    database_proxy: tuple[TcpProxy, str],
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    redis_client: object,
    db_session_factory: async_sessionmaker[AsyncSession],
) -> None:
    proxy, proxied_url = database_proxy
    settings = make_settings(tmp_path, proxied_url, telegram_api_base=telegram_double.base_url)
    async with running_app(settings) as (_app, client):
        bot, _ = await connect_bot(client, workspace, telegram_double)
        assert await telegram_double.deliver(bot, numbered(0), client=client) == 200

        await proxy.cut()
        next_n, statuses = await deliver_until(telegram_double, bot, client, 1, 503, attempts=5)
        assert statuses == [503]
        # A second one while still down: also refused, not half-stored.
        assert await telegram_double.deliver(bot, numbered(next_n), client=client) == 503
        next_n += 1
        ready = await client.get("/ready")
        assert ready.status_code == 503 and ready.json()["checks"]["database"] == "unavailable"

        await proxy.restore()
        for _ in range(50):
            redelivered = await telegram_double.redeliver_pending(bot, client=client)
            if all(status == 200 for status in redelivered):
                break
            await asyncio.sleep(0.1)
        assert telegram_double.pending_updates(bot) == []

    assert await stored_update_ids(db_session_factory) == list(range(500_000, 500_000 + next_n))
