"""A minute of webhook deliveries from 40 connections (Telegram's default
`max_connections`) while the worker sends a backlog: no 5xx, every acknowledged
update stored once, every message sent once. The figures are printed.

The load comes from bench/loadgen.py in a process of its own, so the test process
(which hosts the Bot API double the worker sends to) stays out of its way.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.ingress.models import TelegramUpdate
from tests.conftest import TEST_REDIS_URL
from tests.connections.helpers import webhook_credentials
from tests.deployment import Deployment, deployment
from tests.replicas.test_replicas import all_sent, texts_at_double
from tests.telegram_double.double import TelegramDouble
from tests.telegram_double.fixtures import all_updates
from tests.waiting import eventually

REPO = Path(__file__).resolve().parents[2]
LOADGEN = REPO / "bench" / "loadgen.py"
WEBHOOK_PATH = "/api/v1/integrations/telegram/webhook"
SECONDS, CONNECTIONS = 60, 40
BACKLOG_BOTS, BACKLOG_PER_BOT = 2, 600  # 20 s of each bot's 30/s
BASE_UPDATE_ID = 1_000_000

pytestmark = [
    pytest.mark.slow,
    pytest.mark.exclusive,
    pytest.mark.timeout(SECONDS + 240),
    pytest.mark.skipif(not LOADGEN.exists(), reason="needs bench/loadgen.py"),
]


@pytest.fixture
def loaded(
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
        # The pipeline is measured here, not the per-connection limit.
        INGRESS_UPDATES_PER_SECOND="1000000",
        INGRESS_UPDATES_BURST="2000000",
    ) as service:
        yield service


def templates(path: Path) -> Path:
    """The real sample updates, as loadgen wants them: compact JSON without the
    update_id and the opening brace."""
    lines = []
    for _, update in all_updates():
        rest = {key: value for key, value in update.items() if key != "update_id"}
        lines.append(json.dumps(rest, separators=(",", ":"), ensure_ascii=False)[1:])
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


async def test_a_minute_of_webhooks_from_40_connections_while_a_backlog_is_sent(
    tmp_path: Path,
    loaded: Deployment,
    telegram_double: TelegramDouble,
    db_session_factory: async_sessionmaker[AsyncSession],
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = loaded.serve()
    await loaded.healthy()
    webhook_bot, webhook_connection = await loaded.connect()
    key, secret = webhook_credentials(telegram_double, webhook_bot)
    senders = [await loaded.connect() for _ in range(BACKLOG_BOTS)]
    total = BACKLOG_BOTS * BACKLOG_PER_BOT
    await loaded.request_messages(
        [
            {"connection_id": senders[n % BACKLOG_BOTS][1], "chat_id": 40_000 + n, "text": f"b{n}"}
            for n in range(total)
        ]
    )
    acknowledged_file = tmp_path / "acknowledged.txt"
    loaded.worker()
    started = time.monotonic()
    load = await asyncio.create_subprocess_exec(
        sys.executable,
        str(LOADGEN),
        f"--url={server}{WEBHOOK_PATH}?key={key}",
        f"--templates={templates(tmp_path / 'templates.txt')}",
        f"--base={BASE_UPDATE_ID}",
        f"--secret={secret}",
        f"--connections={CONNECTIONS}",
        f"--duration={SECONDS}",
        f"--acknowledged={acknowledged_file}",
        stdout=asyncio.subprocess.PIPE,
    )
    output, _ = await load.communicate()
    assert load.returncode == 0
    sent_during_load = sum(texts_at_double(telegram_double, [b for b, _ in senders]).values())
    result = json.loads(output.decode().split("LOADGEN_RESULT ", 1)[1])
    await eventually(
        lambda: all_sent(db_session_factory, total), "the backlog to be sent", limit=120, every=0.5
    )
    backlog_seconds = time.monotonic() - started

    answers = Counter({int(s): n for s, n in result["statuses"].items()})
    answers.update({int(s): n for s, n in result["drained_statuses"].items()})
    assert answers and not [s for s in answers if s >= 500], answers
    acknowledged = [int(n) for n in acknowledged_file.read_text().split()]
    async with db_session_factory() as session:
        rows = await session.execute(
            select(TelegramUpdate.update_id).where(
                TelegramUpdate.connection_id == webhook_connection
            )
        )
        stored = list(rows.scalars())
    assert len(set(stored)) == len(stored)  # once each
    assert set(acknowledged) <= set(stored)  # every acknowledged update is stored
    # Nothing else: only what was sent (one unanswered at the end may be stored).
    assert set(stored) <= set(range(BASE_UPDATE_ID, BASE_UPDATE_ID + result["request_calls"]))
    sent = texts_at_double(telegram_double, [b for b, _ in senders])
    assert sent == Counter(f"b{n}" for n in range(total))

    rate = result["requests"] / (result["duration_us"] / 1e6)
    with capsys.disabled():
        print(
            f"\nsustained load, {SECONDS} s x {CONNECTIONS} connections: "
            f"{rate:.0f} updates/s, p50 {result['latency_us']['p50'] / 1000:.1f} ms, "
            f"p99 {result['latency_us']['p99'] / 1000:.1f} ms, "
            f"max {result['latency_us']['max'] / 1000:.0f} ms, "
            f"{len(acknowledged)} acknowledged and stored, statuses {dict(answers)}, "
            f"timeouts {result['timeouts']}; backlog: {sent_during_load} of {total} "
            f"messages sent during the load, all {total} in {backlog_seconds:.0f} s, once each"
        )
