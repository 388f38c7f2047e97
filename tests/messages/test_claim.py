"""`states.claim` on PostgreSQL: a claim takes at most `limit` messages."""

from __future__ import annotations

from datetime import timedelta

import httpx
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db import utcnow
from app.messages import states
from app.messages.models import MessageStatus
from tests.conftest import WorkspaceFixture
from tests.messages.test_dispatcher import connect, request
from tests.telegram_double.double import TelegramDouble


async def test_a_claim_takes_no_more_than_its_limit_and_the_next_takes_the_rest(
    app_client: httpx.AsyncClient,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    db_engine: AsyncEngine,
) -> None:
    _, connection_id = await connect(app_client, workspace, telegram_double)
    for n in range(5):
        await request(app_client, workspace, connection_id, chat_id=700 + n, text=f"m{n}")
    now = utcnow()
    lease = now + timedelta(minutes=1)
    async with db_engine.begin() as connection:
        first = await states.claim(connection, owner="a", now=now, lease_until=lease, limit=2)
    async with db_engine.begin() as connection:
        second = await states.claim(connection, owner="b", now=now, lease_until=lease, limit=10)
        queued = await connection.scalar(
            select(func.count()).where(states.MESSAGES.c.status == MessageStatus.queued)
        )
    assert len(first) == 2
    assert len(second) == 3
    assert not {row.id for row in first} & {row.id for row in second}
    assert queued == 0
