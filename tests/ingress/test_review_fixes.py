"""Failure modes found in review: each a behaviour the service must keep."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.inbox.models import ConversationMessage
from app.ingress.models import TelegramUpdate
from app.ingress.store import IncomingUpdate, StoreOutcome, UpdateWriter, is_data_error
from app.locks import OperationInProgress, OperationLocks
from app.telegram.updates import parse_update
from tests.conftest import TEST_REDIS_URL, WorkspaceFixture, make_settings, running_app
from tests.connections.helpers import connect_bot, webhook_credentials
from tests.ingress.test_webhook import post_update
from tests.telegram_double.double import TelegramDouble
from tests.telegram_double.fixtures import load_update


async def test_a_lone_update_the_database_refuses_is_kept_raw_not_refused_forever(
    db_engine: AsyncEngine,
    app_client: httpx.AsyncClient,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    db_session_factory: async_sessionmaker[AsyncSession],
) -> None:
    _, body = await connect_bot(app_client, workspace, telegram_double)
    payload = load_update("01_message")
    parsed = parse_update(payload)
    assert parsed.message is not None
    bad = dataclasses.replace(parsed, message=dataclasses.replace(parsed.message, message_id=2**70))
    writer = UpdateWriter(db_engine, writers=1)
    writer.start()
    try:
        outcome = await writer.submit(
            IncomingUpdate(
                connection_id=uuid.UUID(body["id"]),
                workspace_id=workspace.id,
                parsed=bad,
                raw=json.dumps(payload),
                source="webhook",
                received_at=datetime.now(UTC),
            )
        )
    finally:
        await writer.stop()
    assert outcome is StoreOutcome.stored
    async with db_session_factory() as session:
        assert len((await session.execute(select(TelegramUpdate))).all()) == 1
        assert (await session.execute(select(ConversationMessage))).first() is None


async def test_lock_timeouts_are_the_databases_state_not_bad_data(
    db_engine: AsyncEngine, workspace: WorkspaceFixture
) -> None:
    async with db_engine.connect() as holder, db_engine.connect() as waiter:
        await holder.execute(text("SELECT 1 FROM workspaces FOR UPDATE"))
        await waiter.execute(text("SET lock_timeout = '50ms'"))
        with pytest.raises(DBAPIError) as timed_out:
            await waiter.execute(text("UPDATE workspaces SET name = name"))
        await waiter.rollback()
        with pytest.raises(DBAPIError) as bad_data:
            await waiter.execute(text("SELECT CAST('x' AS integer)"))
        await holder.rollback()
    assert not is_data_error(timed_out.value)
    assert is_data_error(bad_data.value)


async def test_a_second_rotation_waits_until_the_first_has_reached_telegram(
    app_client: httpx.AsyncClient, workspace: WorkspaceFixture, telegram_double: TelegramDouble
) -> None:
    telegram_double.enforce_set_webhook_rate_limit = False
    bot, body = await connect_bot(app_client, workspace, telegram_double)
    base = f"/api/v1/connections/{body['id']}"
    telegram_double.fail_next("setWebhook", status=500)
    first = await app_client.post(f"{base}/rotate-secret", headers=workspace.headers())
    assert first.status_code == 502
    second = await app_client.post(f"{base}/rotate-secret", headers=workspace.headers())
    assert second.status_code == 409
    assert second.json()["error"]["code"] == "rotation_unsettled"
    health = (await app_client.get(f"{base}/health", headers=workspace.headers())).json()
    assert health["verdict"] == "action_required" and "resync" in health["hint"]
    assert (await app_client.post(f"{base}/resync", headers=workspace.headers())).status_code == 200
    third = await app_client.post(f"{base}/rotate-secret", headers=workspace.headers())
    assert third.status_code == 200
    health = (await app_client.get(f"{base}/health", headers=workspace.headers())).json()
    assert health["verdict"] == "healthy"
    assert webhook_credentials(telegram_double, bot)[1]


async def test_an_older_edit_never_replaces_a_newer_one(
    app_client: httpx.AsyncClient,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    db_session_factory: async_sessionmaker[AsyncSession],
) -> None:
    bot, _ = await connect_bot(app_client, workspace, telegram_double)
    key, secret = webhook_credentials(telegram_double, bot)
    original = load_update("01_message")
    message = original["message"]

    def edit(update_offset: int, text_value: str, edit_date: int) -> dict[str, Any]:
        return {
            "update_id": original["update_id"] + update_offset,
            "edited_message": {**message, "text": text_value, "edit_date": edit_date},
        }

    newer, older = (
        edit(2, "edit two", message["date"] + 20),
        edit(1, "edit one", message["date"] + 10),
    )
    # Deliveries run in parallel: the newer edit and the original land together...
    results = await asyncio.gather(
        post_update(app_client, key, secret, newer),
        post_update(app_client, key, secret, original),
    )
    assert [r.status_code for r in results] == [200, 200]
    # ...and the older edit arrives last.
    assert (await post_update(app_client, key, secret, older)).status_code == 200
    async with db_session_factory() as session:
        (row,) = (await session.execute(select(ConversationMessage))).scalars().all()
    assert row.text == "edit two"


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


async def test_ipv6_failures_are_counted_per_64_and_webhook_answers_carry_a_request_id(
    tmp_path: Path,
    database_url: str,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    redis_client: Any,
) -> None:
    settings = make_settings(
        tmp_path,
        database_url,
        telegram_api_base=telegram_double.base_url,
        ingress_failed_auth_per_minute=2,
    )
    sample = load_update("01_message")
    statuses = []
    for host in range(1, 5):
        async with running_app(settings, client_address=f"2001:db8:1:2::{host}") as (_, client):
            response = await post_update(client, "junk", "x", sample)
            statuses.append(response.status_code)
            assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"])
    assert statuses == [401, 401, 429, 429]


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
    async with running_app(settings) as (_a, replica_a), running_app(settings) as (_b, replica_b):
        bot, body = await connect_bot(replica_a, workspace, telegram_double)
        key, secret = webhook_credentials(telegram_double, bot)
        assert (await post_update(replica_b, key, secret, base)).status_code == 200  # cached in B
        await asyncio.sleep(0.2)  # both listeners subscribed
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
