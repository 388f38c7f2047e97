"""The `integrations` command, run as a real process."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.auth.models import ApiToken, Workspace
from app.auth.tokens import hash_api_token
from tests.conftest import WorkspaceFixture
from tests.leaks import registry as leaks


def run_cli(
    *args: str, env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "app", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    # The command's log; stdout is its output (a new token, printed on purpose).
    leaks.add_text("process-logs", result.stderr)
    return result


def cli_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DATABASE_", "REDIS_", "VAULT_", "PUBLIC_BASE", "TELEGRAM_"))
    }
    env.update({"DATA_DIR": str(tmp_path / "data"), "APP_ENV": "development"})
    env.update(extra)
    return env


async def test_workspace_create_json_prints_id_and_a_working_admin_token(
    tmp_path: Path, database_url: str, db_session_factory: async_sessionmaker[AsyncSession]
) -> None:
    result = run_cli(
        "workspace", "create", "Initech", "--json", env=cli_env(tmp_path, DATABASE_URL=database_url)
    )
    assert result.returncode == 0, result.stderr
    output = json.loads(result.stdout)
    assert set(output) == {"workspace_id", "token"}
    assert output["token"].startswith("wsk_")
    async with db_session_factory() as session:
        workspace = await session.get(Workspace, uuid.UUID(output["workspace_id"]))
        token = (
            await session.execute(
                select(ApiToken).where(ApiToken.token_hash == hash_api_token(output["token"]))
            )
        ).scalar_one()
    assert workspace is not None and workspace.name == "Initech"
    assert token.role == "admin" and token.workspace_id == workspace.id
    assert output["token"] not in result.stderr


def test_workspace_create_rejects_an_empty_name_on_stderr(tmp_path: Path) -> None:
    env = cli_env(tmp_path)
    assert run_cli("migrate", env=env).returncode == 0
    result = run_cli("workspace", "create", "   ", env=env)
    assert result.returncode != 0
    assert "name" in result.stderr and result.stdout == ""


# Unreachable on purpose: a one-shot command needs the database and nothing else.
NOTHING_ELSE = {"REDIS_URL": "redis://127.0.0.1:9/0", "TELEGRAM_API_BASE": "http://127.0.0.1:9"}


async def test_workspace_create_opens_nothing_but_the_database(
    tmp_path: Path, database_url: str, db_session_factory: async_sessionmaker[AsyncSession]
) -> None:
    env = cli_env(tmp_path, DATABASE_URL=database_url, **NOTHING_ELSE)
    result = run_cli("workspace", "create", "Hooli", "--json", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert json.loads(result.stdout)["token"].startswith("wsk_")


def test_workspace_create_refuses_control_characters_in_the_name(
    tmp_path: Path, database_url: str
) -> None:
    env = cli_env(tmp_path, DATABASE_URL=database_url)
    result = run_cli("workspace", "create", "Acme\x1b[2J", env=env)
    assert result.returncode == 1
    assert "name" in result.stderr and result.stdout == ""


async def test_token_create_prints_a_token_that_works_against_the_api(
    tmp_path: Path,
    database_url: str,
    app_client: httpx.AsyncClient,
    workspace: WorkspaceFixture,
) -> None:
    env = cli_env(tmp_path, DATABASE_URL=database_url, **NOTHING_ELSE)
    args = ("token", "create", "--workspace", str(workspace.id), "--role", "admin")
    result = run_cli(*args, "--name", "recovery", "--json", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    created = json.loads(result.stdout)
    assert set(created) == {"id", "workspace_id", "name", "role", "token", "created_at"}
    assert created["workspace_id"] == str(workspace.id)
    assert (created["name"], created["role"]) == ("recovery", "admin")

    headers = {"Authorization": f"Bearer {created['token']}"}
    listed = await app_client.get("/api/v1/tokens", headers=headers)
    assert listed.status_code == 200, listed.text
    assert {"id": created["id"], "name": "recovery", "role": "admin"}.items() <= next(
        item for item in listed.json()["items"] if item["id"] == created["id"]
    ).items()
    minted = await app_client.post(
        "/api/v1/tokens", json={"name": "ci", "role": "sender"}, headers=headers
    )
    assert minted.status_code == 201

    plain = run_cli(*args, env=env)
    assert plain.returncode == 0, plain.stderr
    token = plain.stdout.split("token:", 1)[1].split()[0]
    answer = await app_client.get("/api/v1/tokens", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 200
    assert "shown once" in plain.stderr and token not in plain.stderr


async def test_token_create_for_an_unknown_workspace_is_an_error(
    tmp_path: Path, database_url: str, db_session_factory: async_sessionmaker[AsyncSession]
) -> None:
    env = cli_env(tmp_path, DATABASE_URL=database_url)
    missing = str(uuid.uuid4())
    result = run_cli("token", "create", "--workspace", missing, "--role", "admin", env=env)
    assert result.returncode == 1
    assert "workspace" in result.stderr and missing in result.stderr
    assert result.stdout == ""
    async with db_session_factory() as session:
        assert (await session.execute(select(ApiToken))).first() is None


def test_token_create_refuses_an_unknown_role_or_workspace_id(tmp_path: Path) -> None:
    env = cli_env(tmp_path)
    wrong_role = run_cli(
        "token", "create", "--workspace", str(uuid.uuid4()), "--role", "owner", env=env
    )
    assert wrong_role.returncode == 2
    assert "--role" in wrong_role.stderr and wrong_role.stdout == ""
    wrong_id = run_cli("token", "create", "--workspace", "acme", "--role", "admin", env=env)
    assert wrong_id.returncode == 2
    assert "--workspace" in wrong_id.stderr and wrong_id.stdout == ""


async def test_workspace_list_prints_every_workspace(
    tmp_path: Path,
    database_url: str,
    workspace: WorkspaceFixture,
    other_workspace: WorkspaceFixture,
) -> None:
    env = cli_env(tmp_path, DATABASE_URL=database_url, **NOTHING_ELSE)
    listed = run_cli("workspace", "list", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    assert listed.stderr == ""
    rows = json.loads(listed.stdout)
    assert [(row["id"], row["name"]) for row in rows] == [
        (str(workspace.id), "Acme"),
        (str(other_workspace.id), "Globex"),
    ]
    assert all(datetime.fromisoformat(row["created_at"]).tzinfo is not None for row in rows)

    plain = run_cli("workspace", "list", env=env)
    assert plain.returncode == 0, plain.stderr
    lines = plain.stdout.splitlines()
    assert len(lines) == 2
    assert lines[0].split("\t")[:2] == [str(workspace.id), "Acme"]
    assert lines[1].split("\t")[:2] == [str(other_workspace.id), "Globex"]


def test_invalid_configuration_is_a_clear_error(tmp_path: Path) -> None:
    result = run_cli("migrate", env=cli_env(tmp_path, TELEGRAM_MAX_RETRIES="many"))
    assert result.returncode == 2
    assert "invalid configuration" in result.stderr
    assert "telegram_max_retries" in result.stderr


def test_serve_runs_on_the_embedded_default_and_answers_health(
    tmp_path: Path, unused_port: int
) -> None:
    """The README's run command: migrate a SQLite file, then serve with no external service."""
    env = cli_env(tmp_path)
    migrated = run_cli("migrate", env=env)
    assert migrated.returncode == 0, migrated.stderr
    assert (tmp_path / "data" / "integrations.db").exists()
    server = subprocess.Popen(
        [sys.executable, "-m", "app", "serve", "--port", str(unused_port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        health = ready = None
        while time.monotonic() < deadline:
            try:
                health = httpx.get(f"http://127.0.0.1:{unused_port}/health", timeout=1)
                ready = httpx.get(f"http://127.0.0.1:{unused_port}/ready", timeout=1)
                break
            except httpx.TransportError:
                assert server.poll() is None, server.stderr.read() if server.stderr else ""
                time.sleep(0.2)
        assert health is not None and health.status_code == 200
        assert health.json() == {"status": "ok"}
        assert ready is not None and ready.status_code == 200
        assert ready.json()["checks"] == {"database": "ok", "redis": "not_configured"}
    finally:
        server.terminate()
        _, stderr = server.communicate(timeout=15)
    # uvicorn re-raises the captured SIGTERM after a graceful shutdown.
    assert "Application shutdown complete" in stderr
    assert "not shared between replicas" in stderr
    assert stderr.count("using a development key file") == 1
    assert "color_message" not in stderr and "\x1b" not in stderr


def test_worker_runs_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    env = cli_env(tmp_path)
    assert run_cli("migrate", env=env).returncode == 0
    worker = subprocess.Popen(
        [sys.executable, "-m", "app", "worker"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert worker.stderr is not None
        deadline = time.monotonic() + 30
        started = False
        lines: list[str] = []
        while time.monotonic() < deadline and not started:
            line = worker.stderr.readline()
            lines.append(line)
            started = "worker_started" in line
            assert line or worker.poll() is None, "the worker exited early"
        assert started
        worker.send_signal(signal.SIGTERM)
        _, rest = worker.communicate(timeout=20)
    finally:
        if worker.poll() is None:
            worker.kill()
    assert worker.returncode == 0
    assert "worker_stopped" in rest
    assert "".join([*lines, rest]).count("using a development key file") == 1


REPO = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(
    not (REPO / ".venv" / "bin" / "integrations").exists() or shutil.which("make") is None,
    reason="needs the project's .venv (created by `make`) and make",
)
def test_the_readme_run_command_serves_health_with_no_external_service(
    tmp_path: Path, unused_port: int
) -> None:
    """`make run`, exactly as the README says, on the embedded default."""
    env = cli_env(tmp_path)
    process = subprocess.Popen(
        ["make", "-s", "run", f"PORT={unused_port}"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        health = None
        while time.monotonic() < deadline and health is None:
            assert process.poll() is None, process.stdout.read() if process.stdout else ""
            try:
                health = httpx.get(f"http://127.0.0.1:{unused_port}/health", timeout=1)
            except httpx.TransportError:
                time.sleep(0.3)
        assert health is not None and health.json() == {"status": "ok"}
        assert (tmp_path / "data" / "integrations.db").exists()
        assert (tmp_path / "data" / "vault.key").exists()
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    # The API and the worker it runs alongside share one keyring, loaded once.
    assert output.count("using a development key file") == 1
