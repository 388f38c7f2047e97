"""Outages under real `serve` and `worker` processes: Redis stopped and started, the
PostgreSQL server restarted (both throwaway servers of the test's own), Telegram
failing or hanging. Ingress answers 503 and recovers, dispatch pauses and resumes,
nothing is lost, and the API keeps answering."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db import create_engine, create_session_factory
from app.messages.models import OutboundMessage
from tests.conftest import TEST_REDIS_URL
from tests.deployment import Deployment, deployment
from tests.faults.services import INITDB, PG_CTL, PostgresCluster, RedisProcess
from tests.faults.test_ingress_outages import deliver_until, numbered
from tests.ingress.helpers import stored_update_ids
from tests.replicas.test_replicas import all_sent, statuses, texts_at_double
from tests.telegram_double.double import TelegramDouble
from tests.telegram_double.state import FakeBot
from tests.test_pipeline_processes import run_cli
from tests.waiting import eventually

# Services stopped and started: nothing else runs beside them (see pyproject markers).
pytestmark = pytest.mark.exclusive

MESSAGES = 90  # three seconds of one bot's pace: the outage comes mid-backlog


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    redis = RedisProcess(tmp_path)
    redis.start()
    yield redis
    redis.stop()


@pytest.fixture
async def own_postgres() -> AsyncIterator[tuple[PostgresCluster, async_sessionmaker[AsyncSession]]]:
    if INITDB is None or PG_CTL is None:
        pytest.skip("needs PostgreSQL's initdb and pg_ctl")
    cluster = PostgresCluster()
    try:
        await asyncio.to_thread(cluster.create)
        await asyncio.to_thread(cluster.start)
        engine = create_engine(cluster.url)
        try:
            yield cluster, create_session_factory(engine)
        finally:
            await engine.dispose()
    finally:
        await asyncio.to_thread(cluster.destroy)


async def backlog(service: Deployment, connection_id: str, prefix: str) -> None:
    await service.request_messages(
        [
            {"connection_id": connection_id, "chat_id": 30_000 + n, "text": f"{prefix}{n}"}
            for n in range(MESSAGES)
        ]
    )


async def redeliver_all(double: TelegramDouble, bot: FakeBot, client: httpx.AsyncClient) -> None:
    async def accepted() -> bool:
        return all(status == 200 for status in await double.redeliver_pending(bot, client=client))

    await eventually(accepted, "the refused updates to be accepted on redelivery", every=0.1)
    assert double.pending_updates(bot) == []


async def test_redis_stopped_and_started_under_serve_and_worker_loses_nothing(
    tmp_path: Path,
    own_redis: RedisProcess,
    database_url: str,
    telegram_double: TelegramDouble,
    db_session_factory: async_sessionmaker[AsyncSession],
) -> None:
    with deployment(
        tmp_path, telegram_double, database_url=database_url, redis_url=own_redis.url
    ) as service:
        service.serve()
        await service.healthy()
        bot, connection_id = await service.connect()
        await backlog(service, connection_id, "r")
        worker = service.worker()
        async with service.telegram_side() as side:
            assert await telegram_double.deliver(bot, numbered(0), client=side) == 200
            await eventually(
                lambda: len(telegram_double.sent_messages(bot)) >= 10, "the backlog to start"
            )
            own_redis.stop()
            next_n, _ = await deliver_until(telegram_double, bot, side, 1, 503)
            await eventually(
                lambda: "outbound_pacing_unavailable" in worker.stderr_so_far(),
                "the dispatcher to meet the outage",
            )
            paused_at = len(telegram_double.sent_messages(bot))
            assert paused_at < MESSAGES  # it paused with work left
            async with service.client() as api:
                ready = await api.get("/ready")
            assert ready.status_code == 503 and ready.json()["checks"]["redis"] == "unavailable"

            own_redis.start()
            await redeliver_all(telegram_double, bot, side)
            await eventually(
                lambda: all_sent(db_session_factory, MESSAGES),
                "the backlog to resume",
                limit=60,
                every=0.2,
            )
    assert await stored_update_ids(db_session_factory) == list(range(500_000, 500_000 + next_n))
    # Pacing is decided before a send, so an outage there never sends anything twice.
    assert texts_at_double(telegram_double, [bot]) == Counter(f"r{n}" for n in range(MESSAGES))
    print(f"redis outage: paused at {paused_at}/{MESSAGES} sent, all {next_n} updates stored")


async def test_postgresql_restarted_under_serve_and_worker_loses_nothing(
    tmp_path: Path,
    own_postgres: tuple[PostgresCluster, async_sessionmaker[AsyncSession]],
    telegram_double: TelegramDouble,
    redis_client: Redis,
) -> None:
    cluster, factory = own_postgres
    with deployment(
        tmp_path,
        telegram_double,
        database_url=cluster.url,
        redis_url=TEST_REDIS_URL,
        # Longer than the restart (records are retried while it holds), shorter than
        # the default minute, which a send left unrecorded would wait out.
        DISPATCH_LEASE_SECONDS="10",
    ) as service:
        await asyncio.to_thread(run_cli, "migrate", env=service.env)
        service.serve()
        await service.healthy()
        bot, connection_id = await service.connect()
        await backlog(service, connection_id, "p")
        service.worker()
        async with service.telegram_side() as side:
            assert await telegram_double.deliver(bot, numbered(0), client=side) == 200
            await eventually(
                lambda: len(telegram_double.sent_messages(bot)) >= 10, "the backlog to start"
            )
            # Whatever is not recorded as sent now may be in flight when the server goes.
            unrecorded = {t for t, st in (await statuses(factory)).items() if st != "sent"}
            await asyncio.to_thread(cluster.stop)
            paused_at = len(telegram_double.sent_messages(bot))
            assert paused_at < MESSAGES
            next_n, statuses_seen = await deliver_until(telegram_double, bot, side, 1, 503)
            assert set(statuses_seen) == {503}  # nothing admitted without its database
            async with service.client() as api:
                ready = await api.get("/ready")
            assert ready.status_code == 503 and ready.json()["checks"]["database"] == "unavailable"

            await asyncio.to_thread(cluster.start)
            await redeliver_all(telegram_double, bot, side)
            await eventually(
                lambda: all_sent(factory, MESSAGES), "the backlog to resume", limit=60, every=0.2
            )
    assert await stored_update_ids(factory) == list(range(500_000, 500_000 + next_n))
    sent = texts_at_double(telegram_double, [bot])
    assert set(sent) == {f"p{n}" for n in range(MESSAGES)}  # nothing lost
    # Sends in flight across the restart are recorded once it is back (their worker
    # retries while its lease holds); one that is not may go again (the delivery
    # rule), and one recorded before the restart never does.
    repeated = {t for t, times in sent.items() if times > 1}
    assert repeated <= unrecorded
    assert max(sent.values()) <= 2
    print(f"postgresql restart: paused at {paused_at}/{MESSAGES} sent, {len(repeated)} twice")


async def test_telegram_failing_or_hanging_is_retried_then_recorded_and_the_api_answers(
    tmp_path: Path,
    database_url: str,
    telegram_double: TelegramDouble,
    db_session_factory: async_sessionmaker[AsyncSession],
    redis_client: Redis,
) -> None:
    with deployment(
        tmp_path,
        telegram_double,
        database_url=database_url,
        redis_url=TEST_REDIS_URL,
        TELEGRAM_REQUEST_TIMEOUT="1",
        TELEGRAM_MAX_RETRIES="2",
    ) as service:
        service.serve()
        await service.healthy()
        failing, failing_id = await service.connect()
        hanging, hanging_id = await service.connect()
        # Every attempt: a 502 for one bot, no answer at all for the other.
        telegram_double.fail_next("sendMessage", status=502, times=3, bot=failing)
        telegram_double.hang_next("sendMessage", times=3, bot=hanging)
        failed, hung = await service.request_messages(
            [
                {"connection_id": failing_id, "chat_id": 501, "text": "to a failing Telegram"},
                {"connection_id": hanging_id, "chat_id": 502, "text": "to a hanging Telegram"},
            ]
        )
        service.worker()
        async with service.client() as api:

            async def finished() -> bool:
                answers = [await api.get(f"/api/v1/messages/{m['id']}") for m in (failed, hung)]
                # The API answers throughout, while the worker waits on Telegram.
                assert [a.status_code for a in answers] == [200, 200]
                assert (await api.get("/health")).status_code == 200
                return all(a.json()["status"] == "failed" for a in answers)

            await eventually(finished, "both messages to fail after their retries", limit=60)
            # The server's own Telegram calls time out too, with an answer, not a hang.
            telegram_double.hang_next("getWebhookInfo", bot=hanging)
            health = await api.get(f"/api/v1/connections/{hanging_id}/health")
            assert health.status_code == 502, health.text
            assert health.json()["error"]["code"] == "telegram_unavailable"
            failed = (await api.get(f"/api/v1/messages/{failed['id']}")).json()
            hung = (await api.get(f"/api/v1/messages/{hung['id']}")).json()
    # The first attempt and TELEGRAM_MAX_RETRIES more, each recorded as it failed.
    assert len(telegram_double.calls_for("sendMessage", bot=failing)) == 3
    assert len(telegram_double.calls_for("sendMessage", bot=hanging)) == 3
    assert failed["last_error"] == "Bad Gateway"
    assert hung["last_error"].startswith("timed out"), hung
    assert telegram_double.sent_messages(failing) == telegram_double.sent_messages(hanging) == []
    async with db_session_factory() as session:
        attempts = (await session.execute(select(OutboundMessage.attempts))).scalars().all()
    assert attempts == [3, 3]
