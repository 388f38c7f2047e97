"""Ingress under hostile or odd input: what a review of the hot path asked for."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.inbox.models import ConversationMessage
from app.ingress.models import TelegramUpdate
from app.ingress.store import IncomingUpdate, StoreOutcome, UpdateWriter
from app.telegram.updates import parse_update
from tests.conftest import WorkspaceFixture, make_settings, running_app
from tests.connections.helpers import connect_bot, webhook_credentials
from tests.ingress.helpers import stored_update_ids
from tests.ingress.test_webhook import post_update
from tests.telegram_double.double import TelegramDouble
from tests.telegram_double.fixtures import load_update

TELEGRAM_ADDRESS = "149.154.167.50"


async def test_a_junk_key_from_telegrams_addresses_does_not_lock_out_other_bots(
    tmp_path: Path,
    database_url: str,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    redis_client: Any,
    db_session_factory: async_sessionmaker[AsyncSession],
) -> None:
    """Telegram delivers every bot's webhooks from a few shared addresses."""
    settings = make_settings(
        tmp_path,
        database_url,
        telegram_api_base=telegram_double.base_url,
        ingress_failed_auth_per_minute=3,
    )
    sample = load_update("01_message")
    async with running_app(settings, client_address=TELEGRAM_ADDRESS) as (_app, client):
        bot, _ = await connect_bot(client, workspace, telegram_double)
        key, secret = webhook_credentials(telegram_double, bot)
        junk = [(await post_update(client, "junk-key", "x", sample)).status_code for _ in range(5)]
        assert junk[:3] == [401, 401, 401] and junk[3:] == [429, 429]
        # The same address delivering a real bot's update is not refused.
        assert (await post_update(client, key, secret, sample)).status_code == 200
    # Elsewhere, the per-address rule holds as before.
    async with running_app(settings, client_address="198.51.100.20") as (_app, client):
        for _ in range(3):
            assert (await post_update(client, "junk-key", "x", sample)).status_code == 401
        assert (await post_update(client, key, secret, sample)).status_code == 429
    assert await stored_update_ids(db_session_factory) == [sample["update_id"]]


async def test_forwarded_addresses_with_ports_count_as_the_address(
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
        ingress_trusted_proxies=["203.0.113.0/24"],
    )
    sample = load_update("01_message")
    async with running_app(settings) as (_app, client):
        statuses = [
            (
                await post_update(
                    client, "junk", "x", sample, headers={"X-Forwarded-For": f"198.51.100.7:{p}"}
                )
            ).status_code
            for p in range(5000, 5004)
        ]
    assert statuses == [401, 401, 429, 429]


async def test_an_integer_too_long_to_parse_is_400(
    app_client: Any, workspace: WorkspaceFixture, telegram_double: TelegramDouble
) -> None:
    bot, _ = await connect_bot(app_client, workspace, telegram_double)
    key, secret = webhook_credentials(telegram_double, bot)
    body = '{"update_id": 1, "message": {"message_id": ' + "9" * 5000 + "}}"
    response = await post_update(app_client, key, secret, body)
    assert response.status_code == 400


@pytest.mark.parametrize(
    "message_patch",
    [
        {"text": "nul \u0000 inside"},
        {"text": "lone surrogate \ud800"},
        {"date": 300_000_000_000},
    ],
)
async def test_odd_but_valid_json_is_stored_not_refused_forever(
    message_patch: dict[str, Any],
    app_client: Any,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    db_session_factory: async_sessionmaker[AsyncSession],
) -> None:
    bot, _ = await connect_bot(app_client, workspace, telegram_double)
    key, secret = webhook_credentials(telegram_double, bot)
    sample = load_update("01_message")
    odd = {**sample, "message": {**sample["message"], **message_patch}}
    body = json.dumps(odd)  # escapes \u0000 and the lone surrogate
    assert (await post_update(app_client, key, secret, body)).status_code == 200
    async with db_session_factory() as session:
        (message,) = (await session.execute(select(ConversationMessage))).scalars().all()
    assert message.text is not None and "\x00" not in message.text


async def test_a_batch_with_an_update_the_database_refuses_stores_the_rest(
    db_engine: AsyncEngine,
    workspace: WorkspaceFixture,
    app_client: Any,
    telegram_double: TelegramDouble,
    db_session_factory: async_sessionmaker[AsyncSession],
) -> None:
    """One bad row must not fail its batch-mates, nor itself forever."""
    _, body = await connect_bot(app_client, workspace, telegram_double)
    connection_id = uuid.UUID(body["id"])

    def incoming(update_id: int, **message: Any) -> IncomingUpdate:
        sample = load_update("01_message")
        payload = {**sample, "update_id": update_id}
        parsed = parse_update(payload)
        if message:
            assert parsed.message is not None
            parsed = dataclasses.replace(
                parsed, message=dataclasses.replace(parsed.message, **message)
            )
        return IncomingUpdate(
            connection_id=connection_id,
            workspace_id=workspace.id,
            parsed=parsed,
            raw=json.dumps(payload),
            source="webhook",
            received_at=datetime.now(UTC),
        )

    writer = UpdateWriter(db_engine, writers=1)
    writer.start()
    try:
        # A message id beyond BIGINT: the database refuses the derived message row.
        items = [incoming(1), incoming(2, message_id=2**70), incoming(3)]
        outcomes = await asyncio.gather(*(writer.submit(item) for item in items))
    finally:
        await writer.stop()
    assert outcomes == [StoreOutcome.stored] * 3
    async with db_session_factory() as session:
        stored = sorted((await session.execute(select(TelegramUpdate.update_id))).scalars())
        messages = (await session.execute(select(ConversationMessage))).scalars().all()
    assert stored == [1, 2, 3]
    # The refused update is kept raw; the others have their inbox message.
    assert len(messages) == 1  # 1 and 3 share a chat and message id: one inbox row


async def test_a_renamed_sender_is_updated_at_once_despite_the_write_cache(
    app_client: Any,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    db_session_factory: async_sessionmaker[AsyncSession],
) -> None:
    """Unchanged contacts are not rewritten for a few seconds; changed ones always are."""
    from app.inbox.models import Contact

    bot, _ = await connect_bot(app_client, workspace, telegram_double)
    key, secret = webhook_credentials(telegram_double, bot)
    sample = load_update("01_message")
    renamed_from = {**sample["message"]["from"], "username": "renamed_user"}
    second = {
        "update_id": sample["update_id"] + 1,
        "message": {**sample["message"], "message_id": 1, "from": renamed_from},
    }
    third = {**second, "update_id": sample["update_id"] + 2}
    for body in (sample, second, third):
        assert (await post_update(app_client, key, secret, body)).status_code == 200
    async with db_session_factory() as session:
        (contact,) = (await session.execute(select(Contact))).scalars().all()
        messages = (await session.execute(select(ConversationMessage))).scalars().all()
    assert contact.telegram_username == "renamed_user"
    assert {m.sender_contact_id for m in messages} == {contact.id}
    assert len(messages) == 2
