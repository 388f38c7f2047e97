"""Creating a Telegram connection: every path of SPEC section 4, steps 1-6."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.connections.models import TelegramConnection
from app.connections.registration import ALLOWED_UPDATES, WEBHOOK_PATH
from tests.auth.test_tokens_api import assert_error
from tests.conftest import PUBLIC_BASE_URL, WorkspaceFixture, new_workspace, running_app
from tests.connections.helpers import connect_bot, webhook_credentials
from tests.telegram_double.double import TelegramDouble

CREATE = "/api/v1/connections/telegram"


async def test_create_registers_a_unique_webhook_and_returns_no_secret(
    app_client: httpx.AsyncClient,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    db_session_factory: async_sessionmaker[AsyncSession],
) -> None:
    bot, body = await connect_bot(
        app_client, workspace, telegram_double, username="acme_support_bot", first_name="Acme"
    )
    assert body["provider"] == "telegram"
    assert body["status"] == "active" and body["mode"] == "webhook"
    assert body["bot"] == {"id": bot.bot_id, "username": "acme_support_bot", "first_name": "Acme"}
    assert body["approval_mode"] == "required"
    assert body["warnings"] == []
    for name in ("id", "name", "daily_limit", "created_at"):
        assert name in body

    (call,) = telegram_double.calls_for("setWebhook")
    url = urlsplit(call.params["url"])
    assert f"{url.scheme}://{url.netloc}{url.path}" == PUBLIC_BASE_URL + WEBHOOK_PATH
    key = parse_qs(url.query)["key"][0]
    # At least 128 random bits: 22 characters of base64url.
    assert re.fullmatch(r"[A-Za-z0-9_-]{22,}", key)
    secret = call.params["secret_token"]
    assert re.fullmatch(r"[A-Za-z0-9_-]{32,256}", secret)
    assert call.params["allowed_updates"] == list(ALLOWED_UPDATES)
    assert call.params["max_connections"] == 40

    assert bot.token is not None
    for plaintext in (bot.token, secret, key):
        assert plaintext not in str(body)

    async with db_session_factory() as session:
        row = (await session.execute(select(TelegramConnection))).scalar_one()
    assert row.workspace_id == workspace.id and row.bot_id == bot.bot_id
    assert "***" in repr(row.bot_token)
    assert bot.token not in repr(row)


async def test_every_allowed_update_kind_is_a_real_update_field(
    telegram_double: TelegramDouble,
) -> None:
    assert set(ALLOWED_UPDATES) <= telegram_double.update_kinds


async def test_two_connections_get_different_keys_and_secrets(
    app_client: httpx.AsyncClient, workspace: WorkspaceFixture, telegram_double: TelegramDouble
) -> None:
    first, _ = await connect_bot(app_client, workspace, telegram_double)
    second, _ = await connect_bot(app_client, workspace, telegram_double)
    key_a, secret_a = webhook_credentials(telegram_double, first)
    key_b, secret_b = webhook_credentials(telegram_double, second)
    assert key_a != key_b and secret_a != secret_b


async def test_malformed_token_is_422_without_any_telegram_call(
    app_client: httpx.AsyncClient, workspace: WorkspaceFixture, telegram_double: TelegramDouble
) -> None:
    for token in ("not-a-token", "123:short", "abc:" + "x" * 35, "123456:" + "x" * 34 + "!"):
        response = await app_client.post(
            CREATE, json={"bot_token": token}, headers=workspace.headers()
        )
        error = assert_error(response, 422, "validation_error")
        assert error["field"] == "bot_token"
        assert token not in response.text
    assert telegram_double.calls == []


async def test_unknown_token_is_422_invalid_bot_token(
    app_client: httpx.AsyncClient, workspace: WorkspaceFixture, telegram_double: TelegramDouble
) -> None:
    token = "123456789:" + "A" * 35
    response = await app_client.post(CREATE, json={"bot_token": token}, headers=workspace.headers())
    assert_error(response, 422, "invalid_bot_token")
    assert token not in response.text
    assert [c.method for c in telegram_double.calls] == ["getMe"]


async def test_telegram_server_error_is_502_telegram_unavailable(
    app_client: httpx.AsyncClient, workspace: WorkspaceFixture, telegram_double: TelegramDouble
) -> None:
    bot = telegram_double.add_bot()
    telegram_double.fail_next("getMe", status=502, description="Bad Gateway")
    response = await app_client.post(
        CREATE, json={"bot_token": bot.token}, headers=workspace.headers()
    )
    assert_error(response, 502, "telegram_unavailable")
    assert telegram_double.calls_for("setWebhook") == []


async def test_telegram_unreachable_is_502_telegram_unavailable(
    tmp_path: Path,
    database_url: str,
    workspace: WorkspaceFixture,
    unused_port: int,
    telegram_double: TelegramDouble,
) -> None:
    from tests.conftest import make_settings

    settings = make_settings(
        tmp_path, database_url, telegram_api_base=f"http://127.0.0.1:{unused_port}"
    )
    async with running_app(settings) as (_app, client):
        response = await client.post(
            CREATE, json={"bot_token": "123456789:" + "B" * 35}, headers=workspace.headers()
        )
    assert_error(response, 502, "telegram_unavailable")
    assert "B" * 35 not in response.text


async def test_a_user_account_token_is_refused(
    app_client: httpx.AsyncClient, workspace: WorkspaceFixture, telegram_double: TelegramDouble
) -> None:
    user = telegram_double.add_bot(is_bot=False)
    response = await app_client.post(
        CREATE, json={"bot_token": user.token}, headers=workspace.headers()
    )
    assert_error(response, 422, "not_a_bot")
    assert telegram_double.calls_for("setWebhook") == []


async def test_bot_of_another_workspace_is_409_without_naming_it(
    app_client: httpx.AsyncClient,
    workspace: WorkspaceFixture,
    other_workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
) -> None:
    bot, _ = await connect_bot(app_client, other_workspace, telegram_double)
    response = await app_client.post(
        CREATE, json={"bot_token": bot.token}, headers=workspace.headers()
    )
    assert_error(response, 409, "bot_already_connected")
    assert str(other_workspace.id) not in response.text
    assert "Globex" not in response.text
    assert len(telegram_double.calls_for("setWebhook")) == 1


async def test_bot_already_connected_here_names_the_connection(
    app_client: httpx.AsyncClient, workspace: WorkspaceFixture, telegram_double: TelegramDouble
) -> None:
    bot, body = await connect_bot(app_client, workspace, telegram_double)
    response = await app_client.post(
        CREATE, json={"bot_token": bot.token}, headers=workspace.headers()
    )
    error = assert_error(response, 409, "bot_already_connected_here")
    assert error["connection_id"] == body["id"]


async def test_refused_set_webhook_is_502_with_telegrams_reason_and_removes_the_claim(
    app_client: httpx.AsyncClient,
    workspace: WorkspaceFixture,
    other_workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
) -> None:
    bot = telegram_double.add_bot()
    reason = "Bad Request: bad webhook: Webhook can be set up only on ports 80, 88, 443 or 8443"
    telegram_double.fail_next("setWebhook", status=400, description=reason)
    response = await app_client.post(
        CREATE, json={"bot_token": bot.token}, headers=workspace.headers()
    )
    error = assert_error(response, 502, "telegram_error")
    assert reason in str(error["message"])
    listed = await app_client.get("/api/v1/connections", headers=workspace.headers())
    assert listed.json()["items"] == []
    # The claim is gone: the bot can be connected, even by another workspace.
    await connect_bot(app_client, other_workspace, telegram_double, bot=bot)


async def test_ten_workspaces_racing_for_one_bot_yield_one_winner(
    app_client: httpx.AsyncClient,
    db_session_factory: async_sessionmaker[AsyncSession],
    telegram_double: TelegramDouble,
) -> None:
    bot = telegram_double.add_bot()
    workspaces = [await new_workspace(db_session_factory, f"w{n}") for n in range(10)]
    responses = await asyncio.gather(
        *(
            app_client.post(CREATE, json={"bot_token": bot.token}, headers=w.headers())
            for w in workspaces
        )
    )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [201] + [409] * 9, [r.text for r in responses]
    assert all(
        r.json()["error"]["code"] == "bot_already_connected"
        for r in responses
        if r.status_code == 409
    )
    (winner,) = [r for r in responses if r.status_code == 201]
    assert len(telegram_double.calls_for("setWebhook")) == 1
    async with db_session_factory() as session:
        rows = (await session.execute(select(TelegramConnection))).scalars().all()
    assert [str(row.id) for row in rows] == [winner.json()["id"]]


async def test_replacing_a_foreign_webhook_warns_naming_only_the_host(
    app_client: httpx.AsyncClient, workspace: WorkspaceFixture, telegram_double: TelegramDouble
) -> None:
    bot = telegram_double.add_bot()
    telegram_double.set_webhook_url(bot, "https://other-app.example.org/secret-path/hook?t=1")
    _, body = await connect_bot(app_client, workspace, telegram_double, bot=bot)
    (warning,) = body["warnings"]
    assert "other-app.example.org" in warning
    assert "secret-path" not in warning and "t=1" not in warning


async def test_without_public_url_connections_use_long_polling(
    tmp_path: Path,
    database_url: str,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
) -> None:
    from tests.conftest import make_settings

    settings: Settings = make_settings(
        tmp_path, database_url, telegram_api_base=telegram_double.base_url, public_base_url=None
    )
    async with running_app(settings) as (_app, client):
        bot, body = await connect_bot(client, workspace, telegram_double)
    assert body["mode"] == "polling"
    assert telegram_double.calls_for("setWebhook") == []
    assert len(telegram_double.calls_for("deleteWebhook")) == 1
    assert telegram_double.webhook(bot).url == ""


async def test_only_admins_create_connections(
    app_client: httpx.AsyncClient, workspace: WorkspaceFixture, telegram_double: TelegramDouble
) -> None:
    from app.auth.models import Role

    _, sender = await workspace.token(Role.sender)
    bot = telegram_double.add_bot()
    response = await app_client.post(
        CREATE, json={"bot_token": bot.token}, headers=workspace.headers(sender)
    )
    assert_error(response, 403, "forbidden")
    assert telegram_double.calls == []
