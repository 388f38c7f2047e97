"""The outbound dispatcher against real PostgreSQL, Redis and the Bot API double."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, timedelta
from typing import Any

import aiohttp
import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.auth.models import Role
from app.config import Settings
from app.connections.credentials import ConnectionCredentials
from app.db import utcnow
from app.messages.dispatcher import Dispatcher, DispatchSettings
from app.messages.models import MessageStatus, OutboundMessage
from app.messages.pacing import RedisOutboundPacer
from app.telegram.client import TelegramClient
from app.vault import Vault, parse_keyring
from tests.conftest import TEST_VAULT_KEYS, WorkspaceFixture
from tests.connections.helpers import connect_bot, webhook_credentials
from tests.ingress.test_webhook import post_update
from tests.telegram_double.double import TelegramDouble
from tests.telegram_double.fixtures import load_update
from tests.telegram_double.state import FakeBot
from tests.waiting import eventually

SEND = "/api/v1/messages"
FAST = DispatchSettings(max_retries=2, idle_wait=0.05, backoff_base=0.01, backoff_cap=0.05)


def new_dispatcher(
    engine: AsyncEngine,
    telegram: TelegramClient,
    pacer: RedisOutboundPacer,
    *,
    owner: str = "worker-0",
    options: DispatchSettings = FAST,
) -> Dispatcher:
    return Dispatcher(
        engine=engine,
        credentials=ConnectionCredentials(Vault(parse_keyring(TEST_VAULT_KEYS))),
        telegram=telegram,
        pacer=pacer,
        owner=owner,
        settings=options,
    )


def fresh_pacer(redis: Redis) -> RedisOutboundPacer:
    """A pacer whose keys no other test shares."""
    return RedisOutboundPacer(redis, prefix=f"test-{uuid.uuid4().hex[:6]}")


@contextlib.asynccontextmanager
async def dispatching(
    engine: AsyncEngine,
    settings: Settings,
    redis: Redis,
    *,
    workers: int = 1,
    options: DispatchSettings = FAST,
) -> AsyncIterator[list[Dispatcher]]:
    """`workers` dispatchers (distinct owners sharing one pacer's keys, as replicas
    do) until the block ends."""
    stop = asyncio.Event()
    pacer = fresh_pacer(redis)
    # The worker's own transport (app.runtime builds its client on aiohttp).
    async with aiohttp.ClientSession() as http:
        telegram = TelegramClient(http, settings.telegram_api_base, request_timeout=5)
        dispatchers = [
            new_dispatcher(engine, telegram, pacer, owner=f"worker-{n}", options=options)
            for n in range(workers)
        ]
        tasks = [asyncio.create_task(d.run(stop)) for d in dispatchers]
        try:
            yield dispatchers
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks), 30)


async def connect(
    client: httpx.AsyncClient,
    workspace: WorkspaceFixture,
    double: TelegramDouble,
    *,
    approval: str = "none",
) -> tuple[FakeBot, str]:
    bot, body = await connect_bot(client, workspace, double)
    patched = await client.patch(
        f"/api/v1/connections/{body['id']}",
        json={"approval_mode": approval},
        headers=workspace.headers(),
    )
    assert patched.status_code == 200
    return bot, str(body["id"])


async def request(
    client: httpx.AsyncClient, workspace: WorkspaceFixture, connection_id: str, **body: Any
) -> dict[str, Any]:
    response = await client.post(
        SEND, json={"connection_id": connection_id, **body}, headers=workspace.headers()
    )
    assert response.status_code == 202, response.text
    message: dict[str, Any] = response.json()
    return message


async def status_of(
    client: httpx.AsyncClient, workspace: WorkspaceFixture, message_id: str
) -> dict[str, Any]:
    response = await client.get(f"{SEND}/{message_id}", headers=workspace.headers())
    message: dict[str, Any] = response.json()
    return message


async def reaches(
    client: httpx.AsyncClient, workspace: WorkspaceFixture, message_id: str, status: str
) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        message = await status_of(client, workspace, message_id)
        return message if message["status"] == status else None

    found: dict[str, Any] = await eventually(check, f"message {message_id} to be {status}")
    return found


async def test_an_approved_message_is_sent_once_and_shows_in_its_conversation(
    app_client: httpx.AsyncClient,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    db_engine: AsyncEngine,
    settings: Settings,
    redis_client: Redis,
) -> None:
    bot, connection_id = await connect(app_client, workspace, telegram_double, approval="required")
    text = "<b>Your order</b> ships today &amp; arrives Friday"
    message = await request(
        app_client, workspace, connection_id, chat_id=501, text=text, parse_mode="HTML"
    )
    _, reviewer = await workspace.token(Role.reviewer)
    async with dispatching(db_engine, settings, redis_client):
        await asyncio.sleep(0)  # the dispatcher runs, and must find nothing to send
        assert telegram_double.sent_messages(bot) == []
        approved = await app_client.post(
            f"{SEND}/{message['id']}/approve", headers=workspace.headers(reviewer)
        )
        assert approved.status_code == 200
        sent = await reaches(app_client, workspace, message["id"], "sent")
    [record] = telegram_double.sent_messages(bot)
    assert record.text == text and record.chat_id == 501
    assert record.params["parse_mode"] == "HTML"
    assert sent["telegram_message_id"] == record.message_id
    assert sent["attempts"] == 1 and sent["sent_at"] is not None

    conversations = (
        await app_client.get("/api/v1/conversations", headers=workspace.headers())
    ).json()["items"]
    [conversation] = [c for c in conversations if c["chat_id"] == 501]
    inbox = (
        await app_client.get(
            f"/api/v1/conversations/{conversation['id']}/messages", headers=workspace.headers()
        )
    ).json()["items"]
    assert [(m["direction"], m["status"], m["telegram_message_id"]) for m in inbox] == [
        ("outbound", "sent", record.message_id)
    ]
    audit = (
        await app_client.get(
            "/api/v1/audit", params={"message_id": message["id"]}, headers=workspace.headers()
        )
    ).json()["items"]
    assert [e["action"] for e in audit] == ["sent", "approved", "requested"]


async def test_every_sending_option_of_a_request_reaches_telegram(
    app_client: httpx.AsyncClient,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    db_engine: AsyncEngine,
    settings: Settings,
    redis_client: Redis,
) -> None:
    bot, connection_id = await connect(app_client, workspace, telegram_double)
    preview = {"is_disabled": True}
    message = await request(
        app_client,
        workspace,
        connection_id,
        chat_id=502,
        text="*quiet* and protected",
        parse_mode="MarkdownV2",
        disable_notification=True,
        protect_content=True,
        link_preview_options=preview,
    )
    async with dispatching(db_engine, settings, redis_client):
        await reaches(app_client, workspace, message["id"], "sent")
    [record] = telegram_double.sent_messages(bot)
    assert record.text == "*quiet* and protected"
    assert {
        name: record.params.get(name)
        for name in (
            "parse_mode",
            "disable_notification",
            "protect_content",
            "link_preview_options",
        )
    } == {
        "parse_mode": "MarkdownV2",
        "disable_notification": True,
        "protect_content": True,
        "link_preview_options": preview,
    }


async def test_rejected_cancelled_and_expired_messages_are_never_sent(
    app_client: httpx.AsyncClient,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    db_engine: AsyncEngine,
    db_session_factory: async_sessionmaker[AsyncSession],
    settings: Settings,
    redis_client: Redis,
) -> None:
    bot, connection_id = await connect(app_client, workspace, telegram_double, approval="required")
    _, reviewer = await workspace.token(Role.reviewer)
    rejected = await request(app_client, workspace, connection_id, chat_id=5, text="a")
    cancelled = await request(app_client, workspace, connection_id, chat_id=6, text="b")
    expired = await request(app_client, workspace, connection_id, chat_id=7, text="c")
    await app_client.post(
        f"{SEND}/{rejected['id']}/reject",
        json={"reason": "no"},
        headers=workspace.headers(reviewer),
    )
    await app_client.post(f"{SEND}/{cancelled['id']}/cancel", headers=workspace.headers())
    async with db_session_factory() as session:
        # Its approval window ended: approving it now is refused.
        await session.execute(
            update(OutboundMessage)
            .where(OutboundMessage.id == uuid.UUID(expired["id"]))
            .values(expires_at=OutboundMessage.created_at)
        )
        await session.commit()
    late = await app_client.post(
        f"{SEND}/{expired['id']}/approve", headers=workspace.headers(reviewer)
    )
    assert late.status_code == 409 and "expired" in late.json()["error"]["message"]
    async with dispatching(db_engine, settings, redis_client) as [dispatcher]:
        assert await dispatcher.dispatch_once() == 0
    assert telegram_double.sent_messages(bot) == []
    statuses = {
        m: (await status_of(app_client, workspace, m))["status"]
        for m in (rejected["id"], cancelled["id"], expired["id"])
    }
    assert statuses == {
        rejected["id"]: "rejected",
        cancelled["id"]: "cancelled",
        expired["id"]: "expired",
    }


async def test_a_429_waits_retry_after_without_spending_an_attempt(
    app_client: httpx.AsyncClient,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    db_engine: AsyncEngine,
    settings: Settings,
    redis_client: Redis,
) -> None:
    bot, connection_id = await connect(app_client, workspace, telegram_double)
    telegram_double.fail_next("sendMessage", status=429, retry_after=2, bot=bot)
    message = await request(app_client, workspace, connection_id, chat_id=501, text="later")
    async with dispatching(db_engine, settings, redis_client):
        # The message starts out queued: wait for the attempt Telegram refused.
        async def deferred() -> dict[str, Any] | None:
            current = await status_of(app_client, workspace, message["id"])
            return current if current["last_error"] and current["status"] == "queued" else None

        waiting = await eventually(deferred, "the message to wait out Telegram's 429")
        assert waiting["attempts"] == 0
        assert "retry after 2" in (waiting["last_error"] or "")
        sent = await reaches(app_client, workspace, message["id"], "sent")
    calls = telegram_double.calls_for("sendMessage", bot=bot)
    assert [c.status for c in calls] == [429, 200]
    assert calls[1].at - calls[0].at >= 2.0
    assert sent["attempts"] == 1


async def test_a_blocked_chat_fails_at_once_with_telegrams_description(
    app_client: httpx.AsyncClient,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    db_engine: AsyncEngine,
    settings: Settings,
    redis_client: Redis,
) -> None:
    bot, connection_id = await connect(app_client, workspace, telegram_double)
    telegram_double.set_chat(bot, 501, "blocked")
    message = await request(app_client, workspace, connection_id, chat_id=501, text="hello")
    other = await request(app_client, workspace, connection_id, chat_id=502, text="hello")
    async with dispatching(db_engine, settings, redis_client):
        failed = await reaches(app_client, workspace, message["id"], "failed")
        await reaches(app_client, workspace, other["id"], "sent")
    assert failed["last_error"] == "Forbidden: bot was blocked by the user"
    assert len(telegram_double.calls_for("sendMessage", bot=bot)) == 2


async def test_server_errors_are_retried_then_the_message_fails(
    app_client: httpx.AsyncClient,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    db_engine: AsyncEngine,
    settings: Settings,
    redis_client: Redis,
) -> None:
    bot, connection_id = await connect(app_client, workspace, telegram_double)
    telegram_double.fail_next("sendMessage", status=502, times=3, bot=bot)
    message = await request(app_client, workspace, connection_id, chat_id=501, text="x")
    async with dispatching(db_engine, settings, redis_client):
        failed = await reaches(app_client, workspace, message["id"], "failed")
    # FAST allows 2 retries: three attempts in all, each a 5xx.
    assert [c.status for c in telegram_double.calls_for("sendMessage", bot=bot)] == [502] * 3
    assert failed["attempts"] == 3


async def test_a_migrated_group_is_sent_to_its_supergroup_and_its_conversation_moves(
    app_client: httpx.AsyncClient,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    db_engine: AsyncEngine,
    settings: Settings,
    redis_client: Redis,
) -> None:
    bot, connection_id = await connect(app_client, workspace, telegram_double)
    telegram_double.set_chat(bot, -4001, "migrated", migrate_to_chat_id=-1004001)
    message = await request(app_client, workspace, connection_id, chat_id=-4001, text="moved")
    async with dispatching(db_engine, settings, redis_client):
        sent = await reaches(app_client, workspace, message["id"], "sent")
    assert sent["chat_id"] == -1004001
    assert [r.chat_id for r in telegram_double.sent_messages(bot)] == [-1004001]
    conversations = (
        await app_client.get("/api/v1/conversations", headers=workspace.headers())
    ).json()["items"]
    assert [c["chat_id"] for c in conversations] == [-1004001]


async def test_a_rejected_token_pauses_the_queue_until_the_token_is_replaced(
    app_client: httpx.AsyncClient,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    db_engine: AsyncEngine,
    settings: Settings,
    redis_client: Redis,
) -> None:
    bot, connection_id = await connect(app_client, workspace, telegram_double)
    telegram_double.enforce_set_webhook_rate_limit = False
    assert bot.token is not None
    telegram_double.revoke_token(bot.token)
    message = await request(app_client, workspace, connection_id, chat_id=501, text="x")
    async with dispatching(db_engine, settings, redis_client):

        async def paused() -> bool:
            body = (
                await app_client.get(
                    f"/api/v1/connections/{connection_id}", headers=workspace.headers()
                )
            ).json()
            return bool(body["status"] == "action_required")

        await eventually(paused, "the connection to ask for a new token")
        waiting = await status_of(app_client, workspace, message["id"])
        assert waiting["status"] == "queued" and waiting["attempts"] == 0

        new_token = telegram_double.rotate_token(bot)
        replaced = await app_client.put(
            f"/api/v1/connections/{connection_id}/token",
            json={"bot_token": new_token},
            headers=workspace.headers(),
        )
        assert replaced.status_code == 200, replaced.text
        sent = await reaches(app_client, workspace, message["id"], "sent")
    assert sent["telegram_message_id"] == telegram_double.sent_messages(bot)[0].message_id


async def test_four_dispatchers_send_each_of_500_messages_exactly_once(
    app_client: httpx.AsyncClient,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    db_engine: AsyncEngine,
    db_session_factory: async_sessionmaker[AsyncSession],
    settings: Settings,
    redis_client: Redis,
) -> None:
    bots = [await connect(app_client, workspace, telegram_double) for _ in range(5)]
    for n in range(500):
        _, connection_id = bots[n % 5]
        await request(app_client, workspace, connection_id, chat_id=1000 + n, text=f"m{n}")

    async def all_sent() -> bool:
        async with db_session_factory() as session:
            statuses = (await session.execute(select(OutboundMessage.status))).scalars().all()
        return all(s == MessageStatus.sent for s in statuses)

    options = replace(FAST, batch_size=40)
    async with dispatching(db_engine, settings, redis_client, workers=4, options=options):
        await eventually(all_sent, "every message to be sent", limit=120)
    texts = [r.text for bot, _ in bots for r in telegram_double.sent_messages(bot)]
    assert sorted(texts) == sorted(f"m{n}" for n in range(500))


@pytest.mark.parametrize("approval", ["none"])
async def test_a_connection_without_approval_sends_at_once(
    app_client: httpx.AsyncClient,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    db_engine: AsyncEngine,
    settings: Settings,
    redis_client: Redis,
    approval: str,
) -> None:
    bot, connection_id = await connect(app_client, workspace, telegram_double, approval=approval)
    message = await request(app_client, workspace, connection_id, chat_id=501, text="now")
    assert message["status"] == "queued"
    async with dispatching(db_engine, settings, redis_client):
        await reaches(app_client, workspace, message["id"], "sent")
    assert [r.text for r in telegram_double.sent_messages(bot)] == ["now"]


async def test_a_chats_messages_go_in_order_a_second_apart_and_a_groups_three(
    app_client: httpx.AsyncClient,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    db_engine: AsyncEngine,
    settings: Settings,
    redis_client: Redis,
) -> None:
    bot, connection_id = await connect(app_client, workspace, telegram_double)
    group = -1001000000077
    ids = []
    for n in range(3):
        for chat in (601, 602):
            ids.append(
                (
                    await request(
                        app_client, workspace, connection_id, chat_id=chat, text=f"{chat}-{n}"
                    )
                )["id"]
            )
    for n in range(2):
        ids.append(
            (await request(app_client, workspace, connection_id, chat_id=group, text=f"g-{n}"))[
                "id"
            ]
        )
    async with dispatching(db_engine, settings, redis_client):
        for message_id in ids:
            await reaches(app_client, workspace, message_id, "sent")
    for chat, count, interval in ((601, 3, 1.0), (602, 3, 1.0), (group, 2, 3.0)):
        records = telegram_double.sent_messages(bot, chat_id=chat)
        label = "g" if chat == group else str(chat)
        assert [r.text for r in records] == [f"{label}-{n}" for n in range(count)]
        gaps = [b.received_at - a.received_at for a, b in itertools.pairwise(records)]
        assert all(gap >= interval for gap in gaps), gaps


async def test_a_message_that_must_wait_for_its_chat_waits_in_the_queue_holding_its_ticket(
    app_client: httpx.AsyncClient,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    db_engine: AsyncEngine,
    db_session_factory: async_sessionmaker[AsyncSession],
    settings: Settings,
    redis_client: Redis,
) -> None:
    bot, connection_id = await connect(app_client, workspace, telegram_double)
    for n in range(3):
        await request(app_client, workspace, connection_id, chat_id=611, text=f"m{n}")
    async with aiohttp.ClientSession() as http:
        dispatcher = new_dispatcher(
            db_engine,
            TelegramClient(http, settings.telegram_api_base, request_timeout=5),
            fresh_pacer(redis_client),
        )
        assert await dispatcher.dispatch_once() == 3
    assert [r.text for r in telegram_double.sent_messages(bot)] == ["m0"]
    async with db_session_factory() as session:
        rows = (
            (
                await session.execute(
                    select(OutboundMessage).order_by(OutboundMessage.created_at, OutboundMessage.id)
                )
            )
            .scalars()
            .all()
        )
    sent, second, third = rows
    assert sent.status == MessageStatus.sent and sent.text == "m0"
    # The others wait in the database, each with its ticket in the chat's order,
    # due a second apart, without having spent an attempt.
    assert [second.status, third.status] == [MessageStatus.queued, MessageStatus.queued]
    assert second.pacing_ticket is not None and third.pacing_ticket == second.pacing_ticket + 1
    assert second.next_attempt_at is not None and third.next_attempt_at is not None
    assert sent.sent_at is not None and second.next_attempt_at > sent.sent_at
    spacing = (third.next_attempt_at - second.next_attempt_at).total_seconds()
    assert spacing == pytest.approx(1.0, abs=0.01)
    assert second.attempts == 0 and second.lease_owner is None


async def test_a_message_that_waits_goes_back_to_the_queue_before_the_batchs_sends_are_answered(
    app_client: httpx.AsyncClient,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    db_engine: AsyncEngine,
    db_session_factory: async_sessionmaker[AsyncSession],
    settings: Settings,
    redis_client: Redis,
) -> None:
    """A wait a little over the lookahead could end before a slow batch is recorded;
    the waiting message is back in the queue (and claimable) while the batch's send
    is still in flight."""
    bot, connection_id = await connect(app_client, workspace, telegram_double)
    first = await request(app_client, workspace, connection_id, chat_id=612, text="first")
    second = await request(app_client, workspace, connection_id, chat_id=612, text="second")
    telegram_double.delay_next("sendMessage", 1.5, bot=bot)
    async with aiohttp.ClientSession() as http:
        dispatcher = new_dispatcher(
            db_engine,
            TelegramClient(http, settings.telegram_api_base, request_timeout=5),
            fresh_pacer(redis_client),
        )
        batch = asyncio.create_task(dispatcher.dispatch_once())

        async def statuses() -> dict[str, str]:
            async with db_session_factory() as session:
                rows = await session.execute(select(OutboundMessage.id, OutboundMessage.status))
                return {str(row.id): row.status for row in rows}

        async def second_back_while_first_in_flight() -> bool:
            found = await statuses()
            return found == {
                first["id"]: MessageStatus.sending,
                second["id"]: MessageStatus.queued,
            }

        # While "first" waits for Telegram's (delayed) answer, "second" is queued.
        await eventually(second_back_while_first_in_flight, "the waiting message released")
        assert not batch.done()
        assert await batch == 2
    assert (await statuses())[first["id"]] == MessageStatus.sent
    assert [r.text for r in telegram_double.sent_messages(bot)] == ["first"]


async def test_a_claim_that_took_long_does_not_make_its_messages_late(
    app_client: httpx.AsyncClient,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    db_engine: AsyncEngine,
    settings: Settings,
    redis_client: Redis,
) -> None:
    """A message's moment is kept on the monotonic clock as read when the claim
    began: a claim held up (here by a lock on the table) does not push it back."""
    _, connection_id = await connect(app_client, workspace, telegram_double)
    await request(app_client, workspace, connection_id, chat_id=613, text="due soon")
    async with db_engine.begin() as connection:
        await connection.execute(
            update(OutboundMessage).values(next_attempt_at=utcnow() + timedelta(seconds=0.04))
        )
    async with aiohttp.ClientSession() as http:
        dispatcher = new_dispatcher(
            db_engine,
            TelegramClient(http, settings.telegram_api_base, request_timeout=5),
            fresh_pacer(redis_client),
        )
        async with db_engine.connect() as blocker:
            await blocker.exec_driver_sql("BEGIN")
            await blocker.exec_driver_sql("LOCK TABLE outbound_messages IN EXCLUSIVE MODE")
            started = asyncio.get_running_loop().time()
            claiming = asyncio.create_task(dispatcher._claim())
            await asyncio.sleep(0.5)
            await blocker.exec_driver_sql("COMMIT")
        batch = await claiming
        assert batch is not None and len(batch.candidates) == 1
        # Due about 40 ms after the claim began, not after it ended (0.5 s later).
        assert batch.candidates[0].due - started < 0.2
        await dispatcher._finish(batch)


def _business_message(update_id: int) -> dict[str, Any]:
    person = {"id": 9001, "first_name": "Cleo"}
    return {
        "update_id": update_id,
        "business_message": {
            "message_id": 5,
            "date": 1_700_000_000,
            "business_connection_id": "bc-777",
            "chat": {**person, "type": "private"},
            "from": {**person, "is_bot": False},
            "text": "do you ship abroad?",
        },
    }


def _direct_messages_topic(update_id: int) -> dict[str, Any]:
    person = {"id": 9002, "first_name": "Dana", "is_bot": False}
    return {
        "update_id": update_id,
        "message": {
            "message_id": 6,
            "date": 1_700_000_000,
            "chat": {
                "id": -1009876543210,
                "type": "supergroup",
                "title": "News direct messages",
                "is_direct_messages": True,
            },
            "direct_messages_topic": {"topic_id": 321, "user": person},
            "from": person,
            "text": "a question for the channel",
        },
    }


@pytest.mark.parametrize(
    ("update", "chat_id", "expected"),
    [
        (lambda n: load_update("27_message"), -1001847508954, {"message_thread_id": 4}),
        (_business_message, 9001, {"business_connection_id": "bc-777"}),
        (_direct_messages_topic, -1009876543210, {"direct_messages_topic_id": 321}),
    ],
    ids=["forum-thread", "business-chat", "direct-messages-topic"],
)
async def test_a_message_to_a_conversation_goes_where_the_conversation_lives(
    app_client: httpx.AsyncClient,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    db_engine: AsyncEngine,
    settings: Settings,
    redis_client: Redis,
    update: Any,
    chat_id: int,
    expected: dict[str, Any],
) -> None:
    bot, connection_id = await connect(app_client, workspace, telegram_double)
    key, secret = webhook_credentials(telegram_double, bot)
    delivered = await post_update(app_client, key, secret, update(7001))
    assert delivered.status_code == 200, delivered.text
    conversations = (
        await app_client.get("/api/v1/conversations", headers=workspace.headers())
    ).json()["items"]
    [conversation] = [c for c in conversations if c["chat_id"] == chat_id]
    message = await request(
        app_client, workspace, connection_id, conversation_id=conversation["id"], text="answer"
    )
    async with dispatching(db_engine, settings, redis_client):
        await reaches(app_client, workspace, message["id"], "sent")
    [record] = telegram_double.sent_messages(bot)
    assert record.chat_id == chat_id and record.text == "answer"
    placed = {name: record.params.get(name) for name in expected}
    assert placed == expected
    # Only where the conversation lives: no other placement parameter is sent.
    others = {"message_thread_id", "business_connection_id", "direct_messages_topic_id"}
    assert not {name for name in others - set(expected) if name in record.params}
    inbox = (
        await app_client.get(
            f"/api/v1/conversations/{conversation['id']}/messages", headers=workspace.headers()
        )
    ).json()["items"]
    assert [(m["direction"], m["status"]) for m in inbox][-1] == ("outbound", "sent")


async def test_the_daily_limit_counts_what_was_sent_today_and_holds_the_rest_until_midnight(
    app_client: httpx.AsyncClient,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    db_engine: AsyncEngine,
    db_session_factory: async_sessionmaker[AsyncSession],
    settings: Settings,
    redis_client: Redis,
) -> None:
    bot, connection_id = await connect(app_client, workspace, telegram_double)
    patched = await app_client.patch(
        f"/api/v1/connections/{connection_id}",
        json={"daily_limit": 3},
        headers=workspace.headers(),
    )
    assert patched.status_code == 200
    first = await request(app_client, workspace, connection_id, chat_id=701, text="early")
    async with dispatching(db_engine, settings, redis_client):
        await reaches(app_client, workspace, first["id"], "sent")
    # A new worker (its pacer knows nothing of today) counts the one sent already.
    ids = [
        (await request(app_client, workspace, connection_id, chat_id=710 + n, text=f"t{n}"))["id"]
        for n in range(4)
    ]
    async with dispatching(db_engine, settings, redis_client):
        for message_id in ids[:2]:
            await reaches(app_client, workspace, message_id, "sent")

        async def held() -> list[OutboundMessage] | None:
            async with db_session_factory() as session:
                rows = (
                    (
                        await session.execute(
                            select(OutboundMessage).where(
                                OutboundMessage.id.in_([uuid.UUID(i) for i in ids[2:]])
                            )
                        )
                    )
                    .scalars()
                    .all()
                )
            waiting = [r for r in rows if r.status == MessageStatus.queued and r.attempts == 0]
            return (
                list(rows)
                if len(waiting) == 2 and all(r.lease_owner is None for r in rows)
                else None
            )

        rest = await eventually(held, "the messages over the limit to wait")
    assert sorted(r.text for r in telegram_double.sent_messages(bot)) == ["early", "t0", "t1"]
    tomorrow = utcnow().astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    tomorrow += timedelta(days=1)
    for row in rest:
        assert row.next_attempt_at is not None
        assert abs((row.next_attempt_at - tomorrow).total_seconds()) < 5
