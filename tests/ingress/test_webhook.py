"""The webhook hot path (SPEC section 5): every check, in order, on real PostgreSQL and Redis."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.connections.models import TelegramConnection
from app.connections.registration import WEBHOOK_PATH
from app.inbox.models import Conversation, ConversationMessage
from app.ingress.models import TelegramUpdate
from tests.conftest import WorkspaceFixture, make_settings, running_app
from tests.connections.helpers import connect_bot, webhook_credentials
from tests.ingress.helpers import stored_counts, stored_update_ids
from tests.telegram_double.double import TelegramDouble
from tests.telegram_double.fixtures import all_updates, load_update
from tests.telegram_double.state import FakeBot

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"


async def post_update(
    client: httpx.AsyncClient,
    key: str | None,
    secret: str | None,
    body: bytes | str | dict[str, Any],
    *,
    content_type: str = "application/json",
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    raw = json.dumps(body).encode() if isinstance(body, dict) else body
    all_headers = {"Content-Type": content_type, **(headers or {})}
    if secret is not None:
        all_headers[SECRET_HEADER] = secret
    params = {"key": key} if key is not None else {}
    return await client.post(WEBHOOK_PATH, params=params, content=raw, headers=all_headers)


@pytest.fixture
async def connected(
    app_client: httpx.AsyncClient, workspace: WorkspaceFixture, telegram_double: TelegramDouble
) -> tuple[FakeBot, str, str, str]:
    """A connected bot: (bot, connection id, webhook key, webhook secret)."""
    bot, body = await connect_bot(app_client, workspace, telegram_double)
    key, secret = webhook_credentials(telegram_double, bot)
    return bot, body["id"], key, secret


async def test_all_45_real_updates_are_stored_once_with_derived_records(
    app_client: httpx.AsyncClient,
    connected: tuple[FakeBot, str, str, str],
    telegram_double: TelegramDouble,
    db_session_factory: async_sessionmaker[AsyncSession],
) -> None:
    bot = connected[0]
    samples = all_updates()
    assert len(samples) == 45
    for name, sample in samples:
        status = await telegram_double.deliver(
            bot, sample, client=app_client, ignore_allowed_updates=True
        )
        assert status == 200, name
    assert telegram_double.pending_updates(bot) == []
    first = await stored_counts(db_session_factory)
    assert first["updates"] == 45
    assert first["contacts"] > 0 and first["conversations"] > 0 and first["messages"] > 0

    async with db_session_factory() as session:
        stored = {
            row.update_id: row for row in (await session.execute(select(TelegramUpdate))).scalars()
        }
        conversations = (await session.execute(select(Conversation))).scalars().all()
    for name, sample in samples:
        row = stored[sample["update_id"]]
        assert json.loads(row.payload) == sample, name
        assert row.source == "webhook"
    # Every chat an update names has its conversation.
    chat_ids = {c.chat_id for c in conversations}
    private = load_update("01_message")
    assert private["message"]["chat"]["id"] in chat_ids

    for name, sample in samples:
        status = await telegram_double.deliver(
            bot, sample, client=app_client, ignore_allowed_updates=True
        )
        assert status == 200, name
    assert await stored_counts(db_session_factory) == first


async def test_private_message_derives_contact_conversation_and_inbox_message(
    app_client: httpx.AsyncClient,
    connected: tuple[FakeBot, str, str, str],
    telegram_double: TelegramDouble,
    workspace: WorkspaceFixture,
) -> None:
    bot, connection_id = connected[0], connected[1]
    sample = load_update("01_message")
    assert await telegram_double.deliver(bot, sample, client=app_client) == 200

    contacts = (await app_client.get("/api/v1/contacts", headers=workspace.headers())).json()
    (contact,) = contacts["items"]
    sender = sample["message"]["from"]
    assert contact["telegram_chat_id"] == sender["id"]
    assert contact["telegram_username"] == sender["username"]
    assert contact["first_name"] == sender["first_name"]

    conversations = (
        await app_client.get("/api/v1/conversations", headers=workspace.headers())
    ).json()
    (conversation,) = conversations["items"]
    assert conversation["chat_id"] == sample["message"]["chat"]["id"]
    assert conversation["connection_id"] == connection_id

    messages = (
        await app_client.get(
            f"/api/v1/conversations/{conversation['id']}/messages", headers=workspace.headers()
        )
    ).json()
    (message,) = messages["items"]
    assert message["text"] == sample["message"]["text"]
    assert message["direction"] == "inbound"
    assert message["sender_contact_id"] == contact["id"]

    events = (
        await app_client.get(
            f"/api/v1/connections/{connection_id}/events", headers=workspace.headers()
        )
    ).json()
    assert [(e["update_id"], e["type"]) for e in events["items"]] == [
        (sample["update_id"], "message")
    ]


async def test_an_edit_updates_the_inbox_message_in_place(
    app_client: httpx.AsyncClient,
    connected: tuple[FakeBot, str, str, str],
    db_session_factory: async_sessionmaker[AsyncSession],
) -> None:
    _, _, key, secret = connected
    original = load_update("01_message")
    edited = {
        "update_id": original["update_id"] + 1,
        "edited_message": {**original["message"], "text": "hello there (edited)", "edit_date": 1},
    }
    for body in (original, edited):
        assert (await post_update(app_client, key, secret, body)).status_code == 200
    async with db_session_factory() as session:
        (message,) = (await session.execute(select(ConversationMessage))).scalars().all()
    assert message.text == "hello there (edited)" and message.edited_at is not None


async def test_duplicate_update_is_200_without_a_second_effect(
    app_client: httpx.AsyncClient,
    connected: tuple[FakeBot, str, str, str],
    db_session_factory: async_sessionmaker[AsyncSession],
) -> None:
    _, _, key, secret = connected
    sample = load_update("02_message")
    for _ in range(3):
        response = await post_update(app_client, key, secret, sample)
        assert response.status_code == 200
    counts = await stored_counts(db_session_factory)
    assert counts["updates"] == 1 and counts["messages"] == 1


@pytest.mark.parametrize(
    ("case", "status"),
    [
        ("missing key", 401),
        ("unknown key", 401),
        ("wrong secret", 401),
        ("missing secret header", 401),
        ("secret of another connection", 401),
        ("wrong content type", 415),
        ("one byte over 1 MiB", 413),
        ("over 1 MiB by streaming", 413),
        ("malformed JSON", 400),
        ("not UTF-8", 400),
        ("not an object", 400),
        ("update_id -1", 400),
        ('update_id "7"', 400),
        ("update_id missing", 400),
    ],
)
async def test_each_rejection_stores_nothing(
    case: str,
    status: int,
    app_client: httpx.AsyncClient,
    connected: tuple[FakeBot, str, str, str],
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    db_session_factory: async_sessionmaker[AsyncSession],
) -> None:
    _, _, key, secret = connected
    good = load_update("01_message")
    big = json.dumps({**good, "padding": "x" * (1024 * 1024)}).encode()
    if case == "one byte over 1 MiB":
        big = json.dumps(good).encode().ljust(1024 * 1024 + 1)
    args: dict[str, Any] = {"key": key, "secret": secret, "body": good}
    if case == "missing key":
        args["key"] = None
    elif case == "unknown key":
        args["key"] = "k" * 32
    elif case == "wrong secret":
        args["secret"] = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    elif case == "missing secret header":
        args["secret"] = None
    elif case == "secret of another connection":
        other, _ = await connect_bot(app_client, workspace, telegram_double)
        args["secret"] = webhook_credentials(telegram_double, other)[1]
    elif case == "wrong content type":
        args["content_type"] = "text/plain"
    elif case == "one byte over 1 MiB":
        args["body"] = big
    elif case == "malformed JSON":
        args["body"] = b'{"update_id": 1,'
    elif case == "not UTF-8":
        args["body"] = b'{"update_id": 1, "x": "\xff"}'
    elif case == "not an object":
        args["body"] = b"[1, 2]"
    elif case == "update_id -1":
        args["body"] = {**good, "update_id": -1}
    elif case == 'update_id "7"':
        args["body"] = {**good, "update_id": "7"}
    elif case == "update_id missing":
        args["body"] = {k: v for k, v in good.items() if k != "update_id"}

    if case == "over 1 MiB by streaming":

        async def chunks() -> Any:
            for _ in range(17):
                yield b"x" * 65536

        response = await app_client.post(
            WEBHOOK_PATH,
            params={"key": key},
            content=chunks(),
            headers={"Content-Type": "application/json", SECRET_HEADER: secret},
        )
    else:
        response = await post_update(app_client, **args)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"]
    counts = await stored_counts(db_session_factory)
    assert counts == {"updates": 0, "contacts": 0, "conversations": 0, "messages": 0}


async def test_every_authentication_failure_has_the_same_body(
    app_client: httpx.AsyncClient, connected: tuple[FakeBot, str, str, str]
) -> None:
    _, _, key, secret = connected
    sample = load_update("01_message")
    bodies = {
        (await post_update(app_client, None, secret, sample)).content,
        (await post_update(app_client, "nope", secret, sample)).content,
        (await post_update(app_client, key, "wrong", sample)).content,
        (await post_update(app_client, key, None, sample)).content,
    }
    assert len(bodies) == 1


async def test_previous_secret_works_within_its_grace_and_not_after(
    settings: Settings,
    app_client: httpx.AsyncClient,
    connected: tuple[FakeBot, str, str, str],
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    db_session_factory: async_sessionmaker[AsyncSession],
) -> None:
    bot, connection_id, key, old_secret = connected
    telegram_double.enforce_set_webhook_rate_limit = False
    rotated = await app_client.post(
        f"/api/v1/connections/{connection_id}/rotate-secret", headers=workspace.headers()
    )
    assert rotated.status_code == 200
    _, new_secret = webhook_credentials(telegram_double, bot)
    first, second, third = (
        load_update(name) for name in ("02_message", "03_message", "04_message")
    )
    assert (await post_update(app_client, key, new_secret, first)).status_code == 200
    assert (await post_update(app_client, key, old_secret, second)).status_code == 200

    # The grace period ends (moved into the past rather than waiting ten minutes).
    async with db_session_factory() as session:
        await session.execute(
            update(TelegramConnection).values(
                previous_secret_expires_at=datetime.now(UTC) - timedelta(seconds=1)
            )
        )
        await session.commit()
    # A fresh process: the connection cache of the first one may hold the old row
    # for a few seconds (the API's own changes invalidate it; this edit did not).
    async with running_app(settings) as (_app, fresh):
        assert (await post_update(fresh, key, old_secret, third)).status_code == 401
        assert (await post_update(fresh, key, new_secret, third)).status_code == 200
    assert sorted(await stored_update_ids(db_session_factory)) == sorted(
        u["update_id"] for u in (first, second, third)
    )


async def test_deleted_connection_key_answers_401(
    app_client: httpx.AsyncClient,
    connected: tuple[FakeBot, str, str, str],
    workspace: WorkspaceFixture,
) -> None:
    _, connection_id, key, secret = connected
    sample = load_update("01_message")
    assert (await post_update(app_client, key, secret, sample)).status_code == 200
    deleted = await app_client.delete(
        f"/api/v1/connections/{connection_id}", headers=workspace.headers()
    )
    assert deleted.status_code == 200
    later = {**sample, "update_id": sample["update_id"] + 1}
    assert (await post_update(app_client, key, secret, later)).status_code == 401


async def test_a_source_over_its_failed_auth_limit_is_refused_before_key_lookup(
    tmp_path: Path,
    database_url: str,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    redis_client: Any,
    db_session_factory: async_sessionmaker[AsyncSession],
) -> None:
    settings = make_settings(
        tmp_path,
        database_url,
        telegram_api_base=telegram_double.base_url,
        ingress_failed_auth_per_minute=3,
    )
    async with running_app(settings) as (_app, client):
        bot, _ = await connect_bot(client, workspace, telegram_double)
        key, secret = webhook_credentials(telegram_double, bot)
        sample = load_update("01_message")
        statuses = [(await post_update(client, key, "wrong", sample)).status_code for _ in range(3)]
        assert statuses == [401, 401, 401]
        refused = await post_update(client, key, "wrong", sample)
        assert refused.status_code == 429
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        # Even the right secret is refused now: the address is over its limit.
        right = await post_update(client, key, secret, sample)
        assert right.status_code == 429
    # The limit is shared through Redis: another process refuses the address too,
    async with running_app(settings) as (_app, replica):
        assert (await post_update(replica, key, secret, sample)).status_code == 429
    # while another address is not affected.
    async with running_app(settings, client_address="198.51.100.7") as (_app, other):
        assert (await post_update(other, key, secret, sample)).status_code == 200
    assert await stored_update_ids(db_session_factory) == [sample["update_id"]]


async def test_updates_over_the_connection_limit_get_429_with_retry_after(
    tmp_path: Path,
    database_url: str,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    redis_client: Any,
    db_session_factory: async_sessionmaker[AsyncSession],
) -> None:
    settings = make_settings(
        tmp_path,
        database_url,
        telegram_api_base=telegram_double.base_url,
        ingress_updates_per_second=1,
        ingress_updates_burst=3,
    )
    async with running_app(settings) as (_app, client):
        bot, _ = await connect_bot(client, workspace, telegram_double)
        key, secret = webhook_credentials(telegram_double, bot)
        base = load_update("01_message")
        statuses = []
        for n in range(5):
            response = await post_update(
                client, key, secret, {**base, "update_id": base["update_id"] + n}
            )
            statuses.append(response.status_code)
            if response.status_code == 429:
                assert response.headers["retry-after"] == "1"
    assert statuses[:3] == [200, 200, 200]
    assert 429 in statuses[3:]
    assert len(await stored_update_ids(db_session_factory)) == statuses.count(200)


async def test_forwarded_for_is_believed_only_from_a_trusted_proxy(
    tmp_path: Path,
    database_url: str,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    redis_client: Any,
) -> None:
    settings = make_settings(
        tmp_path,
        database_url,
        telegram_api_base=telegram_double.base_url,
        ingress_failed_auth_per_minute=1,
        ingress_trusted_proxies=["203.0.113.0/24"],
    )
    sample = load_update("01_message")
    async with running_app(settings) as (_app, client):
        bot, _ = await connect_bot(client, workspace, telegram_double)
        key, _secret = webhook_credentials(telegram_double, bot)
        via = {"X-Forwarded-For": "149.154.167.1"}
        assert (await post_update(client, key, "bad", sample, headers=via)).status_code == 401
        assert (await post_update(client, key, "bad", sample, headers=via)).status_code == 429
        # A different forwarded client is a different address.
        other = {"X-Forwarded-For": "149.154.167.2"}
        assert (await post_update(client, key, "bad", sample, headers=other)).status_code == 401


async def test_telegram_source_ranges_only_when_enabled(
    tmp_path: Path,
    database_url: str,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    redis_client: Any,
) -> None:
    settings = make_settings(
        tmp_path,
        database_url,
        telegram_api_base=telegram_double.base_url,
        ingress_telegram_ips_only=True,
        ingress_trusted_proxies=["203.0.113.0/24"],
    )
    sample = load_update("01_message")
    async with running_app(settings) as (_app, client):
        bot, _ = await connect_bot(client, workspace, telegram_double)
        key, secret = webhook_credentials(telegram_double, bot)
        outside = await post_update(client, key, secret, sample)
        assert outside.status_code == 403
        inside = await post_update(
            client, key, secret, sample, headers={"X-Forwarded-For": "91.108.4.10"}
        )
        assert inside.status_code == 200
