"""Helpers for the rate-limit tests: a controllable clock, a throwaway Redis
server, and command counting."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import redis as redis_sync
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from tests.conftest import TEST_REDIS_URL

T = TypeVar("T")

# This test process's Redis database (tests/conftest.py): the rate-limit tests delete
# only their own keys, and no other test runs in this process at the same time.
SHARED_REDIS_URL = TEST_REDIS_URL
REDIS_SERVER = shutil.which("redis-server")


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A private `redis-server` on its own port, started and killed by the test.

    Private so that command statistics count only this test's commands, and
    so that killing it disturbs nobody.
    """

    def __init__(self, port: int, directory: Path) -> None:
        assert REDIS_SERVER is not None
        self.port = port
        self.directory = directory
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert self._process is None
        self._process = subprocess.Popen(
            [
                str(REDIS_SERVER),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._wait_ready()

    def _wait_ready(self) -> None:
        # Only a give-up limit for a server that never comes up, not a timing
        # assumption: the loop returns as soon as PING answers.
        deadline = time.monotonic() + 20
        client = redis_sync.Redis(port=self.port, socket_connect_timeout=1, socket_timeout=1)
        try:
            while True:
                assert self._process is not None
                if self._process.poll() is not None:
                    raise RuntimeError(f"redis-server exited with {self._process.returncode}")
                try:
                    if client.ping():
                        return
                except redis_sync.ConnectionError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.02)
        finally:
            client.close()

    def kill(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None


def fast_failing_client(url: str) -> Redis:
    """A client that reports an unreachable server at once: short timeouts,
    no retries (the production client's policy is the application's choice)."""
    return Redis.from_url(
        url,
        socket_timeout=2,
        socket_connect_timeout=2,
        retry=Retry(NoBackoff(), 0),
    )


async def command_calls(client: Redis) -> dict[str, int]:
    """Calls per command name from INFO commandstats (without INFO itself)."""
    stats: dict[str, Any] = await client.info("commandstats")
    calls = {
        name.removeprefix("cmdstat_"): int(value["calls"])
        for name, value in stats.items()
        if name.startswith("cmdstat_")
    }
    calls.pop("info", None)
    return calls


def calls_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    delta = {name: count - before.get(name, 0) for name, count in after.items()}
    return {name: count for name, count in delta.items() if count}


async def script_calls(client: Redis) -> int:
    """Scripts run so far (EVALSHA and EVAL): the limiter's round trips."""
    calls = await command_calls(client)
    return calls.get("evalsha", 0) + calls.get("eval", 0)


def run_in_new_loop(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on a private event loop, leaving the session's alone."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coroutine)
    finally:
        loop.close()
