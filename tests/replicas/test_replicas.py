"""Two API servers and two workers on one PostgreSQL and one Redis, as an operator
runs replicas: one shared ingress limit, each message sent once, and a worker
killed mid-run losing nothing."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.messages.models import MessageStatus, OutboundMessage
from tests.conftest import TEST_REDIS_URL
from tests.deployment import Deployment, deployment
from tests.faults.test_ingress_outages import numbered
from tests.ingress.helpers import stored_update_ids
from tests.telegram_double.double import TelegramDouble
from tests.waiting import eventually

# Replicas under load share the machine with nothing else (see pyproject markers).
pytestmark = pytest.mark.exclusive

RATE, BURST = 5, 40


@pytest.fixture
def replicas(
    tmp_path: Path,
    telegram_double: TelegramDouble,
    database_url: str,
    db_session_factory: async_sessionmaker[AsyncSession],
    redis_client: Redis,
) -> Iterator[Deployment]:
    with deployment(
        tmp_path,
        telegram_double,
        database_url=database_url,
        redis_url=TEST_REDIS_URL,
        INGRESS_UPDATES_PER_SECOND=str(RATE),
        INGRESS_UPDATES_BURST=str(BURST),
        # A killed worker's claims come back after this (the default is a minute).
        DISPATCH_LEASE_SECONDS="4",
    ) as service:
        yield service


async def statuses(factory: async_sessionmaker[AsyncSession]) -> dict[str, MessageStatus]:
    async with factory() as session:
        rows = await session.execute(select(OutboundMessage.text, OutboundMessage.status))
        return {text: status for text, status in rows.tuples()}


async def all_sent(factory: async_sessionmaker[AsyncSession], count: int) -> bool:
    found = await statuses(factory)
    return len(found) == count and all(s == MessageStatus.sent for s in found.values())


def texts_at_double(double: TelegramDouble, bots: list[object]) -> Counter[str]:
    return Counter(r.text for bot in bots for r in double.sent_messages(bot))  # type: ignore[arg-type]


async def test_two_servers_admit_updates_within_one_shared_limit(
    replicas: Deployment,
    telegram_double: TelegramDouble,
    db_session_factory: async_sessionmaker[AsyncSession],
) -> None:
    replicas.serve()
    replicas.serve()
    await replicas.healthy()
    bot, _ = await replicas.connect()
    sides = [replicas.telegram_side(0), replicas.telegram_side(1)]
    gate = asyncio.Semaphore(20)

    async def deliver(n: int) -> tuple[int, int]:
        async with gate:
            return n, await telegram_double.deliver(bot, numbered(n), client=sides[n % 2])

    # Each server alone would admit a whole burst: twice BURST in all.
    started = time.monotonic()
    answers = await asyncio.gather(*(deliver(n) for n in range(4 * BURST)))
    elapsed = time.monotonic() - started
    for side in sides:
        await side.aclose()

    admitted = sorted(n for n, status in answers if status == 200)
    assert {status for _, status in answers} == {200, 429}
    # GCRA: at most the burst plus the rate over the time the deliveries took.
    assert len(admitted) <= BURST + RATE * elapsed + 1, (len(admitted), elapsed)
    assert {n % 2 for n in admitted} == {0, 1}  # both servers admitted some
    # What was admitted is stored; what was refused is not (Telegram redelivers it).
    assert await stored_update_ids(db_session_factory) == [500_000 + n for n in admitted]
    print(f"two servers, limit {RATE}/s burst {BURST}: {len(admitted)} of {len(answers)} admitted")


async def test_300_approved_messages_through_two_servers_and_two_workers_go_once_each(
    replicas: Deployment,
    telegram_double: TelegramDouble,
    db_session_factory: async_sessionmaker[AsyncSession],
) -> None:
    replicas.serve()
    replicas.serve()
    replicas.worker()
    replicas.worker()
    await replicas.healthy()
    bots = [await replicas.connect(approval="required") for _ in range(6)]
    bodies = [
        {"connection_id": bots[n % 6][1], "chat_id": 10_000 + n, "text": f"m{n}"}
        for n in range(300)
    ]
    messages = await replicas.request_messages(bodies)
    assert {m["status"] for m in messages} == {"pending_approval"}
    # Approved by the reviewer through the other server than the one that took it.
    reviewers = [replicas.client(1), replicas.client(0)]
    gate = asyncio.Semaphore(8)

    async def approve(n: int, message_id: str) -> None:
        async with gate:
            response = await reviewers[n % 2].post(f"/api/v1/messages/{message_id}/approve")
        assert response.status_code == 200, response.text

    await asyncio.gather(*(approve(n, m["id"]) for n, m in enumerate(messages)))
    for reviewer in reviewers:
        await reviewer.aclose()
    await eventually(
        lambda: all_sent(db_session_factory, 300), "every message sent", limit=120, every=0.2
    )
    # Counted at the double: each exactly once, none missing.
    assert texts_at_double(telegram_double, [bot for bot, _ in bots]) == Counter(
        f"m{n}" for n in range(300)
    )


async def held_by(factory: async_sessionmaker[AsyncSession], pid: int) -> set[str]:
    """Texts of the messages a worker process holds (claimed, not yet recorded)."""
    async with factory() as session:
        rows = await session.execute(
            select(OutboundMessage.text).where(
                OutboundMessage.status == MessageStatus.sending,
                OutboundMessage.lease_owner.like(f"%:{pid}:%"),
            )
        )
        return set(rows.scalars())


async def test_a_worker_killed_mid_run_loses_nothing_and_repeats_only_what_it_held(
    replicas: Deployment,
    telegram_double: TelegramDouble,
    db_session_factory: async_sessionmaker[AsyncSession],
) -> None:
    replicas.serve()
    victim = replicas.worker()
    replicas.worker()
    await replicas.healthy()
    bots = [await replicas.connect() for _ in range(6)]
    # Telegram takes each message at once but answers a little late: a worker killed
    # meanwhile has sent messages it never recorded, the case the delivery rule names.
    telegram_double.delay_next("sendMessage", 0.2, times=10_000, after_execute=True)
    bodies = [
        {"connection_id": bots[n % 6][1], "chat_id": 20_000 + n, "text": f"k{n}"}
        for n in range(300)
    ]
    requesting = asyncio.create_task(replicas.request_messages(bodies))
    pid = victim.process.pid

    async def victim_is_sending() -> bool:
        return len(telegram_double.calls_for("sendMessage")) >= 30 and bool(
            await held_by(db_session_factory, pid)
        )

    await eventually(victim_is_sending, "the victim to be sending mid-run", limit=60)
    os.killpg(pid, signal.SIGKILL)
    victim.process.wait(timeout=30)
    held = await held_by(db_session_factory, pid)
    await requesting
    await eventually(
        lambda: all_sent(db_session_factory, 300), "every message sent", limit=120, every=0.2
    )

    sent = texts_at_double(telegram_double, [bot for bot, _ in bots])
    assert set(sent) == {f"k{n}" for n in range(300)}  # nothing lost
    repeated = {text for text, times in sent.items() if times > 1}
    # Only what the killed worker held can have gone twice, and nothing thrice.
    assert repeated <= held, (repeated - held, held)
    assert max(sent.values()) <= 2
    assert held, "the worker held nothing when it was killed"
    print(f"worker killed holding {len(held)}: {len(repeated)} sent twice, 0 lost")
