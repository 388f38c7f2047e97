"""What one stored batch writes to the inbox, on PostgreSQL (one statement, the
records chosen in SQL) and on SQLite (the same choice made in Python)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.db import create_engine
from app.inbox.models import Contact, ConversationMessage
from app.inbox.recording import InboundRecords, RecentlyWritten, record_inbound
from app.ingress.models import TelegramUpdate
from app.ingress.store import (
    IncomingUpdate,
    StorageUnavailable,
    StoreOutcome,
    UpdateWriter,
    is_data_error,
    store_batch,
    store_updates,
)
from app.migrate import upgrade_to_head
from app.telegram.updates import parse_update
from tests.conftest import make_settings, new_workspace, running_app
from tests.connections.helpers import connect_bot
from tests.telegram_double.double import TelegramDouble

SENDER_ID = 4242
WRITER_APP_NAME = "ingress-writer-under-test"


@dataclass
class Target:
    engine: AsyncEngine
    connection_id: uuid.UUID
    workspace_id: uuid.UUID

    def item(self, payload: dict[str, Any]) -> IncomingUpdate:
        return IncomingUpdate(
            connection_id=self.connection_id,
            workspace_id=self.workspace_id,
            parsed=parse_update(payload),
            raw=json.dumps(payload),
            source="webhook",
            received_at=datetime.now(UTC),
        )

    async def store(
        self, payloads: list[dict[str, Any]], recent: RecentlyWritten | None = None
    ) -> tuple[list[StoreOutcome], list[uuid.UUID]]:
        """One batch, in a transaction (as the polling path stores it); returns the
        outcomes and the ids of the contact and conversation rows written."""
        async with self.engine.begin() as connection:
            outcomes, written = await store_batch(
                connection, [self.item(p) for p in payloads], recent=recent
            )
        if recent is not None:
            recent.remember(written, time.monotonic())
        return outcomes, [row_id for row_id, _ in written]

    async def scalar(self, stmt: Any) -> Any:
        async with self.engine.connect() as connection:
            return (await connection.execute(stmt)).scalar_one()

    async def contacts(self) -> list[str | None]:
        async with self.engine.connect() as connection:
            return list((await connection.execute(select(Contact.first_name))).scalars())

    async def messages(self) -> dict[int, tuple[str | None, datetime | None]]:
        async with self.engine.connect() as connection:
            rows = await connection.execute(
                select(
                    ConversationMessage.telegram_message_id,
                    ConversationMessage.text,
                    ConversationMessage.edited_at,
                )
            )
            return {row[0]: (row[1], row[2]) for row in rows}


def message(
    update_id: int,
    message_id: int,
    text: str,
    *,
    first_name: str = "Ada",
    edit_date: int | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "message_id": message_id,
        "date": 1_700_000_000,
        "chat": {"id": SENDER_ID, "type": "private", "first_name": first_name},
        "from": {"id": SENDER_ID, "is_bot": False, "first_name": first_name},
        "text": text,
    }
    if edit_date is None:
        return {"update_id": update_id, "message": body}
    return {"update_id": update_id, "edited_message": {**body, "edit_date": edit_date}}


async def connected_bot(
    url: str, tmp_path: Path, telegram_double: TelegramDouble
) -> tuple[uuid.UUID, uuid.UUID]:
    """A workspace and a connected bot in the database at `url`: (connection, workspace)."""
    settings = make_settings(
        tmp_path, url, redis_url=None, telegram_api_base=telegram_double.base_url
    )
    async with running_app(settings) as (app, client):
        workspace = await new_workspace(app.state.runtime.session_factory)
        _, body = await connect_bot(client, workspace, telegram_double)
    return uuid.UUID(body["id"]), workspace.id


@pytest.fixture(params=["postgresql", "sqlite"])
async def target(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    database_url: str,
    db_session_factory: async_sessionmaker[AsyncSession],
    telegram_double: TelegramDouble,
) -> AsyncIterator[Target]:
    """A connected bot on either backend (PostgreSQL's tables are emptied after)."""
    url = database_url
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'embedded.db'}"
        await asyncio.to_thread(upgrade_to_head, url)
    connection_id, workspace_id = await connected_bot(url, tmp_path, telegram_double)
    engine = create_engine(url)
    try:
        yield Target(engine, connection_id, workspace_id)
    finally:
        await engine.dispose()


@pytest.fixture
async def pg_target(
    tmp_path: Path,
    database_url: str,
    db_session_factory: async_sessionmaker[AsyncSession],
    telegram_double: TelegramDouble,
) -> AsyncIterator[Target]:
    """PostgreSQL only: one pooled connection, named so a test can find its backend."""
    connection_id, workspace_id = await connected_bot(database_url, tmp_path, telegram_double)
    engine = create_engine(
        database_url,
        pool_size=1,
        max_overflow=0,
        pool_pre_ping=False,
        connect_args={"server_settings": {"application_name": WRITER_APP_NAME}},
    )
    try:
        yield Target(engine, connection_id, workspace_id)
    finally:
        await engine.dispose()


async def test_a_batch_of_new_and_duplicate_updates_writes_only_the_new_ones_records(
    target: Target,
) -> None:
    await target.store([message(1, 10, "first")])
    # The redelivery of update 1 differs (as no real one would) and comes last:
    # were its records written, the contact and message 10 would show it.
    outcomes, _ = await target.store(
        [
            message(1, 10, "first"),
            message(2, 11, "second", first_name="Ada L."),
            message(1, 10, "tampered", first_name="Mallory"),
        ]
    )
    assert outcomes == [StoreOutcome.duplicate, StoreOutcome.stored, StoreOutcome.duplicate]
    assert await target.scalar(select(func.count()).select_from(TelegramUpdate)) == 2
    assert await target.contacts() == ["Ada L."]
    assert {k: v[0] for k, v in (await target.messages()).items()} == {10: "first", 11: "second"}


async def test_only_duplicates_write_nothing_and_report_no_rows_written(target: Target) -> None:
    recent = RecentlyWritten()
    _, written = await target.store([message(1, 10, "first")], recent)
    assert len(written) == 2  # the contact and the conversation
    outcomes, written = await target.store([message(1, 10, "tampered", first_name="Mallory")])
    assert outcomes == [StoreOutcome.duplicate]
    assert written == []
    assert await target.contacts() == ["Ada"]
    assert (await target.messages())[10][0] == "first"


@pytest.mark.parametrize("edit_first", [False, True])
async def test_an_edit_and_its_original_in_one_batch_keep_the_edit(
    target: Target, edit_first: bool
) -> None:
    batch = [message(5, 10, "original"), message(6, 10, "edited", edit_date=1_700_000_100)]
    if edit_first:
        batch.reverse()
    outcomes, _ = await target.store(batch)
    assert outcomes == [StoreOutcome.stored, StoreOutcome.stored]
    text, edited_at = (await target.messages())[10]
    assert text == "edited"
    assert edited_at == datetime.fromtimestamp(1_700_000_100, UTC)


async def test_the_write_cache_is_asked_about_the_row_that_wins_not_every_copy(
    target: Target,
) -> None:
    recent = RecentlyWritten()
    await target.store([message(1, 10, "a")], recent)
    _, written = await target.store([message(2, 11, "b")], recent)
    assert written == []  # unchanged and just written: skipped
    # The sender's last update in the batch is as the cache has it, so nothing is
    # written, although an earlier update of the batch differs from the cache.
    _, written = await target.store(
        [message(3, 12, "c", first_name="Grace"), message(4, 13, "d")], recent
    )
    assert written == []
    assert await target.contacts() == ["Ada"]
    # The last one differs: it is written, whatever came before it.
    _, written = await target.store(
        [message(5, 14, "e"), message(6, 15, "f", first_name="Grace")], recent
    )
    assert len(written) == 2
    assert await target.contacts() == ["Grace"]
    assert len(await target.messages()) == 6


async def test_records_are_replayable_from_the_stored_updates(target: Target) -> None:
    items = [target.item(message(1, 10, "first")), target.item(message(2, 11, "second"))]
    async with target.engine.begin() as connection:
        await store_updates(connection, items, derive=False)
    assert await target.messages() == {}
    keys = {(item.connection_id, item.parsed.update_id) for item in items}
    for _ in range(2):  # twice: a replay of a replay changes nothing
        async with target.engine.begin() as connection:
            await record_inbound(connection, InboundRecords.of(items), keys)
    assert {k: v[0] for k, v in (await target.messages()).items()} == {10: "first", 11: "second"}
    assert await target.contacts() == ["Ada"]


async def test_the_group_commit_absorbs_duplicates_within_and_across_batches(
    target: Target,
) -> None:
    writer = UpdateWriter(target.engine, writers=2)
    writer.start()
    try:
        payloads = [message(n % 20, n % 20, f"m{n % 20}") for n in range(60)]
        outcomes = await asyncio.gather(*(writer.submit(target.item(p)) for p in payloads))
    finally:
        await writer.stop()
    assert outcomes.count(StoreOutcome.stored) == 20
    assert await target.scalar(select(func.count()).select_from(TelegramUpdate)) == 20
    assert len(await target.messages()) == 20
    assert await target.contacts() == ["Ada"]


async def test_a_connection_the_database_closed_fails_one_batch_and_is_replaced(
    pg_target: Target, db_engine: AsyncEngine
) -> None:
    writer = UpdateWriter(pg_target.engine)
    writer.start()
    try:
        assert await writer.submit(pg_target.item(message(1, 10, "a"))) is StoreOutcome.stored
        async with db_engine.connect() as admin:
            ended = await admin.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE application_name = :name"
                ),
                {"name": WRITER_APP_NAME},
            )
            assert ended.scalar_one() is True
        with pytest.raises(StorageUnavailable):
            await writer.submit(pg_target.item(message(2, 11, "b")))
        # The pool's only connection was invalidated: the next batch gets a new one.
        assert await writer.submit(pg_target.item(message(2, 11, "b"))) is StoreOutcome.stored
    finally:
        await writer.stop()
    assert len(await pg_target.messages()) == 2


async def test_a_request_waits_no_longer_than_the_submit_timeout(
    pg_target: Target, db_engine: AsyncEngine
) -> None:
    writer = UpdateWriter(pg_target.engine, submit_timeout=0.2)
    writer.start()
    try:
        async with db_engine.connect() as holder:
            # An uncommitted insert of the same update: the writer's statement
            # waits on it (up to the lock timeout), the request does not.
            await holder.execute(
                text(
                    "INSERT INTO telegram_updates (id, workspace_id, connection_id, update_id,"
                    " kind, source, payload, received_at)"
                    " VALUES (gen_random_uuid(), :ws, :conn, 1, 'message', 'webhook', '{}', now())"
                ),
                {"ws": pg_target.workspace_id, "conn": pg_target.connection_id},
            )
            with pytest.raises(StorageUnavailable):
                await writer.submit(pg_target.item(message(1, 10, "a")))
            await holder.rollback()
        # The batch went on once the lock was released; the redelivery is absorbed
        # or stored, never lost.
        outcome = await writer.submit(pg_target.item(message(1, 10, "a")))
        assert outcome in (StoreOutcome.stored, StoreOutcome.duplicate)
    finally:
        await writer.stop()
    assert await pg_target.scalar(select(func.count()).select_from(TelegramUpdate)) == 1
    assert (await pg_target.messages())[10][0] == "a"


async def test_errors_from_the_driver_itself_are_classified_by_sqlstate(
    database_url: str,
) -> None:
    driver = await asyncpg.connect(
        make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)
    )
    try:
        with pytest.raises(asyncpg.PostgresError) as bad_data:
            await driver.fetch("SELECT CAST('x' AS integer)")
        await driver.execute("SET statement_timeout = '10ms'")
        with pytest.raises(asyncpg.QueryCanceledError) as canceled:
            await driver.fetch("SELECT pg_sleep(1)")
    finally:
        await driver.close()
    assert is_data_error(bad_data.value)
    assert not is_data_error(canceled.value)
