"""Broadcasts sent by the dispatcher, against real PostgreSQL, Redis and the Bot API
double enforcing Telegram's sending limits.

Where a test is not about the rate itself, the bot's limit is scaled up tenfold on
both sides (the double's and the pacer's: 300 sends in any second instead of 30)
and broadcasts fall due at 150 a second instead of 25, so a thousand recipients
take seconds; what is tested is the relation between them: a broadcast paced
below the bot's limit never meets a 429, and leaves room for the connection's
ordinary messages.
"""

from __future__ import annotations

import collections
from typing import Any

import httpx
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.auth.models import Role
from app.config import Settings
from app.messages.pacing import PacingLimits
from tests.broadcasts.helpers import (
    BROADCASTS,
    connect,
    create,
    dispatching,
    get,
    messages_of,
    seed_recipients,
)
from tests.conftest import WorkspaceFixture, running_app
from tests.telegram_double.double import TelegramDouble
from tests.telegram_double.state import FakeBot, SendLimits
from tests.waiting import eventually

PACING = PacingLimits(bot_sends=300)
TELEGRAM = SendLimits(bot_sends=300)
# Half the bot's (scaled) 300 a second: room for ordinary messages, and for a
# shared test machine that cannot always keep up.
BROADCAST_RATE = 150.0
ORDINARY_CHAT = 77_000_001


async def send_ordinary(
    client: httpx.AsyncClient, workspace: WorkspaceFixture, connection_id: str, reviewer: str
) -> dict[str, Any]:
    """A single message, requested and approved."""
    response = await client.post(
        "/api/v1/messages",
        json={"connection_id": connection_id, "chat_id": ORDINARY_CHAT, "text": "ordinary"},
        headers=workspace.headers(),
    )
    assert response.status_code == 202, response.text
    approved = await client.post(
        f"/api/v1/messages/{response.json()['id']}/approve", headers=workspace.headers(reviewer)
    )
    assert approved.status_code == 200, approved.text
    message: dict[str, Any] = approved.json()
    return message


def sends_to(double: TelegramDouble, bot: FakeBot, chats: set[int]) -> list[int]:
    return [r.chat_id for r in double.sent_messages(bot) if r.chat_id in chats]


async def test_a_thousand_recipients_are_each_sent_once_within_telegrams_limits(
    settings: Settings,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    db_engine: AsyncEngine,
    db_session_factory: async_sessionmaker[AsyncSession],
    redis_client: Redis,
) -> None:
    fast = settings.model_copy(update={"broadcast_messages_per_second": BROADCAST_RATE})
    async with running_app(fast) as (_app, client):
        # A broadcast counts against the connection's daily limit (1000 by default).
        bot, connection_id = await connect(client, workspace, telegram_double, daily_limit=5000)
        chats = list(range(10_001, 11_001))
        people = await seed_recipients(db_session_factory, workspace, connection_id, chats)
        blocked = chats[500]
        telegram_double.set_chat(bot, blocked, "blocked")
        telegram_double.send_limits = TELEGRAM
        _, reviewer = await workspace.token(Role.reviewer)
        broadcast = await create(client, workspace, connection_id, contact_ids=people.contact_ids)
        assert broadcast["recipient_count"] == 1000
        recipients = set(chats)

        async with dispatching(db_engine, settings.telegram_api_base, redis_client, limits=PACING):
            # The dispatcher is at work (it sends this one) and sends no recipient
            # before the approval.
            await send_ordinary(client, workspace, connection_id, reviewer)
            await eventually(
                lambda: telegram_double.sent_messages(bot, chat_id=ORDINARY_CHAT),
                "the first ordinary message to be sent",
            )
            assert sends_to(telegram_double, bot, recipients) == []
            assert (await get(client, workspace, broadcast["id"]))["status"] == "pending_approval"

            approved = await client.post(
                f"{BROADCASTS}/{broadcast['id']}/approve", headers=workspace.headers(reviewer)
            )
            assert approved.status_code == 200, approved.text
            await eventually(
                lambda: len(sends_to(telegram_double, bot, recipients)) >= 100,
                "the broadcast to be under way",
            )
            during = await send_ordinary(client, workspace, connection_id, reviewer)

            async def finished() -> dict[str, Any] | None:
                current = await get(client, workspace, broadcast["id"])
                return current if current["status"] == "finished" else None

            done = await eventually(finished, "the broadcast to finish", limit=120, every=0.2)
        [failed] = await messages_of(client, workspace, broadcast["id"], "failed")
        ordinary = await client.get(f"/api/v1/messages/{during['id']}", headers=workspace.headers())

    assert done["counts"]["sent"] == 999 and done["counts"]["failed"] == 1
    assert sum(done["counts"].values()) == 1000
    # Counted at the double: every recipient but the blocked one once, none twice.
    delivered = collections.Counter(sends_to(telegram_double, bot, recipients))
    assert delivered == collections.Counter(chat for chat in chats if chat != blocked)
    calls = telegram_double.calls_for("sendMessage", bot=bot)
    assert [c.status for c in calls].count(429) == 0
    # The blocked recipient failed alone, at once, with Telegram's reason.
    assert failed["chat_id"] == blocked
    assert failed["last_error"] == "Forbidden: bot was blocked by the user"
    assert failed["attempts"] == 1
    assert [c.params["chat_id"] for c in calls].count(blocked) == 1
    # The ordinary message requested during the broadcast went before it ended.
    order = [r.chat_id for r in telegram_double.sent_messages(bot)]
    ordinary_at = [i for i, chat in enumerate(order) if chat == ORDINARY_CHAT]
    assert len(ordinary_at) == 2
    last_broadcast_send = max(i for i, chat in enumerate(order) if chat in recipients)
    assert ordinary_at[1] < last_broadcast_send
    assert ordinary.json()["status"] == "sent" and ordinary.json()["broadcast_id"] is None


async def test_rejected_and_cancelled_broadcasts_send_nothing_and_cancel_stops_the_rest(
    settings: Settings,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    db_engine: AsyncEngine,
    db_session_factory: async_sessionmaker[AsyncSession],
    redis_client: Redis,
) -> None:
    # Slow enough that a cancel lands while most of the broadcast is still queued.
    slow = settings.model_copy(update={"broadcast_messages_per_second": 10.0})
    async with running_app(slow) as (_app, client):
        bot, connection_id = await connect(client, workspace, telegram_double)
        telegram_double.send_limits = SendLimits()
        _, reviewer = await workspace.token(Role.reviewer)
        rejected_chats = [20_001, 20_002, 20_003]
        cancelled_chats = [20_011, 20_012, 20_013]
        stopped_chats = list(range(20_101, 20_131))
        rejected_people = await seed_recipients(
            db_session_factory, workspace, connection_id, rejected_chats
        )
        cancelled_people = await seed_recipients(
            db_session_factory, workspace, connection_id, cancelled_chats
        )
        stopped_people = await seed_recipients(
            db_session_factory, workspace, connection_id, stopped_chats
        )
        rejected = await create(
            client, workspace, connection_id, contact_ids=rejected_people.contact_ids
        )
        cancelled = await create(
            client, workspace, connection_id, contact_ids=cancelled_people.contact_ids
        )
        stopped = await create(
            client, workspace, connection_id, contact_ids=stopped_people.contact_ids
        )

        async with dispatching(db_engine, settings.telegram_api_base, redis_client):
            reject = await client.post(
                f"{BROADCASTS}/{rejected['id']}/reject",
                json={"reason": "Not now"},
                headers=workspace.headers(reviewer),
            )
            assert reject.status_code == 200
            cancel = await client.post(
                f"{BROADCASTS}/{cancelled['id']}/cancel", headers=workspace.headers()
            )
            assert cancel.status_code == 200
            approve = await client.post(
                f"{BROADCASTS}/{stopped['id']}/approve", headers=workspace.headers(reviewer)
            )
            assert approve.status_code == 200
            await eventually(
                lambda: len(sends_to(telegram_double, bot, set(stopped_chats))) >= 2,
                "the approved broadcast to start",
            )
            halted = await client.post(
                f"{BROADCASTS}/{stopped['id']}/cancel", headers=workspace.headers()
            )
            assert halted.status_code == 200, halted.text
            assert halted.json()["status"] == "cancelled"

            async def settled() -> dict[str, Any] | None:
                current = await get(client, workspace, stopped["id"])
                counts = current["counts"]
                return current if counts["queued"] == counts["sending"] == 0 else None

            after = await eventually(settled, "the cancelled broadcast's sends to settle")
            # A message sent after these shows the dispatcher went on without them.
            await send_ordinary(client, workspace, connection_id, reviewer)
            await eventually(
                lambda: telegram_double.sent_messages(bot, chat_id=ORDINARY_CHAT),
                "a later message to be sent",
            )
        sent_messages = await messages_of(client, workspace, stopped["id"], "sent")

    assert sends_to(telegram_double, bot, set(rejected_chats + cancelled_chats)) == []
    sent_here = sends_to(telegram_double, bot, set(stopped_chats))
    counts = after["counts"]
    assert 2 <= counts["sent"] < len(stopped_chats)
    assert counts["sent"] + counts["cancelled"] == len(stopped_chats)
    # What the broadcast says it sent is exactly what Telegram received.
    assert sorted(m["chat_id"] for m in sent_messages) == sorted(sent_here)
    assert len(sent_here) == len(set(sent_here)) == counts["sent"]
