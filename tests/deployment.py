"""The service as an operator deploys it: `integrations serve` and `integrations
worker` processes on one PostgreSQL and one Redis, started, stopped and killed by
the test, with the Bot API double standing in for Telegram.

The processes get the environment of a fresh shell (`process_env`) pointed at the
database, Redis and double the test chose; each is stopped with SIGTERM when the
deployment closes, and a traceback in any of them fails the test
(`tests.test_pipeline_processes.running`).
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import PUBLIC_BASE_URL, TEST_VAULT_KEYS
from tests.telegram_double.double import TelegramDouble
from tests.telegram_double.state import FakeBot
from tests.test_pipeline_processes import (
    Finished,
    free_port,
    process_env,
    run_cli,
    running,
    wait_healthy,
)

PYTHON_APP = [sys.executable, "-m", "app"]


@dataclass
class Deployment:
    env: dict[str, str]
    double: TelegramDouble
    stack: ExitStack
    servers: list[str] = field(default_factory=list)
    workers: list[Finished] = field(default_factory=list)
    admin_token: str = ""
    sender_token: str = ""

    def serve(self) -> str:
        """Start one more API server; returns its base URL (see `healthy`)."""
        port = free_port()
        self.stack.enter_context(running([*PYTHON_APP, "serve", "--port", str(port)], self.env))
        base_url = f"http://127.0.0.1:{port}"
        self.servers.append(base_url)
        return base_url

    def worker(self, **extra: str) -> Finished:
        """Start one more worker (with extra settings, if given)."""
        worker = self.stack.enter_context(running([*PYTHON_APP, "worker"], {**self.env, **extra}))
        self.workers.append(worker)
        return worker

    async def healthy(self) -> None:
        """Every server answers; the workspace and its tokens exist."""
        await asyncio.gather(*(wait_healthy(url) for url in self.servers))
        if not self.admin_token:
            created = await asyncio.to_thread(
                run_cli, "workspace", "create", "Acme", "--json", env=self.env
            )
            self.admin_token = json.loads(created)["token"]
            async with self.client() as client:
                response = await client.post(
                    "/api/v1/tokens", json={"name": "app", "role": "sender"}
                )
                assert response.status_code == 201, response.text
                self.sender_token = response.json()["token"]

    def client(self, server: int = 0, *, token: str | None = None) -> httpx.AsyncClient:
        """An API client of `servers[server]` (admin unless another token is given)."""
        return httpx.AsyncClient(
            base_url=self.servers[server],
            headers={"Authorization": f"Bearer {token or self.admin_token}"},
            timeout=30,
        )

    def telegram_side(self, server: int = 0) -> httpx.AsyncClient:
        """What Telegram's deliveries come through: the public host is this server."""
        return httpx.AsyncClient(base_url=self.servers[server], timeout=30)

    async def connect(self, *, approval: str = "none") -> tuple[FakeBot, str]:
        """A new bot, connected in webhook mode; returns it and its connection id."""
        bot = self.double.add_bot()
        async with self.client() as client:
            created = await client.post(
                "/api/v1/connections/telegram", json={"bot_token": bot.token}
            )
            assert created.status_code == 201, created.text
            connection_id = str(created.json()["id"])
            patched = await client.patch(
                f"/api/v1/connections/{connection_id}", json={"approval_mode": approval}
            )
            assert patched.status_code == 200, patched.text
        return bot, connection_id

    async def request_messages(
        self, bodies: list[dict[str, Any]], *, concurrency: int = 8
    ) -> list[dict[str, Any]]:
        """POST each body to /api/v1/messages as the sender, spread over the servers."""
        gate = asyncio.Semaphore(concurrency)
        clients = [self.client(n, token=self.sender_token) for n in range(len(self.servers))]

        async def one(n: int, body: dict[str, Any]) -> dict[str, Any]:
            async with gate:
                response = await clients[n % len(clients)].post("/api/v1/messages", json=body)
            assert response.status_code == 202, response.text
            message: dict[str, Any] = response.json()
            return message

        try:
            return list(await asyncio.gather(*(one(n, b) for n, b in enumerate(bodies))))
        finally:
            for client in clients:
                await client.aclose()


@contextmanager
def deployment(
    tmp_path: Path,
    double: TelegramDouble,
    *,
    database_url: str,
    redis_url: str,
    **settings: str,
) -> Iterator[Deployment]:
    """A deployment in webhook mode; start its processes with `serve()` and `worker()`."""
    env = process_env(
        tmp_path,
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        VAULT_KEYS=TEST_VAULT_KEYS,
        TELEGRAM_API_BASE=double.base_url,
        PUBLIC_BASE_URL=PUBLIC_BASE_URL,
        **settings,
    )
    with ExitStack() as stack:
        yield Deployment(env, double, stack)
