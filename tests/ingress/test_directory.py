"""The webhook key directory: its cache, single-flight lookups, unknown keys, and
invalidation across replicas."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from app.ingress.directory import ConnectionDirectory
from app.vault import Vault, parse_keyring
from tests.conftest import (
    TEST_VAULT_KEYS,
    WorkspaceFixture,
    make_settings,
    running_app,
)
from tests.connections.helpers import connect_bot, webhook_credentials
from tests.ingress.test_webhook import post_update
from tests.telegram_double.double import TelegramDouble
from tests.telegram_double.fixtures import load_update


async def test_concurrent_lookups_of_one_key_query_the_database_once(
    db_engine: AsyncEngine,
    app_client: httpx.AsyncClient,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
) -> None:
    bot, body = await connect_bot(app_client, workspace, telegram_double)
    key, _ = webhook_credentials(telegram_double, bot)
    directory = ConnectionDirectory(db_engine, Vault(parse_keyring(TEST_VAULT_KEYS)))
    queries: list[str] = []

    def count(*args: Any) -> None:
        if "telegram_connections" in str(args[2]):
            queries.append(args[2])

    event.listen(db_engine.sync_engine, "before_cursor_execute", count)
    try:
        routes = await asyncio.gather(*(directory.lookup(key) for _ in range(20)))
        again = await directory.lookup(key)
        unknown = await directory.lookup("no-such-key")
    finally:
        event.remove(db_engine.sync_engine, "before_cursor_execute", count)
    assert {route.connection_id if route else None for route in routes} == {uuid.UUID(body["id"])}
    assert again == routes[0] and unknown is None
    assert len(queries) == 2  # one for the key (shared by 21 lookups), one for the unknown


async def test_a_flood_of_unknown_keys_never_evicts_a_real_route(
    db_engine: AsyncEngine,
    app_client: httpx.AsyncClient,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    monkeypatch: Any,
) -> None:
    from app.ingress import directory as directory_module

    monkeypatch.setattr(directory_module, "MAX_UNKNOWN", 50)
    bot, body = await connect_bot(app_client, workspace, telegram_double)
    key, _ = webhook_credentials(telegram_double, bot)
    # An hour's lifetime: the route must stay for its own sake, not because the
    # flood of lookups (slow on a busy machine) happened to end within the TTL.
    directory = ConnectionDirectory(db_engine, Vault(parse_keyring(TEST_VAULT_KEYS)), ttl=3600)
    queries: list[str] = []

    def count(*args: Any) -> None:
        queries.append(args[2])

    assert (await directory.lookup(key)) is not None
    event.listen(db_engine.sync_engine, "before_cursor_execute", count)
    try:
        for n in range(500):
            assert await directory.lookup(f"random-{n}") is None
        before = len(queries)
        route = await directory.lookup(key)
    finally:
        event.remove(db_engine.sync_engine, "before_cursor_execute", count)
    assert route is not None and route.connection_id == uuid.UUID(body["id"])
    assert len(queries) == before  # served from the cache, not reloaded


async def test_a_delete_on_one_replica_reaches_the_others_cache_at_once(
    tmp_path: Path,
    database_url: str,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    redis_client: Any,
) -> None:
    """Without the broadcast, replica B would accept the deleted key for its cache's 5 s."""
    settings = make_settings(tmp_path, database_url, telegram_api_base=telegram_double.base_url)
    base = load_update("01_message")
    async with (
        running_app(settings) as (app_a, replica_a),
        running_app(settings) as (app_b, replica_b),
    ):
        bot, body = await connect_bot(replica_a, workspace, telegram_double)
        key, secret = webhook_credentials(telegram_double, bot)
        assert (await post_update(replica_b, key, secret, base)).status_code == 200  # cached in B
        for app in (app_a, app_b):
            await asyncio.wait_for(app.state.runtime.directory.subscribed.wait(), 10)
        deleted = await replica_a.delete(
            f"/api/v1/connections/{body['id']}", headers=workspace.headers()
        )
        assert deleted.status_code == 200
        statuses = []
        for n in range(1, 20):
            later = {**base, "update_id": base["update_id"] + n}
            statuses.append((await post_update(replica_b, key, secret, later)).status_code)
            if statuses[-1] == 401:
                break
            await asyncio.sleep(0.05)
    assert statuses[-1] == 401
    assert len(statuses) < 10  # well inside the 5 s cache lifetime
