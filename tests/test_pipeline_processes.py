"""The receive pipeline as an operator runs it: real `integrations` processes, on
the embedded SQLite default and on PostgreSQL with Redis.

The two backends hand the code different Python values where a column type is
left implicit (that is how polling broke on SQLite alone), so each pipeline runs
on both: connect a bot, receive by polling (and by webhook), find the message,
its contact and its conversation through the API.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx
import pytest

from tests.conftest import PUBLIC_BASE_URL, TEST_REDIS_URL, TEST_VAULT_KEYS
from tests.connections.helpers import webhook_credentials
from tests.leaks import registry as leaks
from tests.telegram_double.double import TelegramDouble
from tests.waiting import eventually

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def process_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment of a fresh shell: none of this machine's service settings."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DATABASE_", "REDIS_", "VAULT_", "PUBLIC_BASE", "TELEGRAM_"))
    }
    env.update({"DATA_DIR": str(tmp_path / "data"), "APP_ENV": "development"})
    env.update(extra)
    return env


def run_cli(*args: str, env: dict[str, str], program: list[str] | None = None) -> str:
    """Run an `integrations` command to completion (blocking: the double has its own thread)."""
    result = subprocess.run(
        [*(program or [sys.executable, "-m", "app"]), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    leaks.add_text("process-logs", result.stderr)
    assert result.returncode == 0, result.stderr
    return result.stdout


@dataclass
class Finished:
    """The running process, and what it wrote to stderr once the block has stopped it."""

    process: subprocess.Popen[bytes]
    log: IO[bytes]
    stderr: str = ""

    def stderr_so_far(self) -> str:
        """What the process has written to stderr until now (while it runs)."""
        return os.pread(self.log.fileno(), 1 << 24, 0).decode("utf-8", "replace")


@contextmanager
def running(args: list[str], env: dict[str, str], cwd: Path | None = None) -> Iterator[Finished]:
    """A process for the duration of the block, stopped with SIGTERM (its group).

    Its stderr goes to a file, not a pipe: a process that logs more than a pipe
    holds while nobody reads it would block on its next line.
    """
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            args,
            env=env,
            cwd=cwd,
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
        )
        finished = Finished(process, log)
        try:
            yield finished
        finally:
            # A test may have killed it already (SIGKILL, to play a crash).
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            log.seek(0)
            stderr = log.read().decode("utf-8", "replace")
            finished.stderr = stderr
            leaks.add_text("process-logs", stderr)
            # Whatever the test saw, a traceback in a process is a failure of its own.
            assert "Traceback" not in stderr, stderr


@dataclass
class Service:
    base_url: str
    token: str

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.base_url, headers={"Authorization": f"Bearer {self.token}"}, timeout=10
        )


async def wait_healthy(base_url: str) -> None:
    async def healthy() -> bool:
        try:
            async with httpx.AsyncClient(base_url=base_url, timeout=1) as client:
                return (await client.get("/health")).status_code == 200
        except httpx.TransportError:
            return False

    await eventually(healthy, "the server to answer /health")


def text_message(chat_id: int, text: str) -> dict[str, Any]:
    person = {"id": chat_id, "first_name": "Ann", "username": "ann_example"}
    return {
        "message": {
            "message_id": 1,
            "date": 1_700_000_000,
            "chat": {**person, "type": "private"},
            "from": {**person, "is_bot": False},
            "text": text,
        }
    }


async def inbox_shows(client: httpx.AsyncClient, chat_id: int, text: str) -> bool:
    """The message, its contact and its conversation are all visible through the API."""
    conversations = (await client.get("/api/v1/conversations")).json()["items"]
    conversation = next((c for c in conversations if c["chat_id"] == chat_id), None)
    if conversation is None:
        return False
    messages = (await client.get(f"/api/v1/conversations/{conversation['id']}/messages")).json()
    contacts = (await client.get("/api/v1/contacts")).json()["items"]
    return [m["text"] for m in messages["items"]] == [text] and any(
        c["telegram_chat_id"] == chat_id and c["telegram_username"] == "ann_example"
        for c in contacts
    )


@pytest.fixture(params=["sqlite", "postgresql"])
def backend_env(
    request: pytest.FixtureRequest, tmp_path: Path, telegram_double: TelegramDouble
) -> dict[str, str]:
    """The environment of the service's processes: the embedded default, or PostgreSQL
    (a fresh, migrated test database) with Redis."""
    env = process_env(tmp_path, TELEGRAM_API_BASE=telegram_double.base_url)
    if request.param == "postgresql":
        database_url = request.getfixturevalue("database_url")
        request.getfixturevalue("db_session_factory")  # empties the tables afterwards
        request.getfixturevalue("redis_client")  # flushes the Redis database
        env.update(DATABASE_URL=database_url, REDIS_URL=TEST_REDIS_URL, VAULT_KEYS=TEST_VAULT_KEYS)
    else:
        run_cli("migrate", env=env)
    return env


def create_workspace(env: dict[str, str]) -> str:
    token: str = json.loads(run_cli("workspace", "create", "Acme", "--json", env=env))["token"]
    return token


async def test_a_polled_message_reaches_the_inbox_through_serve_and_worker_processes(
    backend_env: dict[str, str], telegram_double: TelegramDouble
) -> None:
    port = free_port()
    service = Service(f"http://127.0.0.1:{port}", create_workspace(backend_env))
    bot = telegram_double.add_bot()
    serve = [sys.executable, "-m", "app", "serve", "--port", str(port)]
    with (
        running(serve, backend_env),
        running([sys.executable, "-m", "app", "worker"], backend_env),
    ):
        await wait_healthy(service.base_url)
        async with service.client() as client:
            created = await client.post(
                "/api/v1/connections/telegram", json={"bot_token": bot.token}
            )
            assert created.status_code == 201, created.text
            assert created.json()["mode"] == "polling"
            telegram_double.queue_update(bot, text_message(501, "hello from a phone"))
            await eventually(
                lambda: inbox_shows(client, 501, "hello from a phone"), "the polled message"
            )
            connection = (await client.get(f"/api/v1/connections/{created.json()['id']}")).json()
    assert connection["status"] == "active"
    assert telegram_double.pending_updates(bot) == []


async def test_a_webhook_delivery_reaches_the_inbox_through_a_serve_process(
    backend_env: dict[str, str], telegram_double: TelegramDouble
) -> None:
    port = free_port()
    env = {**backend_env, "PUBLIC_BASE_URL": PUBLIC_BASE_URL}
    service = Service(f"http://127.0.0.1:{port}", create_workspace(env))
    bot = telegram_double.add_bot()
    with running([sys.executable, "-m", "app", "serve", "--port", str(port)], env):
        await wait_healthy(service.base_url)
        async with service.client() as client:
            created = await client.post(
                "/api/v1/connections/telegram", json={"bot_token": bot.token}
            )
            assert created.status_code == 201, created.text
            assert created.json()["mode"] == "webhook"
            webhook_credentials(telegram_double, bot)  # a key and a secret were registered
            # Telegram's side: the public host stands for this process's address.
            async with httpx.AsyncClient(base_url=service.base_url) as telegram_side:
                await telegram_double.deliver(
                    bot, text_message(502, "hello by webhook"), client=telegram_side
                )
            assert telegram_double.pending_updates(bot) == []
            await eventually(lambda: inbox_shows(client, 502, "hello by webhook"), "the delivery")


@pytest.mark.skipif(
    not (REPO / ".venv" / "bin" / "integrations").exists(),
    reason="needs the project's .venv (created by `make`)",
)
async def test_make_run_alone_receives_a_polled_message_as_the_readme_says(
    tmp_path: Path, telegram_double: TelegramDouble
) -> None:
    """The README's first screen: `make run`, create a workspace, connect a bot, send
    it a message, see the conversation, answer it through the approval queue.
    Nothing else is started."""
    port = free_port()
    env = process_env(tmp_path, TELEGRAM_API_BASE=telegram_double.base_url)
    bot = telegram_double.add_bot()
    with running(["make", "-s", "run", f"PORT={port}"], env, cwd=REPO) as make_run:
        base_url = f"http://127.0.0.1:{port}"
        await wait_healthy(base_url)
        readme_command = [str(REPO / ".venv" / "bin" / "integrations")]
        created = run_cli("workspace", "create", "Acme", "--json", env=env, program=readme_command)
        service = Service(base_url, json.loads(created)["token"])
        async with service.client() as client:
            connected = await client.post(
                "/api/v1/connections/telegram", json={"bot_token": bot.token}
            )
            assert connected.status_code == 201, connected.text
            telegram_double.queue_update(bot, text_message(503, "hello, laptop"))
            await eventually(lambda: inbox_shows(client, 503, "hello, laptop"), "the message")
            # And the answer goes out through the approval queue, on SQLite with
            # the in-process pacer: requested by the admin, approved by a reviewer.
            conversation = (await client.get("/api/v1/conversations")).json()["items"][0]
            reply = await client.post(
                "/api/v1/messages",
                json={
                    "connection_id": connected.json()["id"],
                    "conversation_id": conversation["id"],
                    "text": "hello from the laptop",
                },
            )
            assert reply.status_code == 202, reply.text
            assert reply.json()["status"] == "pending_approval"
            reviewer = await client.post(
                "/api/v1/tokens", json={"name": "reviewer", "role": "reviewer"}
            )
            assert reviewer.status_code == 201, reviewer.text
            async with Service(base_url, reviewer.json()["token"]).client() as review:
                approved = await review.post(f"/api/v1/messages/{reply.json()['id']}/approve")
                assert approved.status_code == 200, approved.text

            async def answered() -> bool:
                message = (await client.get(f"/api/v1/messages/{reply.json()['id']}")).json()
                return message["status"] == "sent"

            await eventually(answered, "the approved reply to be sent")
    assert [(m.chat_id, m.text) for m in telegram_double.sent_messages(bot)] == [
        (503, "hello from the laptop")
    ]
    assert (tmp_path / "data" / "integrations.db").exists()
    # One SIGTERM stopped both: the worker gracefully, inside the server's shutdown.
    assert "worker_stopped" in make_run.stderr
    assert "Application shutdown complete" in make_run.stderr
