"""What each process assembles: the API server and the worker, on PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import gc
import uuid
from pathlib import Path

import pytest
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app import runtime
from app.runtime import open_worker_runtime
from tests.conftest import make_settings, running_app
from tests.ingress.test_webhook import post_update
from tests.waiting import eventually


async def application_names(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            text("SELECT application_name FROM pg_stat_activity WHERE datname = current_database()")
        )
        return {row[0] for row in rows}


async def subscribed_clients(redis: Redis, name: str) -> int:
    """Redis connections named `name` that are subscribed to a channel."""
    clients = await redis.client_list()
    return sum(1 for c in clients if c.get("name") == name and int(c.get("sub", 0)) > 0)


async def test_the_api_server_names_its_pools_and_sizes_them_from_settings(
    tmp_path: Path,
    database_url: str,
    db_engine: AsyncEngine,
    db_session_factory: async_sessionmaker[AsyncSession],
    redis_client: Redis,
) -> None:
    name = f"t{uuid.uuid4().hex[:8]}"  # the test's own, whatever else shares Redis
    settings = make_settings(
        tmp_path,
        database_url,
        database_pool_size=3,
        database_application_name=name,
        ingress_database_pool_size=2,
    )
    async with running_app(settings) as (app, client):
        runtime = app.state.runtime
        assert (await client.get("/ready")).status_code == 200
        assert runtime.engine.pool.size() == 3
        assert f"{name}-api" in await application_names(db_engine)
        # The ingress pool opens with the first webhook's key lookup.
        refused = await post_update(client, "no-such-key", "no-secret", {"update_id": 1})
        assert refused.status_code == 401
        assert f"{name}-ingress" in await application_names(db_engine)
        # The server listens for other replicas' route changes.
        await asyncio.wait_for(runtime.directory.subscribed.wait(), 10)
        assert await subscribed_clients(redis_client, f"{name}-api") == 1

    async def closed() -> bool:
        return f"{name}-api" not in await application_names(db_engine)

    await eventually(closed, "the server's connections to close")


async def test_the_worker_opens_one_engine_and_no_ingress_or_listener(
    tmp_path: Path,
    database_url: str,
    db_engine: AsyncEngine,
    db_session_factory: async_sessionmaker[AsyncSession],
    redis_client: Redis,
) -> None:
    name = f"t{uuid.uuid4().hex[:8]}"
    settings = make_settings(tmp_path, database_url, database_application_name=name)
    async with open_worker_runtime(settings) as runtime:
        async with runtime.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
        names = await application_names(db_engine)
        assert f"{name}-worker" in names
        assert f"{name}-ingress" not in names and f"{name}-api" not in names
        await runtime.routes.connection_changed(uuid.uuid4())  # publishing needs no listener
        assert await subscribed_clients(redis_client, f"{name}-worker") == 0
        assert not hasattr(runtime, "ingress")


def test_the_startup_heap_is_frozen_while_a_process_runs_and_collected_only_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    collections: list[int] = []
    monkeypatch.setattr(runtime.gc, "collect", lambda: collections.append(1) or 0)
    monkeypatch.setattr(runtime, "_heap_collected", False)
    before = gc.get_threshold()
    for _ in range(2):
        with runtime.serving_collector():
            assert gc.get_freeze_count() > 0
            # The young generation is collected far less often while serving.
            assert gc.get_threshold() == (runtime.SERVING_YOUNG_THRESHOLD, *before[1:])
        assert gc.get_freeze_count() == 0
        assert gc.get_threshold() == before

    # A second start in one process (the tests start hundreds) does not collect again.
    assert collections == [1]

    # Nested (the worker inside the API server): the inner one's end leaves the
    # outer's heap frozen.
    with runtime.serving_collector():
        with runtime.serving_collector():
            pass
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold()[0] == runtime.SERVING_YOUNG_THRESHOLD
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == before
