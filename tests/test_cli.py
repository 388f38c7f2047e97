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
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.auth.models import ApiToken, Workspace
from app.auth.tokens import hash_api_token


def run_cli(
    *args: str, env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


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
        while time.monotonic() < deadline and not started:
            line = worker.stderr.readline()
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
        process.communicate(timeout=30)
