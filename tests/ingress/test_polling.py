"""Long-polling ingestion (SPEC section 4): the worker's pollers against real PostgreSQL
and the Bot API double.

Every wait is a bounded loop on a condition (`eventually`), never a fixed sleep
compared with a duration: the bound only keeps a broken build from hanging.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import uuid
from collections.abc import AsyncIterator, Awaitable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog.testing
from pydantic import SecretStr
from redis.asyncio import Redis
from sqlalchemy import func, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from app.config import Settings
from app.connections.models import TelegramConnection
from app.connections.registration import ALLOWED_UPDATES
from app.connections.status import (
    CONFLICT_OTHER_CONSUMER_HINT,
    CONFLICT_WEBHOOK_HINT,
    CREDENTIALS_UNREADABLE_HINT,
    UNAUTHORIZED_HINT,
)
from app.db import utcnow
from app.inbox.models import Contact, Conversation, ConversationMessage
from app.ingress.models import TelegramUpdate
from app.ingress.polling import Backoff, RetryDelays
from app.ingress.store import IncomingUpdate, store_updates
from app.telegram.updates import parse_update
from app.worker import run_worker
from tests.conftest import WorkspaceFixture, make_settings, running_app
from tests.connections.helpers import connect_bot
from tests.telegram_double.double import TelegramDouble
from tests.telegram_double.state import FakeBot
from tests.waiting import eventually

FAST = RetryDelays(conflict=0.05, token_rejected=0.05, backoff_base=0.01, backoff_cap=0.05)
# Long enough that a test can look at the state a failure leaves behind.
PATIENT = RetryDelays(conflict=60.0, token_rejected=60.0, backoff_base=0.01, backoff_cap=0.05)
WAIT_LIMIT = 20.0
_message_ids = itertools.count(1)


# -- helpers -------------------------------------------------------------------


def text_message(chat_id: int, text_: str, first_name: str = "Ann") -> dict[str, Any]:
    """A private-chat text message update without update_id (the double assigns one)."""
    person = {"id": chat_id, "first_name": first_name}
    return {
        "message": {
            "message_id": next(_message_ids),
            "date": 1_700_000_000,
            "chat": {**person, "type": "private"},
            "from": {**person, "is_bot": False},
            "text": text_,
        }
    }


def queue(double: TelegramDouble, bot: FakeBot, count: int, chat_id: int = 501) -> list[int]:
    return [double.queue_update(bot, text_message(chat_id, f"hello {n}")) for n in range(count)]


class Worker:
    """`run_worker` in a task with test-sized timeouts, stopped through its event."""

    def __init__(self, settings: Settings, **options: Any) -> None:
        self.event = asyncio.Event()
        options = {"refresh_interval": 0.1, "long_poll_timeout": 1, **options}
        self.task = asyncio.create_task(run_worker(settings, stop=self.event, **options))

    async def stop(self) -> None:
        self.event.set()
        await asyncio.wait_for(self.task, WAIT_LIMIT)


@contextlib.asynccontextmanager
async def running_worker(settings: Settings, **options: Any) -> AsyncIterator[Worker]:
    worker = Worker(settings, **options)
    try:
        yield worker
    finally:
        if not worker.task.done():
            await worker.stop()


async def connect_polling_bots(
    settings: Settings, workspace: WorkspaceFixture, double: TelegramDouble, count: int = 1
) -> list[tuple[FakeBot, uuid.UUID]]:
    """Connect bots through the API (polling mode: no public URL)."""
    connected = []
    async with running_app(settings) as (_app, client):
        for _ in range(count):
            bot, body = await connect_bot(client, workspace, double)
            assert body["mode"] == "polling"
            connected.append((bot, uuid.UUID(body["id"])))
    return connected


async def stored(
    factory: async_sessionmaker[AsyncSession], connection_id: uuid.UUID
) -> list[tuple[int, str]]:
    """(update_id, source) of every stored row of the connection, duplicates included."""
    async with factory() as session:
        rows = await session.execute(
            select(TelegramUpdate.update_id, TelegramUpdate.source)
            .where(TelegramUpdate.connection_id == connection_id)
            .order_by(TelegramUpdate.update_id)
        )
        return [(row.update_id, row.source) for row in rows]


async def stored_ids(
    factory: async_sessionmaker[AsyncSession], connection_id: uuid.UUID
) -> list[int]:
    return [update_id for update_id, _ in await stored(factory, connection_id)]


async def wait_until_stored(
    factory: async_sessionmaker[AsyncSession],
    connection_id: uuid.UUID,
    expected: list[int],
    what: str,
    *,
    exactly: bool = True,
) -> None:
    """Wait until the stored update_ids are `expected`, each once (or include it)."""

    async def check() -> bool:
        ids = await stored_ids(factory, connection_id)
        return ids == sorted(expected) if exactly else set(expected) <= set(ids)

    await eventually(check, what)


async def connection_row(
    factory: async_sessionmaker[AsyncSession], connection_id: uuid.UUID
) -> TelegramConnection:
    async with factory() as session:
        row = await session.get(TelegramConnection, connection_id)
        assert row is not None
        return row


async def set_columns(
    factory: async_sessionmaker[AsyncSession], connection_id: uuid.UUID, **values: Any
) -> None:
    async with factory() as session:
        await session.execute(
            update(TelegramConnection)
            .where(TelegramConnection.id == connection_id)
            .values(**values)
        )
        await session.commit()


def poll_statuses(double: TelegramDouble, bot: FakeBot) -> list[int | None]:
    return [call.status for call in double.calls_for("getUpdates", bot=bot)]


@pytest.fixture
def polling_settings(
    tmp_path: Path,
    database_url: str,
    telegram_double: TelegramDouble,
    db_session_factory: async_sessionmaker[AsyncSession],
    redis_client: Redis,
) -> Settings:
    """Settings without a public URL (so polling mode), on a clean database and Redis."""
    return make_settings(
        tmp_path, database_url, public_base_url=None, telegram_api_base=telegram_double.base_url
    )


# -- storing and confirming ----------------------------------------------------------


async def test_queued_updates_are_stored_once_with_derived_records_and_confirmed(
    polling_settings: Settings,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    db_session_factory: async_sessionmaker[AsyncSession],
) -> None:
    [(bot, connection_id)] = await connect_polling_bots(
        polling_settings, workspace, telegram_double
    )
    queued = queue(telegram_double, bot, 2, chat_id=501) + queue(
        telegram_double, bot, 1, chat_id=502
    )

    async with running_worker(polling_settings):
        await wait_until_stored(
            db_session_factory, connection_id, queued, "the updates to be stored"
        )
        await eventually(
            lambda: telegram_double.pending_updates(bot) == [], "Telegram to see them confirmed"
        )

    assert await stored(db_session_factory, connection_id) == [(u, "polling") for u in queued]
    async with db_session_factory() as session:
        for model, expected in ((Contact, 2), (Conversation, 2), (ConversationMessage, 3)):
            count = await session.scalar(
                select(func.count()).select_from(model).where(model.connection_id == connection_id)  # type: ignore[attr-defined]
            )
            assert count == expected, model.__name__
    row = await connection_row(db_session_factory, connection_id)
    assert row.polling_offset == max(queued) + 1
    assert row.status == "active" and row.status_hint is None
    # A clean stop hands the lease back.
    assert row.poll_owner is None and row.poll_lease_until is None

    calls = telegram_double.calls_for("getUpdates", bot=bot)
    assert calls[0].params["limit"] == 100
    assert calls[0].params["timeout"] == 1
    assert calls[0].params["allowed_updates"] == list(ALLOWED_UPDATES)
    # The first poll confirmed nothing; a later one carried the stored offset.
    assert "offset" not in calls[0].params
    assert calls[-1].params["offset"] == max(queued) + 1


async def test_a_restart_neither_skips_nor_repeats_an_update(
    polling_settings: Settings,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    db_session_factory: async_sessionmaker[AsyncSession],
) -> None:
    [(bot, connection_id)] = await connect_polling_bots(
        polling_settings, workspace, telegram_double
    )
    first = queue(telegram_double, bot, 3)
    async with running_worker(polling_settings):
        await wait_until_stored(db_session_factory, connection_id, first, "the first batch")
        # Arrives while the worker runs, before the restart.
        first += queue(telegram_double, bot, 2)
        await wait_until_stored(db_session_factory, connection_id, first, "the second batch")

    second = queue(telegram_double, bot, 3)
    async with running_worker(polling_settings):
        await wait_until_stored(
            db_session_factory,
            connection_id,
            first + second,
            "the updates queued while no worker ran",
        )

    ids = await stored_ids(db_session_factory, connection_id)
    assert ids == sorted(first + second)
    assert len(set(ids)) == len(ids) == 8


async def test_a_stop_after_the_store_but_before_the_confirming_call_loses_and_repeats_nothing(
    polling_settings: Settings,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    db_session_factory: async_sessionmaker[AsyncSession],
) -> None:
    [(bot, connection_id)] = await connect_polling_bots(
        polling_settings, workspace, telegram_double
    )
    # One long poll that waits for the batch; the call after it never gets an answer,
    # so the offset that would confirm the batch never reaches Telegram.
    telegram_double.long_poll_cap = 30
    async with running_worker(polling_settings, long_poll_timeout=30) as worker:
        await eventually(
            lambda: telegram_double.calls_for("getUpdates", bot=bot), "the first long poll"
        )
        telegram_double.hang_next("getUpdates", bot=bot)
        batch = queue(telegram_double, bot, 3)
        await wait_until_stored(db_session_factory, connection_id, batch, "the batch to be stored")
        assert (await connection_row(db_session_factory, connection_id)).polling_offset == (
            max(batch) + 1
        )
        # The confirming call reached Telegram (and took the scripted hang)...
        await eventually(
            lambda: len(telegram_double.calls_for("getUpdates", bot=bot)) == 2,
            "the call that would confirm the batch",
        )
        # ...but was never answered: Telegram still holds the whole batch.
        assert [u["update_id"] for u in telegram_double.pending_updates(bot)] == batch
        await worker.stop()

    telegram_double.long_poll_cap = 1
    later = queue(telegram_double, bot, 2)
    async with running_worker(polling_settings):
        await wait_until_stored(
            db_session_factory, connection_id, batch + later, "the updates after the restart"
        )
        await eventually(
            lambda: telegram_double.pending_updates(bot) == [], "Telegram to see all confirmed"
        )
    # The restarted poller resumed at the stored offset: the batch was not fetched again.
    calls = telegram_double.calls_for("getUpdates", bot=bot)
    resumed = [c for c in calls if c.params.get("offset") == max(batch) + 1]
    assert resumed, "the restarted poller did not resume at the stored offset"
    ids = await stored_ids(db_session_factory, connection_id)
    assert ids == sorted(batch + later)


async def _hold(
    blocker: AsyncConnection,
    step: str,
    connection_id: uuid.UUID,
    workspace_id: uuid.UUID,
    update_id: int,
) -> str:
    """Make the poller's store wait at `step` inside its transaction; returns a
    fragment of that statement, to recognise it in pg_stat_activity."""
    if step == "insert":
        # An uncommitted row with the batch's first key: the poller's INSERT waits
        # to see whether it commits.
        await blocker.execute(
            text(
                "INSERT INTO telegram_updates (id, workspace_id, connection_id, update_id, "
                "kind, source, payload, received_at) VALUES (:id, :workspace_id, "
                ":connection_id, :update_id, 'message', 'test', '{}', now())"
            ),
            {
                "id": uuid.uuid4(),
                "workspace_id": workspace_id,
                "connection_id": connection_id,
                "update_id": update_id,
            },
        )
        return "INSERT INTO telegram_updates"
    # The row lock the poller's offset UPDATE needs (inserts referencing the row
    # only need a key-share lock, which this one leaves free).
    await blocker.execute(
        text("SELECT 1 FROM telegram_connections WHERE id = :id FOR NO KEY UPDATE"),
        {"id": connection_id},
    )
    return "UPDATE telegram_connections SET polling_offset"


async def _backends_waiting_on_lock(engine: AsyncEngine, fragment: str) -> list[int]:
    """Process ids of the sessions whose statement containing `fragment` waits for a lock."""
    async with engine.connect() as connection:
        pids = await connection.scalars(
            text(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND query LIKE :pattern"
            ),
            {"pattern": f"%{fragment}%"},
        )
        return list(pids)


async def _no_longer_running(engine: AsyncEngine, pids: list[int]) -> bool:
    async with engine.connect() as connection:
        running = await connection.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(:pids) AND state = 'active'"
            ),
            {"pids": pids},
        )
    return running == 0


@pytest.mark.parametrize("step", ["insert", "offset_update"])
async def test_a_crash_inside_the_store_refetches_the_batch_and_stores_it_once(
    polling_settings: Settings,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    db_engine: AsyncEngine,
    db_session_factory: async_sessionmaker[AsyncSession],
    step: str,
) -> None:
    [(bot, connection_id)] = await connect_polling_bots(
        polling_settings, workspace, telegram_double
    )
    telegram_double.long_poll_cap = 30
    worker = Worker(polling_settings, long_poll_timeout=30)
    await eventually(
        lambda: telegram_double.calls_for("getUpdates", bot=bot), "the first long poll"
    )
    blocker = await db_engine.connect()
    transaction = await blocker.begin()
    waiting: list[int] = []
    try:
        statement = await _hold(blocker, step, connection_id, workspace.id, 1000)
        batch = [
            telegram_double.queue_update(bot, {"update_id": n, **text_message(501, f"m{n}")})
            for n in (1000, 1001, 1002)
        ]

        async def store_waits() -> bool:
            waiting[:] = await _backends_waiting_on_lock(db_engine, statement)
            return bool(waiting)

        await eventually(store_waits, f"the store to wait at {step}")
        # Mid-store, neither the rows nor the offset are visible: they commit together.
        assert await stored_ids(db_session_factory, connection_id) == []
        assert (await connection_row(db_session_factory, connection_id)).polling_offset is None
    finally:
        # The process dies here (or the test failed): its transaction never commits.
        # The lock is let go only once the dead worker's statement is gone, as it
        # would be with the process.
        worker.task.cancel()
        if waiting:
            await eventually(
                lambda: _no_longer_running(db_engine, waiting), "the store to be abandoned"
            )
        await transaction.rollback()
        await blocker.close()
        await asyncio.wait((worker.task,), timeout=WAIT_LIMIT)
    assert worker.task.cancelled()

    assert await stored_ids(db_session_factory, connection_id) == []
    assert (await connection_row(db_session_factory, connection_id)).polling_offset is None
    assert [u["update_id"] for u in telegram_double.pending_updates(bot)] == batch

    telegram_double.long_poll_cap = 1
    async with running_worker(polling_settings):
        await wait_until_stored(
            db_session_factory, connection_id, batch, "the refetched batch to be stored"
        )
        await eventually(
            lambda: telegram_double.pending_updates(bot) == [], "Telegram to see it confirmed"
        )
    assert await stored(db_session_factory, connection_id) == [(u, "polling") for u in batch]


async def test_an_update_already_stored_is_not_stored_again_and_the_offset_moves_past_it(
    polling_settings: Settings,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    db_engine: AsyncEngine,
    db_session_factory: async_sessionmaker[AsyncSession],
) -> None:
    [(bot, connection_id)] = await connect_polling_bots(
        polling_settings, workspace, telegram_double
    )
    known, fresh = queue(telegram_double, bot, 2)
    # The first one already arrived another way (say, by webhook before the switch
    # to polling): Telegram's copy must not be stored a second time.
    payload = {"update_id": known, **text_message(501, "hello 0")}
    async with db_engine.begin() as connection:
        await store_updates(
            connection,
            [
                IncomingUpdate(
                    connection_id=connection_id,
                    workspace_id=workspace.id,
                    parsed=parse_update(payload),
                    raw=json.dumps(payload),
                    source="webhook",
                    received_at=utcnow(),
                )
            ],
        )

    async with running_worker(polling_settings):
        await wait_until_stored(
            db_session_factory, connection_id, [known, fresh], "the new update to be stored"
        )
        await eventually(
            lambda: telegram_double.pending_updates(bot) == [], "Telegram to see both confirmed"
        )
    assert await stored(db_session_factory, connection_id) == [
        (known, "webhook"),
        (fresh, "polling"),
    ]
    assert (await connection_row(db_session_factory, connection_id)).polling_offset == fresh + 1


async def test_an_update_without_a_valid_update_id_is_skipped_and_does_not_block_the_bot(
    polling_settings: Settings,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    db_session_factory: async_sessionmaker[AsyncSession],
) -> None:
    [(bot, connection_id)] = await connect_polling_bots(
        polling_settings, workspace, telegram_double
    )
    telegram_double.queue_update(bot, {"update_id": -1, **text_message(501, "broken")})
    valid = queue(telegram_double, bot, 2)

    async with running_worker(polling_settings):
        await wait_until_stored(
            db_session_factory, connection_id, valid, "the valid updates to be stored"
        )
        await eventually(
            lambda: telegram_double.pending_updates(bot) == [], "Telegram to see all confirmed"
        )
    assert (await connection_row(db_session_factory, connection_id)).polling_offset == (
        max(valid) + 1
    )


async def test_an_update_the_database_refuses_is_kept_raw_and_does_not_block_the_bot(
    polling_settings: Settings,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    db_session_factory: async_sessionmaker[AsyncSession],
) -> None:
    [(bot, connection_id)] = await connect_polling_bots(
        polling_settings, workspace, telegram_double
    )
    before = telegram_double.queue_update(bot, text_message(501, "before"))
    # A business connection id longer than its column: the conversation row is refused.
    refused = telegram_double.queue_update(
        bot,
        {
            "business_message": {
                **text_message(501, "via business")["message"],
                "business_connection_id": "b" * 250,
            }
        },
    )
    after = telegram_double.queue_update(bot, text_message(501, "after"))

    async with running_worker(polling_settings):
        await wait_until_stored(
            db_session_factory, connection_id, [before, refused, after], "the whole batch"
        )
        await eventually(
            lambda: telegram_double.pending_updates(bot) == [], "Telegram to see it confirmed"
        )
    async with db_session_factory() as session:
        texts = await session.scalars(
            select(ConversationMessage.text)
            .where(ConversationMessage.connection_id == connection_id)
            .order_by(ConversationMessage.text)
        )
        # The refused update's neighbours are in the inbox; it is stored raw only.
        assert list(texts) == ["after", "before"]
    assert (await connection_row(db_session_factory, connection_id)).polling_offset == after + 1


# -- failures and the connection's status ---------------------------------------------


async def test_a_webhook_set_elsewhere_is_reported_and_polling_recovers_once_it_is_gone(
    polling_settings: Settings,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    db_session_factory: async_sessionmaker[AsyncSession],
) -> None:
    [(bot, connection_id)] = await connect_polling_bots(
        polling_settings, workspace, telegram_double
    )
    telegram_double.set_webhook_url(bot, "https://other-app.example.net/hook")

    async def status() -> tuple[str, str | None]:
        row = await connection_row(db_session_factory, connection_id)
        return row.status, row.status_hint

    async with running_worker(polling_settings, retry_delays=FAST):
        await eventually(
            lambda: _is(status(), ("action_required", CONFLICT_WEBHOOK_HINT)),
            "the conflict to be reported",
        )
        assert 409 in poll_statuses(telegram_double, bot)
        assert "Resync" in ((await status())[1] or "")

        telegram_double.set_webhook_url(bot, "")
        update_id = telegram_double.queue_update(bot, text_message(501, "back"))
        await eventually(lambda: _is(status(), ("active", None)), "the status to recover")
        await wait_until_stored(
            db_session_factory, connection_id, [update_id], "the update after recovery"
        )


async def _is(value: Awaitable[Any], expected: Any) -> bool:
    return await value == expected


@pytest.mark.parametrize(
    ("status", "hint", "advice"),
    [
        (409, CONFLICT_OTHER_CONSUMER_HINT, "Stop the other program"),
        (401, UNAUTHORIZED_HINT, "@BotFather"),
        (404, UNAUTHORIZED_HINT, "@BotFather"),
    ],
)
async def test_a_rejected_poll_asks_for_action_and_the_next_success_clears_it(
    polling_settings: Settings,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    db_session_factory: async_sessionmaker[AsyncSession],
    status: int,
    hint: str,
    advice: str,
) -> None:
    [(bot, connection_id)] = await connect_polling_bots(
        polling_settings, workspace, telegram_double
    )
    telegram_double.fail_next("getUpdates", status=status, bot=bot)

    async def reported(expected: tuple[str, str | None]) -> bool:
        row = await connection_row(db_session_factory, connection_id)
        return (row.status, row.status_hint) == expected

    # The long retry delay keeps the state in place while the test looks at it;
    # stopping the worker ends that wait at once.
    async with running_worker(polling_settings, retry_delays=PATIENT):
        await eventually(lambda: reported(("action_required", hint)), "the failure reported")
    assert poll_statuses(telegram_double, bot) == [status]
    assert advice in ((await connection_row(db_session_factory, connection_id)).status_hint or "")

    update_id = telegram_double.queue_update(bot, text_message(501, "hello"))
    async with running_worker(polling_settings, retry_delays=PATIENT):
        await eventually(lambda: reported(("active", None)), "the status to recover")
        await wait_until_stored(
            db_session_factory, connection_id, [update_id], "the update after recovery"
        )


async def test_credentials_the_vault_cannot_open_ask_for_action_and_are_logged_once(
    polling_settings: Settings,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    db_session_factory: async_sessionmaker[AsyncSession],
) -> None:
    """A worker without the key that sealed the token: the operator sees it on the
    connection and in one log line, not in a traceback per retry."""
    [(bot, connection_id)] = await connect_polling_bots(
        polling_settings, workspace, telegram_double
    )
    wrong_keys = polling_settings.model_copy(
        update={"vault_keys": SecretStr("other1:" + "B" * 42 + "Q")}
    )

    async def reported(expected: tuple[str, str | None]) -> bool:
        row = await connection_row(db_session_factory, connection_id)
        return (row.status, row.status_hint) == expected

    with structlog.testing.capture_logs() as logs:
        async with running_worker(wrong_keys, retry_delays=FAST):
            await eventually(
                lambda: reported(("action_required", CREDENTIALS_UNREADABLE_HINT)),
                "the unreadable credentials reported",
            )
            await eventually(
                lambda: sum(e.get("repeated", False) for e in logs) >= 3, "a few retries"
            )
    faults = [e for e in logs if e["event"] == "polling_credentials_unreadable"]
    assert [e["log_level"] for e in faults if not e.get("repeated")] == ["error"]
    assert all(e["log_level"] == "debug" for e in faults if e.get("repeated"))
    assert not any(e.get("exc_info") for e in faults)
    assert telegram_double.calls_for("getUpdates", bot=bot) == []

    # With the right key again, the next cycle polls and clears the fault.
    update_id = telegram_double.queue_update(bot, text_message(501, "hello"))
    async with running_worker(polling_settings, retry_delays=FAST):
        await eventually(lambda: reported(("active", None)), "the status to recover")
        await wait_until_stored(db_session_factory, connection_id, [update_id], "the update")


async def test_transient_failures_are_retried_without_flagging_the_connection(
    polling_settings: Settings,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    db_session_factory: async_sessionmaker[AsyncSession],
) -> None:
    [(bot, connection_id)] = await connect_polling_bots(
        polling_settings, workspace, telegram_double
    )
    before = await connection_row(db_session_factory, connection_id)
    telegram_double.fail_next("getUpdates", status=502, times=2, bot=bot)
    telegram_double.fail_next("getUpdates", status=429, retry_after=1, bot=bot)
    update_id = telegram_double.queue_update(bot, text_message(501, "hello"))

    async with running_worker(polling_settings, retry_delays=FAST):
        await wait_until_stored(
            db_session_factory, connection_id, [update_id], "the update after the failures"
        )
    assert poll_statuses(telegram_double, bot)[:4] == [502, 502, 429, 200]
    after = await connection_row(db_session_factory, connection_id)
    assert (after.status, after.status_hint) == ("active", None)
    # No status write happened at all.
    assert after.updated_at == before.updated_at


# -- one poller per bot -------------------------------------------------------------


async def test_two_workers_never_poll_the_same_bot_at_once_and_the_other_takes_over(
    polling_settings: Settings,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    db_session_factory: async_sessionmaker[AsyncSession],
) -> None:
    [(bot, connection_id)] = await connect_polling_bots(
        polling_settings, workspace, telegram_double
    )
    queued: list[int] = []

    async def owner() -> str | None:
        return (await connection_row(db_session_factory, connection_id)).poll_owner

    async def deliver_round() -> None:
        queued.extend(queue(telegram_double, bot, 2))
        await wait_until_stored(db_session_factory, connection_id, queued, "a round of updates")

    workers = {
        name: Worker(polling_settings, worker_id=name) for name in ("replica-a", "replica-b")
    }
    try:
        await deliver_round()
        holder = await owner()
        assert holder in workers
        for _ in range(3):
            await deliver_round()
        assert await owner() == holder
        # Overlapping polls would have ended with 409 Conflict.
        answered = [s for s in poll_statuses(telegram_double, bot) if s is not None]
        assert answered and set(answered) == {200}

        assert holder is not None
        await workers[holder].stop()
        successor = next(name for name in workers if name != holder)
        await eventually(lambda: _is(owner(), successor), "the other worker to take over")
        await deliver_round()
    finally:
        for worker in workers.values():
            if not worker.task.done():
                await worker.stop()
    ids = await stored_ids(db_session_factory, connection_id)
    assert ids == sorted(queued) and len(set(ids)) == 10


async def test_an_expired_lease_is_taken_over_and_a_live_one_is_left_alone(
    polling_settings: Settings,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    db_session_factory: async_sessionmaker[AsyncSession],
) -> None:
    (orphan, orphan_id), (taken, taken_id) = await connect_polling_bots(
        polling_settings, workspace, telegram_double, count=2
    )
    now = utcnow()
    # A replica that crashed a while ago, and one that is alive.
    await set_columns(
        db_session_factory,
        orphan_id,
        poll_owner="crashed-replica",
        poll_lease_until=now - timedelta(minutes=1),
    )
    await set_columns(
        db_session_factory,
        taken_id,
        poll_owner="live-replica",
        poll_lease_until=now + timedelta(hours=1),
    )
    queue(telegram_double, taken, 1)

    async with running_worker(polling_settings, worker_id="replica-new"):
        for _ in range(3):
            batch = queue(telegram_double, orphan, 1)
            await wait_until_stored(
                db_session_factory,
                orphan_id,
                batch,
                "the orphaned connection's updates",
                exactly=False,
            )
        assert (await connection_row(db_session_factory, orphan_id)).poll_owner == "replica-new"
        assert telegram_double.calls_for("getUpdates", bot=taken) == []
    assert await stored_ids(db_session_factory, taken_id) == []
    assert (await connection_row(db_session_factory, taken_id)).poll_owner == "live-replica"


async def test_a_deleted_connection_stops_being_polled(
    polling_settings: Settings,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    db_session_factory: async_sessionmaker[AsyncSession],
) -> None:
    (doomed, doomed_id), (kept, kept_id) = await connect_polling_bots(
        polling_settings, workspace, telegram_double, count=2
    )
    async with running_worker(polling_settings):
        await eventually(
            lambda: telegram_double.calls_for("getUpdates", bot=doomed), "the doomed bot's poll"
        )
        async with running_app(polling_settings) as (_app, client):
            response = await client.delete(
                f"/api/v1/connections/{doomed_id}", headers=workspace.headers()
            )
        assert response.status_code == 200, response.text

        async def released() -> bool:
            return (await connection_row(db_session_factory, doomed_id)).poll_owner is None

        await eventually(released, "the deleted connection's poller to stop")
        polls_after_delete = len(telegram_double.calls_for("getUpdates", bot=doomed))
        unseen = telegram_double.queue_update(doomed, text_message(501, "too late"))
        # The worker keeps cycling: two more rounds for the other bot.
        for _ in range(2):
            batch = queue(telegram_double, kept, 1)
            await wait_until_stored(
                db_session_factory, kept_id, batch, "the other connection's updates", exactly=False
            )
        assert len(telegram_double.calls_for("getUpdates", bot=doomed)) == polls_after_delete
    assert [u["update_id"] for u in telegram_double.pending_updates(doomed)] == [unseen]
    assert unseen not in await stored_ids(db_session_factory, doomed_id)


# -- backoff ---------------------------------------------------------------------------


def test_backoff_doubles_up_to_its_cap_with_jitter_and_starts_over_after_reset() -> None:
    highest = Backoff(1.0, 8.0, rand=lambda: 1.0)
    assert [highest.next_delay() for _ in range(6)] == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    highest.reset()
    assert highest.next_delay() == 1.0

    lowest = Backoff(1.0, 8.0, rand=lambda: 0.0)
    assert [lowest.next_delay() for _ in range(5)] == [0.5, 1.0, 2.0, 4.0, 4.0]
