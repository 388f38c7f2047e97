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

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.db import create_engine
from app.inbox.models import Contact, ConversationMessage
from app.inbox.recording import InboundRecords, RecentlyWritten, record_inbound
from app.ingress.models import TelegramUpdate
from app.ingress.store import IncomingUpdate, StoreOutcome, UpdateWriter, store_batch, store_updates
from app.schema import upgrade_to_head
from app.telegram.updates import parse_update
from tests.conftest import make_settings, new_workspace, running_app
from tests.connections.helpers import connect_bot
from tests.telegram_double.double import TelegramDouble

SENDER_ID = 4242


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


@pytest.fixture(params=["postgresql", "sqlite"])
async def target(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    database_url: str,
    db_session_factory: async_sessionmaker[AsyncSession],
    telegram_double: TelegramDouble,
) -> AsyncIterator[Target]:
    """A connected bot on either backend (PostgreSQL's tables are emptied after)."""
    if request.param == "postgresql":
        url, redis_url = database_url, None
    else:
        url, redis_url = f"sqlite+aiosqlite:///{tmp_path / 'embedded.db'}", None
        await asyncio.to_thread(upgrade_to_head, url)
    settings = make_settings(
        tmp_path, url, redis_url=redis_url, telegram_api_base=telegram_double.base_url
    )
    async with running_app(settings) as (app, client):
        workspace = await new_workspace(app.state.runtime.session_factory)
        _, body = await connect_bot(client, workspace, telegram_double)
    engine = create_engine(url)
    try:
        yield Target(engine, uuid.UUID(body["id"]), workspace.id)
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
