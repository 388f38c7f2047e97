"""Reading, changing, checking and removing connections (SPEC section 4)."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.auth.models import Role
from app.connections.models import TelegramConnection, secret_context
from app.vault import Vault, parse_keyring
from tests.auth.test_tokens_api import assert_error
from tests.conftest import TEST_VAULT_KEYS, WorkspaceFixture, make_settings, running_app
from tests.connections.helpers import connect_bot, webhook_credentials
from tests.telegram_double.double import TelegramDouble

BASE = "/api/v1/connections"


@pytest.fixture
def vault() -> Vault:
    return Vault(parse_keyring(TEST_VAULT_KEYS))


async def load_row(
    factory: async_sessionmaker[AsyncSession], connection_id: str
) -> TelegramConnection:
    async with factory() as session:
        return (
            await session.execute(
                select(TelegramConnection).where(TelegramConnection.id == uuid.UUID(connection_id))
            )
        ).scalar_one()


async def test_list_get_and_patch_within_the_workspace(
    app_client: httpx.AsyncClient,
    workspace: WorkspaceFixture,
    other_workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
) -> None:
    _, mine = await connect_bot(app_client, workspace, telegram_double)
    _, theirs = await connect_bot(app_client, other_workspace, telegram_double)
    _, reviewer = await workspace.token(Role.reviewer)

    listed = await app_client.get(BASE, headers=workspace.headers(reviewer))
    assert [item["id"] for item in listed.json()["items"]] == [mine["id"]]
    got = await app_client.get(f"{BASE}/{mine['id']}", headers=workspace.headers(reviewer))
    assert got.status_code == 200 and got.json()["bot"] == mine["bot"]
    foreign = await app_client.get(f"{BASE}/{theirs['id']}", headers=workspace.headers())
    assert_error(foreign, 404, "not_found")

    patched = await app_client.patch(
        f"{BASE}/{mine['id']}",
        json={"name": "Support", "approval_mode": "none", "daily_limit": 250},
        headers=workspace.headers(),
    )
    assert patched.status_code == 200
    assert (patched.json()["name"], patched.json()["approval_mode"]) == ("Support", "none")
    assert patched.json()["daily_limit"] == 250

    bad = await app_client.patch(
        f"{BASE}/{mine['id']}", json={"approval_mode": "sometimes"}, headers=workspace.headers()
    )
    assert assert_error(bad, 422, "validation_error")["field"] == "approval_mode"
    by_reviewer = await app_client.patch(
        f"{BASE}/{mine['id']}", json={"name": "x"}, headers=workspace.headers(reviewer)
    )
    assert_error(by_reviewer, 403, "forbidden")
    cross = await app_client.patch(
        f"{BASE}/{theirs['id']}", json={"name": "mine now"}, headers=workspace.headers()
    )
    assert_error(cross, 404, "not_found")


async def test_health_is_healthy_when_the_webhook_is_ours(
    app_client: httpx.AsyncClient, workspace: WorkspaceFixture, telegram_double: TelegramDouble
) -> None:
    _, body = await connect_bot(app_client, workspace, telegram_double)
    response = await app_client.get(f"{BASE}/{body['id']}/health", headers=workspace.headers())
    assert response.status_code == 200
    health = response.json()
    assert health["verdict"] == "healthy" and health["webhook_url_is_ours"] is True
    assert health["pending_update_count"] == 0 and health["hint"] is None


async def test_health_is_degraded_on_recent_delivery_errors(
    app_client: httpx.AsyncClient, workspace: WorkspaceFixture, telegram_double: TelegramDouble
) -> None:
    bot, body = await connect_bot(app_client, workspace, telegram_double)
    telegram_double.set_webhook_error(
        bot, "Wrong response from the webhook: 503 Service Unavailable", int(time.time()) - 60
    )
    health = (
        await app_client.get(f"{BASE}/{body['id']}/health", headers=workspace.headers())
    ).json()
    assert health["verdict"] == "degraded"
    assert health["last_error_message"].startswith("Wrong response from the webhook")
    assert "503" in health["hint"]
    status = (await app_client.get(f"{BASE}/{body['id']}", headers=workspace.headers())).json()
    assert status["status"] == "degraded"


async def test_health_is_action_required_when_another_app_took_the_webhook(
    app_client: httpx.AsyncClient, workspace: WorkspaceFixture, telegram_double: TelegramDouble
) -> None:
    bot, body = await connect_bot(app_client, workspace, telegram_double)
    telegram_double.set_webhook_url(bot, "https://elsewhere.example.net/bot")
    health = (
        await app_client.get(f"{BASE}/{body['id']}/health", headers=workspace.headers())
    ).json()
    assert health["verdict"] == "action_required"
    assert health["webhook_url_is_ours"] is False
    assert "elsewhere.example.net" in health["hint"]
    status = (await app_client.get(f"{BASE}/{body['id']}", headers=workspace.headers())).json()
    assert status["status"] == "action_required"
    assert status["status_hint"] == health["hint"]

    # Resync takes the webhook back and the next check is healthy again.
    resynced = await app_client.post(f"{BASE}/{body['id']}/resync", headers=workspace.headers())
    assert resynced.status_code == 200
    assert resynced.json()["status"] == "active"
    again = (
        await app_client.get(f"{BASE}/{body['id']}/health", headers=workspace.headers())
    ).json()
    assert again["verdict"] == "healthy"


async def test_health_is_action_required_when_the_token_was_revoked(
    app_client: httpx.AsyncClient, workspace: WorkspaceFixture, telegram_double: TelegramDouble
) -> None:
    bot, body = await connect_bot(app_client, workspace, telegram_double)
    assert bot.token is not None
    telegram_double.revoke_token(bot.token)
    health = (
        await app_client.get(f"{BASE}/{body['id']}/health", headers=workspace.headers())
    ).json()
    assert health["verdict"] == "action_required"
    assert "token" in health["hint"].lower()


async def test_rotate_secret_registers_a_new_secret_and_keeps_the_old_for_the_grace(
    app_client: httpx.AsyncClient,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    db_session_factory: async_sessionmaker[AsyncSession],
    vault: Vault,
) -> None:
    telegram_double.enforce_set_webhook_rate_limit = False
    bot, body = await connect_bot(app_client, workspace, telegram_double)
    key_before, secret_before = webhook_credentials(telegram_double, bot)
    response = await app_client.post(
        f"{BASE}/{body['id']}/rotate-secret", headers=workspace.headers()
    )
    assert response.status_code == 200
    key_after, secret_after = webhook_credentials(telegram_double, bot)
    assert key_after == key_before and secret_after != secret_before
    assert secret_after not in response.text

    row = await load_row(db_session_factory, body["id"])
    assert row.webhook_secret_hash is not None and row.previous_secret_hash is not None
    assert vault.matches(secret_after, row.webhook_secret_hash)
    assert vault.matches(secret_before, row.previous_secret_hash)
    assert row.previous_secret_expires_at is not None
    remaining = row.previous_secret_expires_at - datetime.now(UTC)
    assert timedelta(minutes=9) < remaining <= timedelta(minutes=10)


async def test_rotate_secret_waits_out_telegrams_one_second_rule(
    app_client: httpx.AsyncClient, workspace: WorkspaceFixture, telegram_double: TelegramDouble
) -> None:
    """setWebhook twice within a second is 429 (retry after 1): the service waits it out."""
    _, body = await connect_bot(app_client, workspace, telegram_double)
    response = await app_client.post(
        f"{BASE}/{body['id']}/rotate-secret", headers=workspace.headers()
    )
    assert response.status_code == 200
    statuses = [call.status for call in telegram_double.calls_for("setWebhook")]
    assert statuses == [200, 429, 200]


async def test_unconfirmed_rotation_accepts_both_secrets_until_resync(
    app_client: httpx.AsyncClient,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    db_session_factory: async_sessionmaker[AsyncSession],
    vault: Vault,
) -> None:
    """Telegram may have applied a rotation whose answer we never saw: never revert."""
    telegram_double.enforce_set_webhook_rate_limit = False
    bot, body = await connect_bot(app_client, workspace, telegram_double)
    _, old_secret = webhook_credentials(telegram_double, bot)
    telegram_double.fail_next("setWebhook", status=500, description="Internal Server Error")
    response = await app_client.post(
        f"{BASE}/{body['id']}/rotate-secret", headers=workspace.headers()
    )
    assert_error(response, 502, "telegram_unavailable")
    row = await load_row(db_session_factory, body["id"])
    assert row.webhook_secret is not None and row.previous_secret_hash is not None
    new_secret = vault.open(row.webhook_secret, secret_context(row, "webhook_secret"))
    assert new_secret != old_secret
    assert vault.matches(old_secret, row.previous_secret_hash)
    assert row.previous_secret_expires_at is not None
    assert row.previous_secret_expires_at - datetime.now(UTC) > timedelta(hours=23)
    assert row.status == "action_required" and "resync" in (row.status_hint or "")

    resynced = await app_client.post(f"{BASE}/{body['id']}/resync", headers=workspace.headers())
    assert resynced.status_code == 200 and resynced.json()["status"] == "active"
    assert webhook_credentials(telegram_double, bot)[1] == new_secret
    settled = await load_row(db_session_factory, body["id"])
    assert settled.previous_secret_expires_at is not None
    assert settled.previous_secret_expires_at - datetime.now(UTC) <= timedelta(minutes=10)


async def test_concurrent_changes_to_one_connection_get_409(
    app_client: httpx.AsyncClient, workspace: WorkspaceFixture, telegram_double: TelegramDouble
) -> None:
    telegram_double.enforce_set_webhook_rate_limit = False
    bot, body = await connect_bot(app_client, workspace, telegram_double)
    telegram_double.delay_next("setWebhook", 1.0)
    rotation = asyncio.create_task(
        app_client.post(f"{BASE}/{body['id']}/rotate-secret", headers=workspace.headers())
    )
    for _ in range(100):
        if len(telegram_double.calls_for("setWebhook")) == 2:
            break
        await asyncio.sleep(0.02)
    deleted = await app_client.delete(f"{BASE}/{body['id']}", headers=workspace.headers())
    assert_error(deleted, 409, "operation_in_progress")
    assert (await rotation).status_code == 200
    # Once the rotation is done the connection can be deleted, and nothing re-registers it.
    assert (
        await app_client.delete(f"{BASE}/{body['id']}", headers=workspace.headers())
    ).status_code == 200
    assert telegram_double.webhook(bot).url == ""


async def test_create_whose_set_webhook_answer_was_lost_withdraws_the_webhook(
    tmp_path: Path,
    database_url: str,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    db_session_factory: async_sessionmaker[AsyncSession],
) -> None:
    """Telegram applied setWebhook and even delivered an update; its answer was lost."""
    from app.ingress.models import TelegramUpdate
    from tests.telegram_double.fixtures import load_update

    settings = make_settings(
        tmp_path,
        database_url,
        telegram_api_base=telegram_double.base_url,
        telegram_request_timeout=1.0,
    )
    bot = telegram_double.add_bot()
    telegram_double.delay_next("setWebhook", 2.0, after_execute=True)
    async with running_app(settings) as (_app, client):
        creating = asyncio.create_task(
            client.post(
                f"{BASE}/telegram", json={"bot_token": bot.token}, headers=workspace.headers()
            )
        )
        for _ in range(100):
            if telegram_double.webhook(bot).url:
                break
            await asyncio.sleep(0.01)
        delivered = await telegram_double.deliver(bot, load_update("01_message"), client=client)
        response = await creating
    assert delivered == 200
    assert_error(response, 502, "telegram_unavailable")
    # The service saw no answer and took the webhook back.
    assert telegram_double.webhook(bot).url == ""
    async with db_session_factory() as session:
        (row,) = (await session.execute(select(TelegramConnection))).scalars().all()
        stored = (await session.execute(select(TelegramUpdate))).scalars().all()
    # The claim is released (the bot can be connected again), the acknowledged update kept.
    assert row.deleted_at is not None and row.bot_token is None and row.webhook_key_hash is None
    assert [u.update_id for u in stored] == [load_update("01_message")["update_id"]]


async def test_token_replacement_keeps_the_connection_and_reregisters(
    app_client: httpx.AsyncClient,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    db_session_factory: async_sessionmaker[AsyncSession],
    vault: Vault,
) -> None:
    telegram_double.enforce_set_webhook_rate_limit = False
    bot, body = await connect_bot(app_client, workspace, telegram_double)
    new_token = telegram_double.rotate_token(bot)
    response = await app_client.put(
        f"{BASE}/{body['id']}/token", json={"bot_token": new_token}, headers=workspace.headers()
    )
    assert response.status_code == 200, response.text
    assert response.json()["id"] == body["id"]
    assert response.json()["created_at"] == body["created_at"]
    assert new_token not in response.text
    assert telegram_double.calls_for("setWebhook")[-1].token == new_token

    row = await load_row(db_session_factory, body["id"])
    assert row.bot_token is not None
    assert vault.open(row.bot_token, secret_context(row, "bot_token")) == new_token


async def test_token_of_a_different_bot_is_refused(
    app_client: httpx.AsyncClient, workspace: WorkspaceFixture, telegram_double: TelegramDouble
) -> None:
    _, body = await connect_bot(app_client, workspace, telegram_double)
    stranger = telegram_double.add_bot()
    response = await app_client.put(
        f"{BASE}/{body['id']}/token",
        json={"bot_token": stranger.token},
        headers=workspace.headers(),
    )
    assert_error(response, 422, "different_bot")


async def test_delete_removes_webhook_and_destroys_credentials(
    app_client: httpx.AsyncClient,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    db_session_factory: async_sessionmaker[AsyncSession],
) -> None:
    bot, body = await connect_bot(app_client, workspace, telegram_double)
    response = await app_client.delete(f"{BASE}/{body['id']}", headers=workspace.headers())
    assert response.status_code == 200
    assert response.json() == {"id": body["id"], "deleted": True, "remote_cleanup": "ok"}
    assert telegram_double.webhook(bot).url == ""
    assert_error(
        await app_client.get(f"{BASE}/{body['id']}", headers=workspace.headers()), 404, "not_found"
    )
    row = await load_row(db_session_factory, body["id"])
    assert row.deleted_at is not None
    assert (row.bot_token, row.webhook_secret, row.webhook_key) == (None, None, None)
    assert (row.webhook_secret_hash, row.webhook_key_hash) == (None, None)
    # The bot is free again.
    await connect_bot(app_client, workspace, telegram_double, bot=bot)


async def test_delete_with_a_revoked_token_still_removes_and_says_cleanup_failed(
    app_client: httpx.AsyncClient, workspace: WorkspaceFixture, telegram_double: TelegramDouble
) -> None:
    bot, body = await connect_bot(app_client, workspace, telegram_double)
    assert bot.token is not None
    telegram_double.revoke_token(bot.token)
    response = await app_client.delete(f"{BASE}/{body['id']}", headers=workspace.headers())
    assert response.status_code == 200
    result = response.json()
    assert result["deleted"] is True and result["remote_cleanup"] == "failed"
    assert "deleteWebhook" in result["hint"]
    listed = await app_client.get(BASE, headers=workspace.headers())
    assert listed.json()["items"] == []


async def test_delete_while_telegram_fails_keeps_the_connection_and_its_credentials(
    app_client: httpx.AsyncClient,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    db_session_factory: async_sessionmaker[AsyncSession],
) -> None:
    bot, body = await connect_bot(app_client, workspace, telegram_double)
    telegram_double.fail_next("deleteWebhook", status=502, description="Bad Gateway")
    response = await app_client.delete(f"{BASE}/{body['id']}", headers=workspace.headers())
    assert_error(response, 502, "telegram_unavailable")
    row = await load_row(db_session_factory, body["id"])
    assert row.deleted_at is None and row.bot_token is not None
    assert telegram_double.webhook(bot).url != ""
    retried = await app_client.delete(f"{BASE}/{body['id']}", headers=workspace.headers())
    assert retried.status_code == 200 and retried.json()["remote_cleanup"] == "ok"


async def test_no_plaintext_secret_in_any_table(
    app_client: httpx.AsyncClient,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    db_session_factory: async_sessionmaker[AsyncSession],
) -> None:
    telegram_double.enforce_set_webhook_rate_limit = False
    bot, body = await connect_bot(app_client, workspace, telegram_double)
    _, old_secret = webhook_credentials(telegram_double, bot)
    await app_client.post(f"{BASE}/{body['id']}/rotate-secret", headers=workspace.headers())
    key, secret = webhook_credentials(telegram_double, bot)
    assert bot.token is not None
    plaintexts = [bot.token, bot.token.partition(":")[2], key, secret, old_secret]

    async with db_session_factory() as session:
        tables = (
            await session.execute(
                text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            )
        ).scalars()
        dump = []
        for table in tables:
            rows = await session.execute(text(f'SELECT * FROM "{table}"'))
            dump.extend(str(value) for row in rows for value in row)
    assert dump, "the dump read nothing"
    joined = "\n".join(dump)
    for plaintext in plaintexts:
        assert plaintext not in joined


async def test_no_secret_reaches_the_logs_across_the_lifecycle(
    app_client: httpx.AsyncClient,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from app.logging import configure_logging

    telegram_double.enforce_set_webhook_rate_limit = False
    configure_logging(json_output=True, level="DEBUG")
    try:
        bot, body = await connect_bot(app_client, workspace, telegram_double)
        original_token = bot.token
        _, first_secret = webhook_credentials(telegram_double, bot)
        await app_client.post(f"{BASE}/{body['id']}/rotate-secret", headers=workspace.headers())
        key, secret = webhook_credentials(telegram_double, bot)
        await app_client.get(f"{BASE}/{body['id']}/health", headers=workspace.headers())
        new_token = telegram_double.rotate_token(bot)
        await app_client.put(
            f"{BASE}/{body['id']}/token", json={"bot_token": new_token}, headers=workspace.headers()
        )
        telegram_double.revoke_token(new_token)
        await app_client.delete(f"{BASE}/{body['id']}", headers=workspace.headers())
        logs = capsys.readouterr().err
    finally:
        configure_logging(json_output=False, level="DEBUG")
    assert "connection_created" in logs and "delete_webhook_refused" in logs
    assert original_token is not None and original_token != new_token
    for plaintext in (original_token, new_token, key, secret, first_secret, workspace.admin_token):
        assert plaintext not in logs


async def test_live_health_checks_are_limited_per_connection(
    app_client: httpx.AsyncClient, workspace: WorkspaceFixture, telegram_double: TelegramDouble
) -> None:
    _, body = await connect_bot(app_client, workspace, telegram_double)
    statuses = [
        (await app_client.get(f"{BASE}/{body['id']}/health", headers=workspace.headers()))
        for _ in range(12)
    ]
    codes = [r.status_code for r in statuses]
    assert codes[:10] == [200] * 10 and codes[10:] == [429, 429]
    assert int(statuses[-1].headers["retry-after"]) >= 1
    assert statuses[-1].json()["error"]["code"] == "rate_limited"
    assert len(telegram_double.calls_for("getWebhookInfo")) == 11  # 1 at create + 10 checks
