"""A polite stop (SIGTERM): `serve` answers what is in flight and takes nothing new;
the worker finishes or puts back what it claimed, so nothing waits out a lease."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import httpx
from redis.asyncio import Redis
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.config import Settings
from app.db import utcnow
from app.messages import states
from app.messages.models import MessageStatus, OutboundMessage
from tests.conftest import PUBLIC_BASE_URL, WorkspaceFixture
from tests.messages.test_dispatcher import connect, reaches, request
from tests.messages.test_worker_processes import worker_env
from tests.telegram_double.double import TelegramDouble
from tests.test_pipeline_processes import free_port, wait_healthy
from tests.waiting import eventually


@contextmanager
def process(args: list[str], env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    """An `integrations` process; killed if the test left it running."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "app", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)


async def stopped_politely(proc: subprocess.Popen[str]) -> str:
    """SIGTERM, then the exit: status 0 and no traceback. Returns its stderr."""
    proc.send_signal(signal.SIGTERM)
    _, stderr = await asyncio.to_thread(proc.communicate, timeout=60)
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr, stderr
    return stderr


async def message_row(
    session_factory: async_sessionmaker[AsyncSession], message_id: str
) -> OutboundMessage:
    async with session_factory() as session:
        row = await session.scalar(
            select(OutboundMessage).where(OutboundMessage.id == uuid.UUID(message_id))
        )
    assert row is not None
    return row


async def refuses_connections(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return True
    writer.close()
    return False


async def test_serve_answers_the_request_in_flight_and_refuses_new_connections(
    tmp_path: Path,
    settings: Settings,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    redis_client: Redis,
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = worker_env(tmp_path, settings, PUBLIC_BASE_URL=PUBLIC_BASE_URL)
    bot = telegram_double.add_bot()
    # The connection's getMe gets no answer until the test releases it.
    telegram_double.hang_next("getMe", bot=bot)
    with process(["serve", "--port", str(port)], env) as server:
        await wait_healthy(base)
        async with httpx.AsyncClient(base_url=base, timeout=60) as client:
            in_flight = asyncio.create_task(
                client.post(
                    "/api/v1/connections/telegram",
                    json={"bot_token": bot.token},
                    headers=workspace.headers(),
                )
            )
            await eventually(
                lambda: telegram_double.calls_for("getMe", bot=bot), "the request to reach Telegram"
            )
            server.send_signal(signal.SIGTERM)
            await eventually(lambda: refuses_connections(port), "new connections to be refused")
            assert not in_flight.done()
            assert server.poll() is None
            # Telegram answers at last (the double ends the hang with a 401).
            telegram_double.reset()
            response = await in_flight
        assert response.status_code == 422
        assert response.json()["error"]["code"] == "invalid_bot_token"
        assert response.headers["connection"] == "close"
        _, stderr = await asyncio.to_thread(server.communicate, timeout=60)
        assert server.returncode == 0, stderr
        assert "Traceback" not in stderr


async def test_a_stopped_worker_puts_its_hanging_sends_back_in_the_queue_at_once(
    tmp_path: Path,
    app_client: httpx.AsyncClient,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    settings: Settings,
    db_session_factory: async_sessionmaker[AsyncSession],
) -> None:
    bot, connection_id = await connect(app_client, workspace, telegram_double)
    telegram_double.hang_next("sendMessage", bot=bot, times=2)
    first = await request(app_client, workspace, connection_id, chat_id=501, text="one")
    second = await request(app_client, workspace, connection_id, chat_id=502, text="two")
    # A lease far longer than the test: a message left `sending` would not move again.
    env = worker_env(tmp_path, settings, DISPATCH_LEASE_SECONDS="600", SHUTDOWN_GRACE_SECONDS="1")
    with process(["worker"], env) as worker:
        await eventually(
            lambda: len(telegram_double.calls_for("sendMessage", bot=bot)) == 2,
            "both sends to be in flight",
        )
        assert (await message_row(db_session_factory, first["id"])).status == MessageStatus.sending
        stderr = await stopped_politely(worker)
    assert "outbound_claims_released" in stderr
    for message in (first, second):
        row = await message_row(db_session_factory, message["id"])
        assert row.status == MessageStatus.queued
        assert row.lease_owner is None and row.lease_until is None
        assert row.next_attempt_at is not None and row.next_attempt_at <= utcnow()
        assert row.attempts == 0

    # Another worker sends them now, not 600 seconds from now.
    with process(["worker"], env) as successor:
        sent = [await reaches(app_client, workspace, m["id"], "sent") for m in (first, second)]
        await stopped_politely(successor)
    for message, chat_id in zip(sent, (501, 502), strict=True):
        records = telegram_double.sent_messages(bot, chat_id=chat_id)
        assert message["telegram_message_id"] in [r.message_id for r in records]


async def test_a_stopped_worker_finishes_a_slow_send_before_it_exits(
    tmp_path: Path,
    app_client: httpx.AsyncClient,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    settings: Settings,
    db_session_factory: async_sessionmaker[AsyncSession],
) -> None:
    bot, connection_id = await connect(app_client, workspace, telegram_double)
    telegram_double.delay_next("sendMessage", 5.0, bot=bot)
    message = await request(app_client, workspace, connection_id, chat_id=501, text="slow")
    env = worker_env(tmp_path, settings, DISPATCH_LEASE_SECONDS="600")
    with process(["worker"], env) as worker:
        await eventually(
            lambda: telegram_double.calls_for("sendMessage", bot=bot), "the send to be in flight"
        )
        await stopped_politely(worker)
    row = await message_row(db_session_factory, message["id"])
    assert row.status == MessageStatus.sent
    (record,) = telegram_double.sent_messages(bot)
    assert (record.text, row.telegram_message_id) == ("slow", record.message_id)


async def test_releasing_claims_touches_only_the_stopping_workers_messages(
    app_client: httpx.AsyncClient,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    db_engine: AsyncEngine,
    db_session_factory: async_sessionmaker[AsyncSession],
) -> None:
    _, connection_id = await connect(app_client, workspace, telegram_double)
    ids = [
        (await request(app_client, workspace, connection_id, chat_id=600 + n, text=f"m{n}"))["id"]
        for n in range(4)
    ]
    now = utcnow()
    async with db_engine.begin() as connection:
        claimed = await states.claim(
            connection, owner="stopping", now=now, lease_until=now + timedelta(hours=1), limit=4
        )
        assert len(claimed) == 4
        # Two of them are another worker's (as if it had claimed them).
        mine, theirs = claimed[:2], claimed[2:]
        await connection.execute(
            update(states.MESSAGES)
            .where(states.MESSAGES.c.id.in_([r.id for r in theirs]))
            .values(lease_owner="running")
        )
    later = now + timedelta(seconds=1)
    async with db_engine.begin() as connection:
        assert await states.release_claims(connection, "stopping", later) == 2
    for message_id in ids:
        row = await message_row(db_session_factory, message_id)
        if row.id in {r.id for r in mine}:
            assert (row.status, row.lease_owner, row.next_attempt_at) == (
                MessageStatus.queued,
                None,
                later,
            )
        else:
            assert (row.status, row.lease_owner) == (MessageStatus.sending, "running")
