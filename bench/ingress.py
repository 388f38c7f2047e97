"""Ingress benchmark (SPEC section 10): our webhook endpoint against a bare FastAPI
endpoint and against aiogram's webhook handler, side by side in one run.

    .venv/bin/python bench/ingress.py [--duration 10] [--warmup 3] [--connections 40]
                                      [--only ours|bare|aiogram] [--profile DIR]

What it does (see bench/README.md for how to read the output):

1. Prepares a fresh PostgreSQL database (created, migrated with
   app.migrate.upgrade_to_head, dropped at the end), flushes one Redis DB index,
   and inserts a workspace and one webhook-mode Telegram connection whose bot
   token, webhook secret and webhook key are sealed with the vault exactly as
   app/connections/service.py does. No Telegram call is made. The ingress rate
   limits are raised far above what one process can reach.
2. Starts each handler in turn as its own process with one worker (uvloop,
   httptools, access log off), pinned to one CPU when `taskset` exists; the load
   generator is pinned to another:
   - ours: `app.main:create_app` under uvicorn, on that database and Redis;
   - bare: bench/bare_app.py under uvicorn, reads the body and returns {};
   - aiogram: bench/aiogram_app.py, aiogram's SimpleRequestHandler on aiohttp
     with a secret_token; the dispatcher handles each update, nothing is stored.
3. Checks each handler once with every payload (and once with a wrong secret),
   then drives it with N keep-alive connections of real update payloads, each
   request with its own update_id, for a warmup and then a measured duration:
   `wrk` with bench/wrk_updates.lua, or bench/loadgen.py when wrk is missing.
4. For ours, checks the database afterwards: every acknowledged update is stored,
   nothing is stored twice, nothing unexpected is stored.
5. Prints the table and whether SPEC 10's targets are met. Timing never decides
   the exit code (machines are noisy); a broken setup or lost data does (exit 1).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import os
import resource
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from http.client import HTTPConnection
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "bench"
UPDATES_DIR = ROOT / "tests" / "data" / "telegram" / "updates"
WRK_SCRIPT = BENCH_DIR / "wrk_updates.lua"
WEBHOOK_PATH = "/api/v1/integrations/telegram/webhook"

HANDLERS = ("ours", "base", "bare", "aiogram")
# Handlers that are this service (from this tree, or --baseline's): each has a database.
SERVICES = ("ours", "base")
DESCRIPTIONS = {
    "ours": "app.main:create_app: secret check, Redis limits, group-commit storage",
    "base": "ours as of --baseline DIR (the same set-up, a database of its own)",
    "bare": "bare FastAPI endpoint: reads the body, returns {}",
    "aiogram": "aiogram SimpleRequestHandler on aiohttp: secret check, Update model, no storage",
}

# update_id ranges, one per phase, far apart: every request of a run has its own id,
# and the database check can count each phase's rows on their own.
PHASE_BASES = {"preflight": 10_000_000, "warmup": 100_000_000, "measure": 200_000_000}
PHASE_SPAN = 90_000_000
# Round n (--rounds) adds n times this to every base: ours keeps one database for
# all rounds, and each round's rows are still told apart.
ROUND_SPAN = 1_000_000_000

# High enough that the limiter never refuses (one process does a few thousand/s).
UPDATES_PER_SECOND = 1_000_000
UPDATES_BURST = 2_000_000

# SPEC section 10.
TARGET_P99_MS = 50.0

# What the bench seals into the connection; never sent anywhere.
BENCH_BOT_TOKEN = "123456789:AAbenchmark-token-not-a-real-bot-0000"
BENCH_BOT_ID = 123456789

DEFAULT_ADMIN_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/13"


class BenchError(Exception):
    """Something broke (not a slow result): reported, and the exit code is 1."""


# --- small helpers -----------------------------------------------------------------


def say(message: str = "") -> None:
    print(message, flush=True)


def require_loopback(url: str, what: str) -> None:
    host = urlsplit(url).hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise BenchError(f"{what} must be on a loopback address, not {host!r}")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def fmt_ms(microseconds: float) -> str:
    ms = microseconds / 1000
    return f"{ms:.1f}" if ms < 100 else f"{ms:.0f}"


# --- payloads ------------------------------------------------------------------------


@dataclass(frozen=True)
class Payload:
    name: str
    template: str  # compact JSON without "update_id" and without the opening brace

    def body(self, update_id: int) -> bytes:
        return f'{{"update_id":{update_id},{self.template}'.encode()


def load_payloads() -> tuple[list[Payload], list[str]]:
    """The sample updates all three handlers accept, and why the others were left out.

    aiogram validates every update into its models (one sample fails that) and
    warns on update kinds it does not know; our parser must accept them too. The
    same set then goes to every handler, so they all do the same work.
    """
    from aiogram.types import Update

    from app.telegram.updates import InvalidUpdate, parse_update

    payloads: list[Payload] = []
    excluded: list[str] = []
    for path in sorted(UPDATES_DIR.glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        try:
            update = Update.model_validate(data)
        except Exception as exc:
            excluded.append(f"{path.name} (aiogram rejects it: {type(exc).__name__})")
            continue
        try:
            update.event_type  # noqa: B018 (raises for kinds aiogram does not know)
        except Exception:
            excluded.append(f"{path.name} (an update kind aiogram does not know)")
            continue
        try:
            parse_update(data)
        except InvalidUpdate:
            excluded.append(f"{path.name} (our parser rejects it)")
            continue
        rest = {key: value for key, value in data.items() if key != "update_id"}
        if not rest:
            excluded.append(f"{path.name} (nothing but an update_id)")
            continue
        text = json.dumps(rest, separators=(",", ":"), ensure_ascii=False)
        payloads.append(Payload(path.name, text[1:]))
    if not payloads:
        raise BenchError(f"no usable update payloads in {UPDATES_DIR}")
    return payloads, excluded


# --- processes -----------------------------------------------------------------------

_started: list[subprocess.Popen[Any]] = []


def spawn(argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
    """Start a process in a group of its own, so that stop() reaches all of it."""
    proc: subprocess.Popen[Any] = subprocess.Popen(argv, start_new_session=True, **kwargs)
    _started.append(proc)
    return proc


def stop(proc: subprocess.Popen[Any], grace: float = 10.0) -> None:
    """SIGTERM to the process group, SIGKILL after `grace` seconds."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
    else:
        # The leader is gone; make sure nothing it started lingers.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    if proc in _started:
        _started.remove(proc)


def stop_all() -> None:
    for proc in list(_started):
        stop(proc, grace=5.0)


@dataclass
class CpuPlan:
    server: int | None
    load: int | None

    def prefix(self, cpu: int | None) -> list[str]:
        return ["taskset", "-c", str(cpu)] if cpu is not None else []

    def describe(self) -> str:
        if self.server is None:
            return "not pinned (needs taskset and two CPUs)"
        return (
            f"servers on CPU {self.server}, load generator on CPU {self.load} "
            "(PostgreSQL and Redis are not pinned)"
        )


def plan_cpus(pin: bool) -> CpuPlan:
    cpus = sorted(os.sched_getaffinity(0))
    if not pin or len(cpus) < 2 or shutil.which("taskset") is None:
        return CpuPlan(None, None)
    return CpuPlan(cpus[0], cpus[1])


def cpu_ticks() -> dict[str, tuple[int, int]]:
    """Per CPU from /proc/stat: (busy, total) jiffies."""
    ticks: dict[str, tuple[int, int]] = {}
    with open("/proc/stat", encoding="ascii") as stat:
        for line in stat:
            if not line.startswith("cpu") or line.startswith("cpu "):
                continue
            name, *fields = line.split()
            values = [int(v) for v in fields[:8]]
            idle = values[3] + values[4]  # idle + iowait
            ticks[name[3:]] = (sum(values) - idle, sum(values))
    return ticks


def process_cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # utime and stime are fields 14 and 15 of the whole line (11, 12 after the name).
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# --- the database and Redis ------------------------------------------------------------


@dataclass
class Fixture:
    """What the bench made for ours: database, Redis DB, vault, connection credentials."""

    admin_url: str
    database: str
    database_url: str  # the service's (postgresql+asyncpg)
    redis_url: str
    vault_keys: str
    secret: str = ""
    key: str = ""
    created: bool = False

    def asyncpg_dsn(self, database: str | None = None) -> str:
        from sqlalchemy.engine import make_url

        url = make_url(self.admin_url).set(drivername="postgresql")
        if database is not None:
            url = url.set(database=database)
        return url.render_as_string(hide_password=False)


def new_fixture(admin_url: str, redis_url: str) -> Fixture:
    from sqlalchemy.engine import make_url

    from app.vault import generate_key_entry

    name = f"bench_ingress_{os.getpid()}_{secrets.token_hex(3)}"
    url = make_url(admin_url).set(drivername="postgresql+asyncpg", database=name)
    return Fixture(
        admin_url=admin_url,
        database=name,
        database_url=url.render_as_string(hide_password=False),
        redis_url=redis_url,
        vault_keys=generate_key_entry("bench1"),
    )


def flush_redis(url: str) -> None:
    from redis import Redis

    client = Redis.from_url(url, socket_connect_timeout=2)
    try:
        client.flushdb()  # this DB index only
    finally:
        client.close()


async def _create_database(fixture: Fixture) -> None:
    import asyncpg

    admin = await asyncpg.connect(fixture.asyncpg_dsn())
    try:
        await admin.execute(f'CREATE DATABASE "{fixture.database}"')
    finally:
        await admin.close()


async def _drop_database(fixture: Fixture) -> None:
    import asyncpg

    admin = await asyncpg.connect(fixture.asyncpg_dsn())
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{fixture.database}" WITH (FORCE)')
    finally:
        await admin.close()


def service_settings(fixture: Fixture, port: int, log_level: str = "WARNING") -> dict[str, str]:
    """The environment of our service process (read by app.config.Settings)."""
    return {
        "APP_ENV": "production",
        # ACCESS_LOG is off by default (see .env.example); --service-log-level sets
        # the level of everything else.
        "LOG_LEVEL": log_level,
        "DATABASE_URL": fixture.database_url,
        "REDIS_URL": fixture.redis_url,
        "VAULT_KEYS": fixture.vault_keys,
        "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
        "INGRESS_UPDATES_PER_SECOND": str(UPDATES_PER_SECOND),
        "INGRESS_UPDATES_BURST": str(UPDATES_BURST),
        "INGRESS_TELEGRAM_IPS_ONLY": "false",
        "INGRESS_TRUSTED_PROXIES": "",
        "DATA_DIR": str(Path(tempfile.gettempdir()) / f"{fixture.database}_data"),
    }


async def _seed(fixture: Fixture) -> None:
    """A workspace and one webhook connection, sealed by the service's own credential code."""
    from app.auth.service import create_workspace
    from app.config import Settings
    from app.connections.credentials import ConnectionCredentials
    from app.connections.models import (
        ApprovalMode,
        ConnectionMode,
        ConnectionStatus,
        TelegramConnection,
    )
    from app.connections.registration import generate_webhook_key, generate_webhook_secret
    from app.db import create_engine, create_session_factory, new_id, utcnow
    from app.telegram.types import BotToken
    from app.vault import Vault, load_keyring

    settings = Settings(
        _env_file=None,
        app_env="production",
        database_url=fixture.database_url,
        vault_keys=fixture.vault_keys,
    )
    credentials = ConnectionCredentials(Vault(load_keyring(settings)))
    engine = create_engine(fixture.database_url)
    try:
        async with create_session_factory(engine)() as session:
            workspace, _admin_token = await create_workspace(session, "ingress benchmark")
            connection = TelegramConnection(
                id=new_id(),
                workspace_id=workspace.id,
                name="benchmark bot",
                status=ConnectionStatus.active,
                mode=ConnectionMode.webhook,
                approval_mode=ApprovalMode.required,
                bot_id=BENCH_BOT_ID,
                bot_username="ingress_bench_bot",
                bot_first_name="Ingress bench",
                created_at=utcnow(),
            )
            secret, key = generate_webhook_secret(), generate_webhook_key()
            credentials.seal_token(connection, BotToken(BENCH_BOT_TOKEN))
            credentials.seal_webhook(connection, secret, key)
            session.add(connection)
            await session.commit()
    finally:
        await engine.dispose()
    fixture.secret, fixture.key = secret, key


def prepare_fixture(fixture: Fixture) -> None:
    from app.migrate import upgrade_to_head

    asyncio.run(_create_database(fixture))
    fixture.created = True
    upgrade_to_head(fixture.database_url)  # runs its own event loop: not inside one
    flush_redis(fixture.redis_url)
    asyncio.run(_seed(fixture))


def drop_fixture(fixture: Fixture) -> None:
    if fixture.created:
        asyncio.run(_drop_database(fixture))
        fixture.created = False
    with contextlib.suppress(Exception):
        flush_redis(fixture.redis_url)
    shutil.rmtree(service_settings(fixture, 0)["DATA_DIR"], ignore_errors=True)


# --- load generation -------------------------------------------------------------------


@dataclass
class LoadResult:
    tool: str
    duration_s: float
    answered: int  # answers received within the measured window
    statuses: dict[int, int]  # of those answers
    sent_max: int  # requests sent, at most (wrk's count can include one never sent)
    answered_total: int  # every answer, including those drained after the window
    acked_total: int  # every 2xx answer, including those drained after the window
    socket_errors: dict[str, int]
    latency_us: dict[str, float]  # as measured: closed loop, one request per connection
    # wrk only: its coordinated-omission-corrected figures (an open-loop estimate).
    latency_corrected_us: dict[str, float] | None = None
    # True when wrk's histogram could not be read and latency_us is the corrected one.
    latency_is_corrected: bool = False

    @property
    def ok(self) -> int:
        return sum(n for status, n in self.statuses.items() if 200 <= status < 300)

    @property
    def non_2xx(self) -> dict[int, int]:
        return {s: n for s, n in sorted(self.statuses.items()) if not 200 <= s < 300}

    @property
    def rate(self) -> float:
        return self.ok / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def unanswered_max(self) -> int:
        return max(0, self.sent_max - self.answered_total)

    @classmethod
    def parse(cls, tool: str, output: str) -> LoadResult:
        marker = "WRK_RESULT " if tool == "wrk" else "LOADGEN_RESULT "
        line = next((ln for ln in output.splitlines() if ln.startswith(marker)), None)
        if line is None:
            raise BenchError(f"the load generator printed no result:\n{output[-2000:]}")
        data = json.loads(line[len(marker) :])
        statuses = {int(s): int(n) for s, n in data["statuses"].items()}
        drained = {int(s): int(n) for s, n in data.get("drained_statuses", {}).items()}
        everything = {s: statuses.get(s, 0) + drained.get(s, 0) for s in statuses | drained}
        return cls(
            tool=tool,
            duration_s=data["duration_us"] / 1e6,
            answered=int(data["requests"]),
            statuses=statuses,
            sent_max=int(data["request_calls"]),
            answered_total=sum(everything.values()),
            acked_total=sum(n for s, n in everything.items() if 200 <= s < 300),
            socket_errors={
                name: int(data[key])
                for name, key in (
                    ("connect", "connect_errors"),
                    ("read", "read_errors"),
                    ("write", "write_errors"),
                    ("timeout", "timeouts"),
                )
                if int(data[key])
            },
            latency_us={k: float(v) for k, v in data["latency_us"].items()},
            latency_corrected_us=(
                {k: float(v) for k, v in data["latency_corrected_us"].items()}
                if "latency_corrected_us" in data
                else None
            ),
            latency_is_corrected=bool(data.get("latency_is_corrected", False)),
        )


@dataclass
class LoadGen:
    tool: str  # "wrk" or "python"
    connections: int
    threads: int
    cpus: CpuPlan

    def argv(self, url: str, templates: Path, base: int, secret: str, seconds: int) -> list[str]:
        if self.tool == "wrk":
            command = ["wrk", "-t", str(self.threads), "-c", str(self.connections)]
            command += ["-d", f"{seconds}s", "--timeout", "10s", "-s", str(WRK_SCRIPT), url]
            # After "--": the Lua script's own arguments (see bench/wrk_updates.lua).
            command += ["--", str(templates), str(base), secret, str(self.threads)]
            command += [str(self.connections)]
        else:
            command = [sys.executable, str(BENCH_DIR / "loadgen.py"), "--url", url]
            command += ["--templates", str(templates), "--base", str(base), f"--secret={secret}"]
            command += ["--connections", str(self.connections), "--duration", str(seconds)]
        return self.cpus.prefix(self.cpus.load) + command

    def run(
        self, label: str, url: str, templates: Path, base: int, secret: str, seconds: int
    ) -> LoadResult:
        proc = spawn(
            self.argv(url, templates, base, secret, seconds),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        started = time.monotonic()
        output = ""
        tick = 2 if seconds <= 20 else 5
        try:
            while True:
                try:
                    output, _ = proc.communicate(timeout=tick)
                    break
                except subprocess.TimeoutExpired:
                    elapsed = time.monotonic() - started
                    if elapsed > seconds + 30:
                        raise BenchError(f"{label}: the load generator did not finish") from None
                    say(f"    ... {min(elapsed, seconds):.0f}/{seconds} s")
        finally:
            stop(proc)
        if proc.returncode != 0:
            raise BenchError(f"{label}: the load generator failed:\n{output[-2000:]}")
        return LoadResult.parse(self.tool, output)


def choose_loadgen(preference: str, install: bool) -> str:
    if preference == "python":
        return "python"
    if shutil.which("wrk"):
        return "wrk"
    if install and os.geteuid() == 0 and shutil.which("apt-get"):
        say("wrk is not installed: installing the Debian package `wrk` with apt-get ...")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "wrk"]):
            done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                say(f"  `{' '.join(command)}` failed: {done.stderr.strip()[-300:]}")
                break
        if shutil.which("wrk"):
            say("  wrk installed.")
            return "wrk"
    if preference == "wrk":
        raise BenchError("wrk is not available (install it with: apt-get install wrk)")
    say(
        "wrk is not available (apt-get install wrk, or rerun as root): "
        "using the Python load generator bench/loadgen.py instead"
    )
    return "python"


# --- the handlers ---------------------------------------------------------------------


@dataclass
class Server:
    name: str
    port: int
    argv: list[str]
    env: dict[str, str]
    log: Path
    secret: str
    key: str
    cwd: Path = ROOT
    proc: subprocess.Popen[Any] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{WEBHOOK_PATH}?key={self.key}"

    def start(self, timeout: float = 90.0) -> float:
        started = time.monotonic()
        with self.log.open("wb") as log:
            self.proc = spawn(
                self.argv, cwd=self.cwd, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        while time.monotonic() - started < timeout:
            if self.proc.poll() is not None:
                raise BenchError(f"{self.name} exited at start-up:\n{self.log_tail()}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5),
            ):
                return time.monotonic() - started
            time.sleep(0.1)
        raise BenchError(f"{self.name} did not listen within {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)
            self.proc = None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


UVICORN_FLAGS = "--workers 1 --loop uvloop --http httptools --no-access-log --log-level warning"


def uvicorn_argv(app: str, port: int, *extra: str) -> list[str]:
    """One uvicorn worker (in process, no supervisor), uvloop, httptools, no access log."""
    command = [sys.executable, "-m", "uvicorn", app, *extra]
    return [*command, "--host", "127.0.0.1", "--port", str(port), *UVICORN_FLAGS.split()]


def build_server(
    name: str,
    fixture: Fixture | None,
    cpus: CpuPlan,
    workdir: Path,
    *,
    aiogram_background: bool,
    service_log_level: str,
    baseline: Path | None = None,
) -> Server:
    port = free_port()
    # A clean environment for the child: none of the caller's own service settings.
    from app.config import Settings

    ours = {name.upper() for name in Settings.model_fields}
    env = {k: v for k, v in os.environ.items() if k.upper() not in ours}
    cwd = ROOT
    if name in SERVICES:
        assert fixture is not None
        if name == "base":
            # `python -m app` imports the package from its working directory first.
            assert baseline is not None
            cwd = baseline
        env.update(service_settings(fixture, port, service_log_level))
        # The production command: one uvicorn process, uvloop and httptools.
        argv = [sys.executable, "-m", "app", "serve", "--host", "127.0.0.1", "--port", str(port)]
        secret, key = fixture.secret, fixture.key
    elif name == "bare":
        argv = uvicorn_argv("bare_app:app", port, "--app-dir", str(BENCH_DIR))
        secret, key = secrets.token_urlsafe(32), "unused"
    else:
        secret, key = secrets.token_urlsafe(32), "unused"
        argv = [sys.executable, str(BENCH_DIR / "aiogram_app.py"), "--host", "127.0.0.1"]
        argv += ["--port", str(port), f"--secret={secret}"]
        if aiogram_background:
            argv.append("--background")
    return Server(
        name=name,
        port=port,
        argv=cpus.prefix(cpus.server) + argv,
        env=env,
        log=workdir / f"{name}.log",
        secret=secret,
        key=key,
        cwd=cwd,
    )


def preflight(server: Server, payloads: Sequence[Payload], base: int) -> int:
    """Every payload once (each must be answered 2xx), then a wrong secret (401).

    Returns how many were acknowledged (they are in ours' database too).
    """
    parsed = urlsplit(server.url)
    target = f"{parsed.path}?{parsed.query}"
    connection = HTTPConnection("127.0.0.1", server.port, timeout=30)
    failures: list[str] = []
    acked = 0
    try:
        for n, payload in enumerate(payloads):
            status, body = _post(connection, target, payload.body(base + n), server.secret)
            if 200 <= status < 300:
                acked += 1
            else:
                failures.append(f"{payload.name}: {status} {body[:200]!r}")
        if server.name != "bare":
            wrong = payloads[0].body(base + len(payloads))
            status, _ = _post(connection, target, wrong, "not-the-secret")
            if status != 401:
                failures.append(f"a wrong secret was answered {status}, not 401")
    finally:
        connection.close()
    if failures:
        raise BenchError(
            f"{server.name}: preflight failed:\n  " + "\n  ".join(failures) + "\n"
            f"server log ({server.log}):\n{server.log_tail()}"
        )
    return acked


def _post(connection: HTTPConnection, target: str, body: bytes, secret: str) -> tuple[int, bytes]:
    connection.request(
        "POST",
        target,
        body=body,
        headers={
            "Content-Type": "application/json",
            "X-Telegram-Bot-Api-Secret-Token": secret,
        },
    )
    response = connection.getresponse()
    return response.status, response.read()


# --- verification of ours ---------------------------------------------------------------


@dataclass
class PhaseCount:
    name: str
    base: int  # its first update_id
    acked: int
    unanswered_max: int


async def _verify(fixture: Fixture, phases: Sequence[PhaseCount]) -> list[str]:
    """Problems found in what ours stored (empty: all is well)."""
    import asyncpg

    problems: list[str] = []
    db = await asyncpg.connect(fixture.asyncpg_dsn(fixture.database))
    try:
        # Requests abandoned by the load generator at its deadline may still be
        # stored by the server just after: wait until the count settles.
        previous = -1
        for _ in range(20):
            total = int(await db.fetchval("SELECT count(*) FROM telegram_updates"))
            if total == previous:
                break
            previous = total
            await asyncio.sleep(0.25)
        row = await db.fetchrow(
            "SELECT count(*) AS total,"
            " count(DISTINCT (connection_id, update_id)) AS distinct_ids,"
            " count(*) FILTER (WHERE source <> 'webhook') AS other_source"
            " FROM telegram_updates"
        )
        assert row is not None
        total, distinct, other = (
            int(row["total"]),
            int(row["distinct_ids"]),
            int(row["other_source"]),
        )
        if distinct != total:
            problems.append(f"{total - distinct} duplicate rows in telegram_updates")
        if other:
            problems.append(f"{other} rows with a source other than 'webhook'")
        expected_rows = 0
        for phase in phases:
            base = phase.base
            stored = int(
                await db.fetchval(
                    "SELECT count(*) FROM telegram_updates"
                    " WHERE update_id >= $1 AND update_id < $2",
                    base,
                    base + PHASE_SPAN,
                )
            )
            expected_rows += stored
            low, high = phase.acked, phase.acked + phase.unanswered_max
            verdict = "ok" if low <= stored <= high else "WRONG"
            extra = (
                f" + up to {phase.unanswered_max} sent but unanswered at the cut-off"
                if phase.unanswered_max
                else ""
            )
            say(f"    {phase.name:<9} {stored:>8} rows, {phase.acked} acked{extra}: {verdict}")
            if stored < low:
                problems.append(
                    f"{phase.name}: {low - stored} acknowledged updates are not in the database"
                )
            elif stored > high:
                problems.append(
                    f"{phase.name}: {stored - high} more rows than requests that could be stored"
                )
        if expected_rows != total:
            problems.append(f"{total - expected_rows} rows with update_ids the bench never sent")
        derived = await db.fetchrow(
            "SELECT (SELECT count(*) FROM conversation_messages) AS messages,"
            " (SELECT count(*) FROM conversations) AS conversations,"
            " (SELECT count(*) FROM contacts) AS contacts"
        )
        assert derived is not None
        say(
            f"    derived: {derived['messages']} inbox messages, "
            f"{derived['conversations']} conversations, {derived['contacts']} contacts"
        )
    finally:
        await db.close()
    return problems


# --- profiling (optional) -----------------------------------------------------------


def find_py_spy() -> str | None:
    return shutil.which("py-spy") or (
        str(Path(sys.executable).parent / "py-spy")
        if (Path(sys.executable).parent / "py-spy").exists()
        else None
    )


def start_profiler(
    py_spy: str, pid: int, seconds: int, out: Path, cpus: CpuPlan
) -> subprocess.Popen[Any]:
    # --nonblocking: the server is not paused to be sampled, which keeps the
    # profiler's cost on its own CPU (the load generator's).
    argv = [
        py_spy,
        "record",
        "--pid",
        str(pid),
        "--rate",
        "200",
        "--duration",
        str(seconds),
        "--nonblocking",
        "--format",
        "raw",
        "--output",
        str(out),
    ]
    return spawn(
        cpus.prefix(cpus.load) + argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


# Where a sample's time goes: the deepest frame that matches decides (first match
# wins for that frame). SQLAlchemy's asyncio layer runs statements in greenlets,
# whose stacks py-spy shows without the coroutine frames above them, so areas are
# told apart by the frame's file, not by its callers.
PROFILE_AREAS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("SQLAlchemy: statement building and compiling", ("sqlalchemy/sql/",)),
    ("SQLAlchemy: engine, pool, asyncio adaptation", ("sqlalchemy/",)),
    ("asyncpg (driver)", ("asyncpg/",)),
    ("app/ingress/store.py (rows, batches)", ("app/ingress/store.py",)),
    ("access log and logging (logging, structlog)", ("logging/", "structlog/", "app/logging")),
    ("rate limiter (redis-py, app/ratelimit)", ("redis/", "app/ratelimit/")),
    (
        "webhook handler (app/ingress/webhook.py, parsing)",
        ("app/ingress/", "app/telegram/", "json/"),
    ),
    (
        "FastAPI/Starlette stack and app middleware",
        ("fastapi/", "starlette/", "app/middleware", "app/main"),
    ),
    ("uvicorn HTTP protocol", ("uvicorn/",)),
)


# Frames under which everything runs (start-up, the event loop's Python entry):
# 100% inclusive by construction, so left out of the inclusive list.
_ROOT_FRAME_MARKERS = (
    "<frozen runpy>",
    "click/",
    "uvicorn/main.py",
    "uvicorn/__main__.py",
    "uvicorn/server.py",
    "uvicorn/_compat.py",
    "asyncio/runners.py",
)


def summarize_profile(folded: Path, top: int = 20) -> None:
    """Areas, then the hottest frames (self and inclusive) of a py-spy folded-stack file."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    areas: dict[str, int] = {}
    samples = 0
    for line in folded.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        raw_frames = stack.split(";")
        frames = [_short_frame(frame) for frame in raw_frames]
        samples += count
        leaf = frames[-1]
        if "asyncio/runners.py" in raw_frames[-1]:
            # uvloop is C: its own time (polling, socket I/O, callbacks) lands here.
            leaf = "(event loop: uvloop's C code, socket I/O) " + leaf
        own[leaf] = own.get(leaf, 0) + count
        for raw, frame in set(zip(raw_frames, frames, strict=True)):
            if not any(marker in raw for marker in _ROOT_FRAME_MARKERS):
                inclusive[frame] = inclusive.get(frame, 0) + count
        area = _area(stack.split(";"))
        areas[area] = areas.get(area, 0) + count
    if not samples:
        say("    (the profile has no samples)")
        return
    for title, table, limit in (
        ("area (deepest matching frame)", areas, len(areas)),
        ("self time", own, top),
        ("inclusive time", inclusive, top),
    ):
        say(f"    {samples} samples by {title}:")
        for frame, count in sorted(table.items(), key=lambda item: -item[1])[:limit]:
            say(f"      {100 * count / samples:5.1f}%  {frame}")


def _short_frame(frame: str) -> str:
    # "function (/path/to/site-packages/pkg/module.py:123)" -> "function (pkg/module.py:123)"
    for marker in ("site-packages/", "/lib/python3.11/", str(ROOT) + "/"):
        if marker in frame:
            head, _, tail = frame.partition("(")
            if marker in tail:
                return f"{head}({tail.split(marker, 1)[1]}"
    return frame


def _area(frames: Sequence[str]) -> str:
    for frame in reversed(frames):
        for area, markers in PROFILE_AREAS:
            if any(marker in frame for marker in markers):
                return area
    return "event loop and everything else"


# --- one handler -----------------------------------------------------------------------


@dataclass
class HandlerResult:
    name: str
    load: LoadResult
    server_cpu: float  # share of one CPU the server process used while measured
    loadgen_cpu: float  # same for the load generator
    busy: dict[str, float] = field(default_factory=dict)  # per CPU, while measured


def bench_handler(
    name: str,
    *,
    args: argparse.Namespace,
    payloads: Sequence[Payload],
    templates: Path,
    loadgen: LoadGen,
    cpus: CpuPlan,
    fixture: Fixture | None,
    workdir: Path,
    round_index: int = 0,
    history: list[PhaseCount] | None = None,
) -> tuple[HandlerResult, list[str]]:
    """Start, check, warm up, measure, (verify,) stop. Returns the result and problems.

    `history` collects ours' phases across rounds: each check counts every round's
    rows in the one database.
    """
    tag = f"[{name}]" if args.rounds == 1 else f"[{name} {round_index + 1}/{args.rounds}]"
    bases = {phase: base + round_index * ROUND_SPAN for phase, base in PHASE_BASES.items()}
    phases = history if history is not None else []
    server = build_server(
        name,
        fixture,
        cpus,
        workdir,
        aiogram_background=args.aiogram_background,
        service_log_level=args.service_log_level,
        baseline=args.baseline,
    )
    say(f"{tag} {DESCRIPTIONS[name]}")
    problems: list[str] = []
    try:
        took = server.start()
        assert server.proc is not None
        say(
            f"{tag} listening on 127.0.0.1:{server.port} after {took:.1f} s (pid {server.proc.pid})"
        )
        acked = preflight(server, payloads, bases["preflight"])
        phases.append(PhaseCount("preflight", bases["preflight"], acked, 0))
        say(
            f"{tag} preflight: {acked}/{len(payloads)} payloads answered 2xx"
            + ("" if name == "bare" else ", a wrong secret answered 401")
        )
        if args.warmup > 0:
            say(f"{tag} warmup {args.warmup} s ...")
            warm = loadgen.run(
                f"{tag} warmup",
                server.url,
                templates,
                bases["warmup"],
                server.secret,
                args.warmup,
            )
            phases.append(
                PhaseCount("warmup", bases["warmup"], warm.acked_total, warm.unanswered_max)
            )
            say(f"{tag} warmup: {warm.rate:.0f} updates/s")

        profiler = None
        profile_out = None
        if args.profile is not None and name == "ours":
            py_spy = find_py_spy()
            if py_spy is None:
                say(f"{tag} --profile: py-spy not found (.venv/bin/pip install py-spy); skipped")
            else:
                args.profile.mkdir(parents=True, exist_ok=True)
                profile_out = args.profile / (
                    "ours.folded" if round_index == 0 else f"ours-{round_index + 1}.folded"
                )
                profiler = start_profiler(py_spy, server.proc.pid, args.duration, profile_out, cpus)
                say(f"{tag} profiling with py-spy (200 Hz, non-blocking) into {profile_out}")

        say(f"{tag} measuring {args.duration} s with {args.connections} connections ...")
        ticks_before = cpu_ticks()
        server_before = process_cpu_seconds(server.proc.pid)
        children_before = children_cpu_seconds()
        wall_before = time.monotonic()
        result = loadgen.run(
            f"{tag} measure",
            server.url,
            templates,
            bases["measure"],
            server.secret,
            args.duration,
        )
        wall = time.monotonic() - wall_before
        server_cpu = (process_cpu_seconds(server.proc.pid) - server_before) / wall
        loadgen_cpu = (children_cpu_seconds() - children_before) / wall
        ticks_after = cpu_ticks()
        busy = {
            cpu: (ticks_after[cpu][0] - b0) / max(1, ticks_after[cpu][1] - t0)
            for cpu, (b0, t0) in ticks_before.items()
            if cpu in ticks_after
        }
        phases.append(
            PhaseCount("measure", bases["measure"], result.acked_total, result.unanswered_max)
        )
        lat = result.latency_us
        say(
            f"{tag} {result.rate:.0f} updates/s, p50 {fmt_ms(lat['p50'])} ms, "
            f"p99 {fmt_ms(lat['p99'])} ms, max {fmt_ms(lat['max'])} ms; "
            f"server {100 * server_cpu:.0f}% of a CPU, load generator {100 * loadgen_cpu:.0f}%; "
            + ", ".join(f"CPU {cpu} {100 * share:.0f}% busy" for cpu, share in busy.items())
        )
        for warning in contention_warnings(cpus, busy, server_cpu):
            say(f"{tag} WARNING: {warning}")
        if result.latency_is_corrected:
            say(f"{tag} (wrk's histogram could not be read: latencies are wrk's corrected ones)")
        elif result.latency_corrected_us is not None:
            corrected = result.latency_corrected_us
            say(
                f"{tag} wrk's coordinated-omission-corrected estimate: "
                f"p90 {fmt_ms(corrected['p90'])} ms, p99 {fmt_ms(corrected['p99'])} ms"
            )
        if result.non_2xx:
            say(f"{tag} NON-2xx answers: {result.non_2xx}")
            problems.append(f"{name}: non-2xx answers {result.non_2xx}")
        if result.socket_errors:
            say(f"{tag} socket errors: {result.socket_errors}")

        if profiler is not None:
            try:
                profiler.wait(timeout=30)
            except subprocess.TimeoutExpired:
                stop(profiler)
            if profile_out is not None and profile_out.exists():
                summarize_profile(profile_out)

        if name in SERVICES:
            assert fixture is not None
            say(f"{tag} checking the database ...")
            lost = asyncio.run(_verify(fixture, phases))
            if lost:
                for problem in lost:
                    say(f"{tag} PROBLEM: {problem}")
                raise BenchError(f"{name} lost or duplicated updates: " + "; ".join(lost))
            say(f"{tag} database check passed: every acknowledged update is stored, once")
        return HandlerResult(name, result, server_cpu, loadgen_cpu, busy), problems
    finally:
        server.stop()


def contention_warnings(cpus: CpuPlan, busy: dict[str, float], server_cpu: float) -> list[str]:
    """What in the CPU figures makes a run suspect (other work on the machine)."""
    warnings: list[str] = []
    if cpus.server is None or cpus.load is None:
        return warnings
    server_core = busy.get(str(cpus.server), 0.0)
    load_core = busy.get(str(cpus.load), 0.0)
    if load_core > 0.9:
        warnings.append(
            f"CPU {cpus.load} (load generator, PostgreSQL, Redis) was {100 * load_core:.0f}% "
            "busy: the run may be limited there, not by the handler"
        )
    if server_core > 0.9 and server_cpu < server_core - 0.1:
        warnings.append(
            f"the server had {100 * server_cpu:.0f}% of CPU {cpus.server}, which was "
            f"{100 * server_core:.0f}% busy: other processes competed for it"
        )
    return warnings


# --- report -----------------------------------------------------------------------------


def print_table(results: dict[str, HandlerResult]) -> None:
    reference = results.get("aiogram")
    header = (
        f"{'handler':<9} {'updates/s':>10} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} "
        f"{'max ms':>8} {'non-2xx':>8} {'sock err':>8} {'srv CPU':>8} {'vs aiogram':>10}"
    )
    say(header)
    say("-" * len(header))
    for name in HANDLERS:
        if name not in results:
            continue
        load = results[name].load
        lat = load.latency_us
        cpu = f"{100 * results[name].server_cpu:.0f}%"
        ratio = (
            f"{load.rate / reference.load.rate:.2f}x"
            if reference is not None and reference.load.rate > 0
            else "-"
        )
        say(
            f"{name:<9} {load.rate:>10.0f} {fmt_ms(lat['p50']):>8} {fmt_ms(lat['p90']):>8} "
            f"{fmt_ms(lat['p99']):>8} {fmt_ms(lat['max']):>8} "
            f"{sum(load.non_2xx.values()):>8} {sum(load.socket_errors.values()):>8} "
            f"{cpu:>8} {ratio:>10}"
        )


def print_notes(results: dict[str, HandlerResult]) -> None:
    corrected = {
        name: r.load.latency_corrected_us
        for name, r in results.items()
        if r.load.latency_corrected_us is not None and not r.load.latency_is_corrected
    }
    say(
        "Latencies as measured, closed loop (each connection sends its next update after "
        "the answer, as Telegram does)."
    )
    if corrected:
        say(
            "wrk's coordinated-omission-corrected p99 (open-loop estimate; stalls count "
            "for every request that would have waited): "
            + ", ".join(f"{name} {fmt_ms(c['p99'])} ms" for name, c in corrected.items())
        )
    if any(r.load.latency_is_corrected for r in results.values()):
        say("(some rows show wrk's corrected latencies: its histogram could not be read)")


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else 0.0


def _ratios(rounds: Sequence[dict[str, HandlerResult]], name: str, reference: str) -> list[float]:
    """`name`'s updates/s over `reference`'s, per round (both measured in that round)."""
    return [
        r[name].load.rate / r[reference].load.rate
        for r in rounds
        if name in r and reference in r and r[reference].load.rate > 0
    ]


def print_summary(rounds: Sequence[dict[str, HandlerResult]]) -> None:
    """Medians over the rounds, with their range: the figures to compare on a noisy
    machine. Ratios are per round (handlers measured minutes apart), then the median."""
    say(f"Median of {len(rounds)} rounds (range in brackets):")
    for name in HANDLERS:
        measured = [r[name] for r in rounds if name in r]
        if not measured:
            continue
        rates = [m.load.rate for m in measured]
        p99s = [m.load.latency_us["p99"] / 1000 for m in measured]
        line = (
            f"  {name:<9} {_median(rates):>6.0f} updates/s [{min(rates):.0f}-{max(rates):.0f}], "
            f"p99 {_median(p99s):.1f} ms [{min(p99s):.1f}-{max(p99s):.1f}]"
        )
        for reference in ("base", "aiogram", "bare"):
            ratios = _ratios(rounds, name, reference) if name != reference else []
            if ratios:
                line += (
                    f", vs {reference} {_median(ratios):.2f}x [{min(ratios):.2f}-{max(ratios):.2f}]"
                )
        say(line)


def print_targets(rounds: Sequence[dict[str, HandlerResult]]) -> None:
    ours = [r["ours"] for r in rounds if "ours" in r]
    if not ours:
        return
    which = "" if len(rounds) == 1 else f" (median of {len(rounds)} rounds)"
    say(f"SPEC 10 targets for ours{which}:")
    ratios = _ratios(rounds, "ours", "aiogram")
    if ratios:
        ratio = _median(ratios)
        rate = _median([o.load.rate for o in ours])
        aiogram = _median([r["aiogram"].load.rate for r in rounds if "aiogram" in r])
        verdict = "MET" if ratio >= 1.0 else "NOT MET"
        say(f"  updates/s >= aiogram's:  {verdict} ({rate:.0f} vs {aiogram:.0f}, {ratio:.2f}x)")
    else:
        say("  updates/s >= aiogram's:  not measured in this run (add aiogram)")
    p99 = _median([o.load.latency_us["p99"] / 1000 for o in ours])
    verdict = "MET" if p99 < TARGET_P99_MS else "NOT MET"
    say(f"  p99 < {TARGET_P99_MS:.0f} ms:           {verdict} ({p99:.1f} ms)")
    for o in ours:
        if o.load.non_2xx:
            say(f"  (ours answered non-2xx: {o.load.non_2xx}; see its log)")


# --- main ---------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Webhook ingress benchmark: ours vs bare FastAPI vs aiogram (SPEC 10).",
    )
    parser.add_argument("--duration", type=int, default=10, help="measured seconds per handler")
    parser.add_argument("--warmup", type=int, default=3, help="warmup seconds per handler")
    parser.add_argument("--connections", type=int, default=40, help="concurrent connections")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run every handler this many times, interleaved, and report the medians",
    )
    parser.add_argument(
        "--only", choices=HANDLERS, action="append", help="run only this handler (repeatable)"
    )
    parser.add_argument(
        "--loadgen",
        choices=("auto", "wrk", "python"),
        default="auto",
        help="load generator: wrk if available (default), else bench/loadgen.py",
    )
    parser.add_argument(
        "--no-install", action="store_true", help="do not apt-get install wrk when it is missing"
    )
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (one CPU: 1)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    parser.add_argument(
        "--aiogram-background",
        action="store_true",
        help="aiogram answers at once and handles the update afterwards (its default mode)",
    )
    parser.add_argument(
        "--service-log-level",
        default="WARNING",
        help="LOG_LEVEL of ours (default WARNING: its access log off; INFO logs every request)",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        metavar="DIR",
        help="also run ours from this checkout (e.g. `git worktree add DIR main`), as `base`",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="record ours with py-spy during the measured run and print the top frames",
    )
    parser.add_argument(
        "--admin-database-url",
        default=os.environ.get("BENCH_ADMIN_DATABASE_URL", DEFAULT_ADMIN_DATABASE_URL),
        help="PostgreSQL where the bench may create and drop its database",
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("BENCH_REDIS_URL", DEFAULT_REDIS_URL),
        help="Redis URL with a spare DB index; that index is flushed",
    )
    args = parser.parse_args(argv)
    if args.baseline is not None:
        args.baseline = args.baseline.resolve()
        if not (args.baseline / "app" / "__main__.py").is_file():
            parser.error(f"--baseline {args.baseline}: not a checkout of this service")
    if (
        args.duration < 1
        or args.warmup < 0
        or args.connections < 1
        or args.threads < 1
        or args.rounds < 1
    ):
        parser.error(
            "--duration >= 1, --warmup >= 0, --connections >= 1, --threads >= 1, --rounds >= 1"
        )
    if args.threads > args.connections:
        parser.error("--threads must not exceed --connections")
    return args


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # Both explicitly: a shell starting the bench in the background leaves SIGINT
    # ignored, and then Python would not raise KeyboardInterrupt for it.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    selected = [
        name
        for name in HANDLERS
        if (args.only is None or name in args.only) and (name != "base" or args.baseline)
    ]
    rounds: list[dict[str, HandlerResult]] = []
    histories: dict[str, list[PhaseCount]] = {name: [] for name in SERVICES}
    fixtures: dict[str, Fixture] = {}
    problems: list[str] = []
    exit_code = 0
    workdir = Path(tempfile.mkdtemp(prefix="bench_ingress_"))
    try:
        require_loopback(args.admin_database_url, "--admin-database-url")
        require_loopback(args.redis_url, "--redis-url")
        tool = choose_loadgen(args.loadgen, install=not args.no_install)
        cpus = plan_cpus(pin=not args.no_pin)
        loadgen = LoadGen(tool, args.connections, args.threads if tool == "wrk" else 1, cpus)
        say(
            f"Ingress benchmark: {', '.join(selected)}; {args.connections} connections, "
            f"{args.warmup} s warmup + {args.duration} s measured each"
            + (f", {args.rounds} rounds (interleaved)" if args.rounds > 1 else "")
        )
        say(
            "Load generator: "
            + (f"wrk ({args.threads} thread(s), {WRK_SCRIPT.name})" if tool == "wrk" else "")
            + ("bench/loadgen.py (asyncio, uvloop)" if tool == "python" else "")
        )
        say(f"CPU pinning: {cpus.describe()}")
        payloads, excluded = load_payloads()
        say(f"Payloads: {len(payloads)} sample updates, cycled, each request a new update_id")
        if excluded:
            say("  left out (every handler gets the same set): " + "; ".join(excluded))
        templates = workdir / "templates.txt"
        templates.write_text("".join(p.template + "\n" for p in payloads), encoding="utf-8")

        for service in SERVICES:
            if service not in selected:
                continue
            fixture = fixtures[service] = new_fixture(args.admin_database_url, args.redis_url)
            say(f"Database ({service}): creating and migrating {fixture.database} ...")
            prepare_fixture(fixture)
            say(
                f"  workspace and one webhook connection created (vault-sealed token, "
                f"secret and key); Redis {args.redis_url} flushed"
            )
        if fixtures:
            say(
                f"  rate limits raised so they do not interfere: "
                f"INGRESS_UPDATES_PER_SECOND={UPDATES_PER_SECOND}, "
                f"INGRESS_UPDATES_BURST={UPDATES_BURST}"
            )
            say(
                f"  {' and '.join(fixtures)} run with LOG_LEVEL={args.service_log_level.upper()}"
                + (
                    " (its logging setup would re-enable uvicorn's access log at INFO)"
                    if args.service_log_level.upper() != "INFO"
                    else " (uvicorn's access log is on: one log line per request)"
                )
            )

        for round_index in range(args.rounds):
            results: dict[str, HandlerResult] = {}
            rounds.append(results)
            for name in selected:
                say()
                result, found = bench_handler(
                    name,
                    args=args,
                    payloads=payloads,
                    templates=templates,
                    loadgen=loadgen,
                    cpus=cpus,
                    fixture=fixtures.get(name),
                    workdir=workdir,
                    round_index=round_index,
                    history=histories.get(name),
                )
                results[name] = result
                problems += found
    except BenchError as exc:
        say(f"\nBENCH FAILED: {exc}")
        exit_code = 1
    except KeyboardInterrupt:
        say("\ninterrupted; cleaning up")
        exit_code = 130
    except Exception:
        traceback.print_exc()
        say("\nBENCH FAILED (unexpected error above); cleaning up")
        exit_code = 1
    finally:
        # A second Ctrl-C must not cut the cleanup short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stop_all()
        for fixture in fixtures.values():
            created = fixture.created
            try:
                drop_fixture(fixture)
                if created:
                    say(f"\nDatabase {fixture.database} dropped; Redis DB flushed")
            except Exception as exc:
                say(f"\ncould not drop database {fixture.database}: {exc}")
                exit_code = exit_code or 1
        if exit_code != 0 and any(workdir.glob("*.log")):
            say(f"server logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    rounds = [results for results in rounds if results]
    if rounds:
        for index, results in enumerate(rounds):
            say()
            if len(rounds) > 1:
                say(f"Round {index + 1}:")
            print_table(results)
        print_notes(rounds[-1])
        if len(rounds) > 1:
            say()
            print_summary(rounds)
        say()
        print_targets(rounds)
        if problems:
            say("Notes: " + "; ".join(problems))
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
