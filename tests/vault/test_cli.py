"""`integrations vault status|rotate`, run as a real process on PostgreSQL."""

from __future__ import annotations

import base64
import os
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.connections.models import TelegramConnection, secret_context
from app.db import new_id
from app.vault import Vault, parse_keyring
from tests.conftest import WorkspaceFixture
from tests.test_cli import cli_env, run_cli

KEY_A = "kA:" + base64.urlsafe_b64encode(os.urandom(32)).decode()
KEY_B = "kB:" + base64.urlsafe_b64encode(os.urandom(32)).decode()
TOKEN = "424242:" + "T" * 35


async def _store_connection(
    factory: async_sessionmaker[AsyncSession], workspace: WorkspaceFixture, vault: Vault
) -> None:
    async with factory() as session:
        row = TelegramConnection(
            id=new_id(),
            workspace_id=workspace.id,
            name="cli",
            mode="webhook",
            bot_id=424242,
            bot_first_name="Cli",
        )
        row.bot_token = vault.seal(TOKEN, secret_context(row, "bot_token"))
        row.webhook_secret = vault.seal("s" * 43, secret_context(row, "webhook_secret"))
        row.webhook_secret_hash = vault.lookup_hash("s" * 43)
        row.webhook_key = vault.seal("k" * 32, secret_context(row, "webhook_key"))
        row.webhook_key_hash = vault.lookup_hash("k" * 32)
        session.add(row)
        await session.commit()


async def test_status_then_rotate_then_the_old_key_can_go(
    tmp_path: Path,
    database_url: str,
    workspace: WorkspaceFixture,
    db_session_factory: async_sessionmaker[AsyncSession],
) -> None:
    await _store_connection(db_session_factory, workspace, Vault(parse_keyring(KEY_A)))

    def cli(keys: str, *args: str) -> tuple[int, str, str]:
        env = cli_env(tmp_path, DATABASE_URL=database_url, VAULT_KEYS=keys)
        result = run_cli("vault", *args, env=env)
        return result.returncode, result.stdout, result.stderr

    code, out, _ = cli(f"{KEY_B},{KEY_A}", "status")
    assert code == 0, out
    assert out.count("ciphertexts kA=1") == 3  # token, secret and key of the one row
    assert "pending rotation: 5" in out  # 3 ciphertexts and 2 lookup hashes

    code, out, _ = cli(KEY_B, "status")
    assert code != 0
    assert "kA" in out and "missing" in out.lower()

    code, out, err = cli(f"{KEY_B},{KEY_A}", "rotate", "--batch-size", "1")
    assert code == 0, out + err
    assert "batch" in err  # progress while it runs
    assert "rotated" in out

    code, out, _ = cli(KEY_B, "status")
    assert code == 0, out

    code, out, err = cli(f"{KEY_B},{KEY_A}", "rotate")
    assert code == 0
    for secret in (KEY_A.split(":")[1], KEY_B.split(":")[1], TOKEN):
        assert secret not in out + err

    only_b = Vault(parse_keyring(KEY_B))
    async with db_session_factory() as session:
        row = (await session.execute(select(TelegramConnection))).scalar_one()
    assert row.bot_token is not None and row.webhook_key_hash is not None
    assert only_b.open(row.bot_token, secret_context(row, "bot_token")) == TOKEN
    assert only_b.matches("k" * 32, row.webhook_key_hash)


def test_production_without_keys_refuses_to_start(tmp_path: Path, unused_port: int) -> None:
    env = cli_env(tmp_path, APP_ENV="production")
    result = run_cli("serve", "--port", str(unused_port), env=env, timeout=30)
    assert result.returncode != 0
    assert "VAULT_KEYS" in result.stderr


def test_malformed_keyring_names_the_problem_not_the_key(tmp_path: Path) -> None:
    short = "k1:" + base64.urlsafe_b64encode(b"x" * 16).decode()
    result = run_cli("vault", "status", env=cli_env(tmp_path, VAULT_KEYS=short))
    assert result.returncode != 0
    assert "k1" in result.stderr
    assert short.split(":")[1] not in result.stderr
