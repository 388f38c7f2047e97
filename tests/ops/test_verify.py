"""`integrations verify` as an operator runs it, against the Bot API double (and, for
`--connection`, the test database): the real command in a process of its own for a
few cases, and its `main()` in this process (a thread of its own, with the
environment a shell would give it) for the rest, which is several times faster."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.cli import main
from app.config import Settings, get_settings
from app.connections.models import TelegramConnection
from app.db import utcnow
from tests.conftest import PUBLIC_BASE_URL, TEST_VAULT_KEYS, WorkspaceFixture, running_app
from tests.connections.helpers import connect_bot, webhook_credentials
from tests.telegram_double.double import TelegramDouble
from tests.test_pipeline_processes import process_env


@dataclass
class Verified:
    returncode: int
    stdout: str
    stderr: str

    def line(self, check: str) -> str:
        """The output line of one check."""
        (found,) = [
            line for line in self.stdout.splitlines() if line[4:].lstrip().startswith(check + " ")
        ]
        return found

    def status(self, check: str) -> str:
        return self.line(check)[:4]


def verify(
    tmp_path: Path,
    double: TelegramDouble,
    *args: str,
    stdin: str | None = None,
    secrets: tuple[str, ...] = (),
    **env: str,
) -> Verified:
    """Run `integrations verify ARGS`; fails if any of `secrets` is in what it wrote."""
    result = subprocess.run(
        [sys.executable, "-m", "app", "verify", *args],
        env=process_env(tmp_path, TELEGRAM_API_BASE=double.base_url, **env),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    for secret in secrets:
        assert secret not in result.stdout
        assert secret not in result.stderr
    return Verified(result.returncode, result.stdout, result.stderr)


def verify_here(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    double: TelegramDouble,
    *args: str,
    secrets: tuple[str, ...] = (),
    **env: str,
) -> Verified:
    """`verify`, but through `app.cli.main` in a thread of this process."""
    shell = process_env(tmp_path, TELEGRAM_API_BASE=double.base_url, **env)
    for name in set(os.environ) - set(shell):
        monkeypatch.delenv(name)
    for name, value in shell.items():
        monkeypatch.setenv(name, value)
    out, err = io.StringIO(), io.StringIO()
    get_settings.cache_clear()
    try:
        # A thread of its own: main() runs its own event loop (asyncio.run).
        with (
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
            ThreadPoolExecutor(1) as pool,
        ):
            returncode = pool.submit(main, ["verify", *args]).result(timeout=60)
    finally:
        get_settings.cache_clear()
    result = Verified(returncode, out.getvalue(), err.getvalue())
    for secret in secrets:
        assert secret not in result.stdout
        assert secret not in result.stderr
    return result


def test_a_good_token_in_polling_mode_passes_every_check_and_sends_for_real(
    tmp_path: Path, telegram_double: TelegramDouble
) -> None:
    bot = telegram_double.add_bot(username="acme_bot")
    assert bot.token is not None
    result = verify(
        tmp_path,
        telegram_double,
        "--token-env",
        "BOT_TOKEN",
        "--chat-id",
        "501",
        secrets=(bot.token,),
        BOT_TOKEN=bot.token,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for check in ("token_format", "getMe", "getWebhookInfo", "webhook_absent", "getUpdates"):
        assert result.status(check) == "PASS", result.stdout
    assert "@acme_bot" in result.line("getMe")
    sent = telegram_double.sent_messages(bot)
    assert [(m.chat_id, m.text.startswith("Test message")) for m in sent] == [(501, True)]
    assert f"Sent message {sent[0].message_id} to chat 501" in result.line("sendMessage")
    assert result.stdout.splitlines()[-1] == "summary: 6 passed, 0 failed, 0 skipped"
    # The probe confirmed nothing: no offset was sent.
    (probe,) = telegram_double.calls_for("getUpdates", bot=bot)
    assert "offset" not in probe.params and probe.params["timeout"] == 0


def test_the_token_may_come_on_standard_input_and_json_is_for_scripts(
    tmp_path: Path, telegram_double: TelegramDouble
) -> None:
    bot = telegram_double.add_bot()
    assert bot.token is not None
    result = verify(
        tmp_path,
        telegram_double,
        "--token-stdin",
        "--json",
        stdin=bot.token + "\n",
        secrets=(bot.token,),
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is True
    assert report["summary"] == {"passed": 5, "failed": 0, "skipped": 1}
    statuses = {check["name"]: check["status"] for check in report["checks"]}
    assert statuses["sendMessage"] == "SKIP"
    assert statuses["getMe"] == "PASS"


def test_a_malformed_token_fails_without_a_network_call_and_is_not_echoed(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    telegram_double: TelegramDouble,
) -> None:
    token = "12345:tooshort-but-secret-looking"
    result = verify_here(monkeypatch, tmp_path, telegram_double, "--token", token, secrets=(token,))
    assert result.returncode == 1
    assert result.status("token_format") == "FAIL"
    assert result.status("getMe") == "SKIP"
    assert telegram_double.calls == []


def test_a_revoked_token_fails_get_me_with_the_fix(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    telegram_double: TelegramDouble,
) -> None:
    bot = telegram_double.add_bot()
    assert bot.token is not None
    token = bot.token
    telegram_double.revoke_token(token)
    result = verify_here(monkeypatch, tmp_path, telegram_double, "--token", token, secrets=(token,))
    assert result.returncode == 1
    assert result.status("getMe") == "FAIL"
    assert "@BotFather" in result.line("getMe")
    assert result.status("getWebhookInfo") == "SKIP"
    assert result.stdout.splitlines()[-1] == "summary: 1 passed, 1 failed, 4 skipped"


def test_polling_mode_fails_when_a_webhook_blocks_it(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    telegram_double: TelegramDouble,
) -> None:
    bot = telegram_double.add_bot()
    assert bot.token is not None
    telegram_double.set_webhook_url(bot, "https://other-app.example.net/hook?key=theirs-secret")
    result = verify_here(
        monkeypatch,
        tmp_path,
        telegram_double,
        "--token",
        bot.token,
        secrets=(bot.token, "theirs-secret"),
    )
    assert result.returncode == 1
    assert result.status("webhook_absent") == "FAIL"
    assert "other-app.example.net" in result.line("webhook_absent")
    assert "Resync" in result.line("webhook_absent")
    assert result.status("getUpdates") == "SKIP"
    assert telegram_double.calls_for("getUpdates") == []


def test_webhook_mode_names_the_other_host_and_a_recent_delivery_error(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    telegram_double: TelegramDouble,
) -> None:
    bot = telegram_double.add_bot()
    assert bot.token is not None
    telegram_double.set_webhook_url(bot, "https://other-app.example.net/hook?key=theirs-secret")
    telegram_double.set_webhook_error(bot, "SSL error {error:0A000086:SSL routines}")
    result = verify_here(
        monkeypatch,
        tmp_path,
        telegram_double,
        "--token",
        bot.token,
        secrets=(bot.token, "theirs-secret"),
        PUBLIC_BASE_URL=PUBLIC_BASE_URL,
    )
    assert result.returncode == 1
    assert result.status("webhook_url") == "FAIL"
    assert "Points to other-app.example.net, not here." in result.line("webhook_url")
    delivery = result.line("webhook_delivery")
    assert delivery.startswith("FAIL")
    assert "SSL error" in delivery and "update(s) waiting" in delivery
    assert "Fix: Telegram refuses this service's TLS certificate" in delivery


def test_a_send_to_a_chat_the_bot_cannot_reach_fails_with_a_hint(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    telegram_double: TelegramDouble,
) -> None:
    bot = telegram_double.add_bot()
    assert bot.token is not None
    telegram_double.set_chat(bot, 777, "not_found")
    result = verify_here(
        monkeypatch,
        tmp_path,
        telegram_double,
        "--token",
        bot.token,
        "--chat-id",
        "777",
        secrets=(bot.token,),
    )
    assert result.returncode == 1
    line = result.line("sendMessage")
    assert line.startswith("FAIL") and "chat not found" in line and "/start" in line


def test_telegram_unreachable_fails_get_me_and_skips_the_rest(tmp_path: Path) -> None:
    token = "123456789:AA" + "x" * 33
    result = subprocess.run(
        [sys.executable, "-m", "app", "verify", "--token", token],
        env=process_env(tmp_path, TELEGRAM_API_BASE="http://127.0.0.1:9"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert token not in result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[1].startswith("FAIL  getMe") and "did not answer" in lines[1]
    assert all(line.startswith("SKIP") for line in lines[2:-1])


# -- --connection: the stored token, the connection's mode and key --------------------


def connection_env(settings: Settings, **extra: str) -> dict[str, str]:
    return {
        "DATABASE_URL": settings.effective_database_url,
        "VAULT_KEYS": TEST_VAULT_KEYS,
        **extra,
    }


@pytest.fixture
async def webhook_connection(
    app_client: httpx.AsyncClient, workspace: WorkspaceFixture, telegram_double: TelegramDouble
) -> tuple[Any, str, tuple[str, ...]]:
    """A connected bot in webhook mode: (bot, connection id, its secrets)."""
    bot, body = await connect_bot(app_client, workspace, telegram_double)
    key, secret = webhook_credentials(telegram_double, bot)
    return bot, str(body["id"]), (bot.token, key, secret, workspace.admin_token)


async def test_a_connection_is_checked_with_its_stored_token_and_its_own_key(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    telegram_double: TelegramDouble,
    settings: Settings,
    webhook_connection: tuple[Any, str, tuple[str, ...]],
) -> None:
    bot, connection_id, secrets = webhook_connection
    result = verify_here(
        monkeypatch,
        tmp_path,
        telegram_double,
        "--connection",
        connection_id,
        secrets=secrets,
        **connection_env(settings, PUBLIC_BASE_URL=PUBLIC_BASE_URL),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.status("connection") == "PASS"
    assert "mode webhook" in result.line("connection")
    assert "this connection's key" in result.line("webhook_url")
    assert result.status("webhook_delivery") == "PASS"
    assert len(telegram_double.calls_for("getMe", bot=bot)) == 2  # connect, then verify


async def test_a_webhook_here_with_another_key_is_not_the_connections(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    telegram_double: TelegramDouble,
    settings: Settings,
    webhook_connection: tuple[Any, str, tuple[str, ...]],
) -> None:
    bot, connection_id, secrets = webhook_connection
    telegram_double.set_webhook_url(
        bot, f"{PUBLIC_BASE_URL}/api/v1/integrations/telegram/webhook?key=not-this-one"
    )
    result = verify_here(
        monkeypatch,
        tmp_path,
        telegram_double,
        "--connection",
        connection_id,
        secrets=secrets,
        **connection_env(settings, PUBLIC_BASE_URL=PUBLIC_BASE_URL),
    )
    assert result.returncode == 1
    assert "another key than this connection's" in result.line("webhook_url")
    assert "not-this-one" not in result.stdout


async def test_a_polled_connection_is_not_probed_while_a_worker_holds_its_lease(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    settings: Settings,
    db_session_factory: async_sessionmaker[AsyncSession],
    redis_client: Redis,
) -> None:
    polling = settings.model_copy(update={"public_base_url": None})
    async with running_app(polling) as (_app, client):
        bot, body = await connect_bot(client, workspace, telegram_double)
    assert body["mode"] == "polling"
    async with db_session_factory() as session:
        await session.execute(
            update(TelegramConnection)
            .where(TelegramConnection.id == uuid.UUID(body["id"]))
            .values(poll_owner="host:42:abcd", poll_lease_until=utcnow() + timedelta(minutes=5))
        )
        await session.commit()
    assert bot.token is not None
    result = verify_here(
        monkeypatch,
        tmp_path,
        telegram_double,
        "--connection",
        str(body["id"]),
        secrets=(bot.token, workspace.admin_token),
        **connection_env(settings),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Polled by worker host:42:abcd" in result.line("getUpdates")
    # Probing would have ended the worker's long poll with a 409.
    assert telegram_double.calls_for("getUpdates", bot=bot) == []


async def test_an_unknown_connection_is_an_error_on_stderr(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    telegram_double: TelegramDouble,
    settings: Settings,
    db_session_factory: async_sessionmaker[AsyncSession],
) -> None:
    missing = uuid.uuid4()
    result = verify_here(
        monkeypatch,
        tmp_path,
        telegram_double,
        "--connection",
        str(missing),
        **connection_env(settings),
    )
    assert result.returncode == 1
    assert f"no live connection with id {missing}" in result.stderr
    assert result.stdout == ""
