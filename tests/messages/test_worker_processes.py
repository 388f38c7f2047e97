"""Dispatching across real `integrations worker` processes on PostgreSQL and Redis."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import httpx
from redis.asyncio import Redis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.messages.models import MessageStatus, OutboundMessage
from tests.conftest import TEST_REDIS_URL, TEST_VAULT_KEYS, WorkspaceFixture
from tests.messages.test_dispatcher import connect, reaches, request
from tests.telegram_double.double import TelegramDouble
from tests.test_pipeline_processes import process_env
from tests.waiting import eventually


def worker_env(tmp_path: Path, settings: Settings, **extra: str) -> dict[str, str]:
    """A fresh shell's environment, pointed at the test database, Redis and double."""
    return process_env(
        tmp_path,
        DATABASE_URL=settings.effective_database_url,
        REDIS_URL=TEST_REDIS_URL,
        VAULT_KEYS=TEST_VAULT_KEYS,
        TELEGRAM_API_BASE=settings.telegram_api_base,
        **extra,
    )


def start_worker(env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "app", "worker"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def test_a_worker_killed_mid_send_leaves_the_message_to_another_after_its_lease(
    tmp_path: Path,
    app_client: httpx.AsyncClient,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    settings: Settings,
    db_session_factory: async_sessionmaker[AsyncSession],
    redis_client: Redis,
) -> None:
    bot, connection_id = await connect(app_client, workspace, telegram_double)
    env = worker_env(tmp_path, settings, DISPATCH_LEASE_SECONDS="2")
    # The first send never gets an answer: the worker is inside it when it dies.
    telegram_double.hang_next("sendMessage", bot=bot)
    message = await request(app_client, workspace, connection_id, chat_id=501, text="survive")
    first = start_worker(env)
    try:
        await eventually(
            lambda: telegram_double.calls_for("sendMessage", bot=bot), "the first worker's send"
        )
        claimed = await reaches(app_client, workspace, message["id"], "sending")
        assert claimed["attempts"] == 0
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        stop(first)
    second = start_worker(env)
    try:
        sent = await reaches(app_client, workspace, message["id"], "sent")
    finally:
        stop(second)
    assert [r.text for r in telegram_double.sent_messages(bot)] == ["survive"]
    assert sent["telegram_message_id"] == telegram_double.sent_messages(bot)[0].message_id


async def test_four_worker_processes_send_each_message_exactly_once(
    tmp_path: Path,
    app_client: httpx.AsyncClient,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    settings: Settings,
    db_session_factory: async_sessionmaker[AsyncSession],
    redis_client: Redis,
) -> None:
    bots = [await connect(app_client, workspace, telegram_double) for _ in range(5)]
    for n in range(500):
        _, connection_id = bots[n % 5]
        await request(app_client, workspace, connection_id, chat_id=2000 + n, text=f"p{n}")

    async def all_sent() -> bool:
        async with db_session_factory() as session:
            statuses = (await session.execute(select(OutboundMessage.status))).scalars().all()
        return all(s == MessageStatus.sent for s in statuses)

    env = worker_env(tmp_path, settings)
    workers = [start_worker(env) for _ in range(4)]
    try:
        await eventually(all_sent, "every message to be sent", limit=120, every=0.2)
    finally:
        for worker in workers:
            stop(worker)
    # Counted at the double: each text once, none missing.
    texts = [r.text for bot, _ in bots for r in telegram_double.sent_messages(bot)]
    assert sorted(texts) == sorted(f"p{n}" for n in range(500))
