"""Durable storage of updates: group commit, the database refusing data, and the
embedded SQLite default."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.db import create_engine
from app.inbox.models import Contact, Conversation, ConversationMessage
from app.ingress.models import TelegramUpdate
from app.ingress.store import IncomingUpdate, StoreOutcome, UpdateWriter, is_data_error
from app.migrate import upgrade_to_head
from app.telegram.updates import parse_update
from tests.conftest import (
    WorkspaceFixture,
    make_settings,
    new_workspace,
    running_app,
)
from tests.connections.helpers import connect_bot, webhook_credentials
from tests.ingress.test_webhook import post_update
from tests.telegram_double.double import TelegramDouble
from tests.telegram_double.fixtures import all_updates, load_update


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
