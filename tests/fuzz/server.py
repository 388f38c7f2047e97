"""A real `integrations serve` process on PostgreSQL and Redis, for the fuzz tests.

The fuzzer talks HTTP to it as any client would (uvicorn, the middleware, the
webhook fast path and FastAPI all in the way), and its log goes to a file that
the session's secret-leak check reads with everything else.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.conftest import PUBLIC_BASE_URL, TEST_REDIS_URL, TEST_VAULT_KEYS
from tests.leaks import registry
from tests.test_cli import cli_env

START_LIMIT = 30.0


@dataclass(frozen=True)
class Server:
    base_url: str
    log_path: Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@contextmanager
def serving(
    tmp_path: Path, *, database_url: str, telegram_api_base: str, **settings: str
) -> Iterator[Server]:
    """`integrations serve` on a free port until the block ends (SIGTERM, then wait)."""
    port = free_port()
    env = cli_env(
        tmp_path,
        DATABASE_URL=database_url,
        REDIS_URL=TEST_REDIS_URL,
        VAULT_KEYS=TEST_VAULT_KEYS,
        PUBLIC_BASE_URL=PUBLIC_BASE_URL,
        TELEGRAM_API_BASE=telegram_api_base,
        LOG_LEVEL="DEBUG",
        **settings,
    )
    log_path = tmp_path / "server.log"
    registry.watch_file(log_path)
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "app", "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        base_url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + START_LIMIT
            while True:
                assert process.poll() is None, log_path.read_text(errors="replace")
                assert time.monotonic() < deadline, "the server did not start"
                try:
                    if httpx.get(f"{base_url}/health", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.1)
            yield Server(base_url, log_path)
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
