"""The embedded default's storage path (SQLite), and the connection lookup cache."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import event, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.connections.registration import WEBHOOK_PATH
from app.db import create_engine
from app.inbox.models import Contact, Conversation, ConversationMessage
from app.ingress.directory import ConnectionDirectory
from app.ingress.models import TelegramUpdate
from app.migrate import upgrade_to_head
from app.vault import Vault, parse_keyring
from tests.conftest import (
    TEST_VAULT_KEYS,
    WorkspaceFixture,
    make_settings,
    new_workspace,
    running_app,
)
from tests.connections.helpers import connect_bot, webhook_credentials
from tests.ingress.test_webhook import post_update
from tests.telegram_double.double import TelegramDouble
from tests.telegram_double.fixtures import all_updates


async def test_embedded_sqlite_default_stores_every_update_once(
    tmp_path: Path, telegram_double: TelegramDouble
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'embedded.db'}"
    await asyncio.to_thread(upgrade_to_head, url)
    settings = make_settings(
        tmp_path, url, redis_url=None, telegram_api_base=telegram_double.base_url
    )
    async with running_app(settings) as (app, client):
        workspace = await new_workspace(app.state.runtime.session_factory)
        bot, _ = await connect_bot(client, workspace, telegram_double)
        key, secret = webhook_credentials(telegram_double, bot)
        samples = [sample for _, sample in all_updates()]
        for _round in range(2):
            for sample in samples:
                response = await post_update(client, key, secret, sample)
                assert response.status_code == 200, response.text
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            counts = {
                model.__tablename__: (
                    await connection.execute(select(func.count()).select_from(model))
                ).scalar_one()
                for model in (TelegramUpdate, Contact, Conversation, ConversationMessage)
            }
    finally:
        await engine.dispose()
    assert counts["telegram_updates"] == 45
    assert counts["contacts"] > 0 and counts["conversations"] > 0
    assert counts["conversation_messages"] > 0


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


async def test_other_methods_on_the_webhook_path_get_the_error_shape(
    app_client: httpx.AsyncClient,
) -> None:
    response = await app_client.get(WEBHOOK_PATH, params={"key": "x"})
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"


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
    directory = ConnectionDirectory(db_engine, Vault(parse_keyring(TEST_VAULT_KEYS)))
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
