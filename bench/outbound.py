"""Outbound benchmark (SPEC section 10): `integrations worker` processes delivering
queued messages to a local Bot API double, side by side with a bare send loop.

    .venv/bin/python bench/outbound.py [--messages 20000] [--rounds 3] [--bots 100]
                                       [--duration 20] [--only throughput|pacing]

(a) throughput: the double enforces nothing. N queued messages across many bots,
    each chat used once, so that pacing never decides. 1 and then 2 worker
    processes send them all (timed until every row is `sent`); against bare loops
    that send the same N calls with the dispatcher's concurrency (its
    `DispatchSettings.concurrency` in flight per process), storing nothing: through
    the service's own TelegramClient on aiohttp (the worker's transport), in 1 and
    2 processes, and for reference on httpx and through a raw aiohttp session.
    Bare client x1, x2 and 2 workers run in --rounds rounds one after another,
    and the target is judged on the median of the rounds' ratios.
(b) pacing: the double answers 429 where Telegram's limits are exceeded. Every bot
    has a backlog over private chats and groups; 2 workers run for --duration
    seconds; the achieved rate is compared with the rate the limits allow, and the
    sends the double saw are checked against each limit.

Everything runs on 127.0.0.1: a fresh PostgreSQL database (created, migrated,
dropped at the end), one Redis DB index (flushed before and after), the double as
a process of its own (bench/outbound_double.py). See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import json
import math
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.request import urlopen

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
# Run as a script: bench/ is on sys.path, the project root (for `app`) is not.
for _path in (str(ROOT), str(BENCH_DIR)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import ingress  # noqa: E402  (bench/ingress.py: process, database and Redis helpers)
from ingress import BenchError, Fixture, free_port, require_loopback, spawn, stop  # noqa: E402

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/6"
# --bare-child: the service's TelegramClient on aiohttp ("client") or on httpx, or a
# raw aiohttp session.
BARE_NAMES = {"client": "client", "httpx": "httpx", "aiohttp": "aiohttp raw"}
DOUBLE = BENCH_DIR / "outbound_double.py"
# The workers' log level (--worker-log-level); INFO shows the dispatcher's stats.
WORKER_LOG_LEVEL = ["WARNING"]
BOT_ID_BASE = 700_000_000
DAILY_LIMIT = 100_000_000
# Telegram's limits, as the double enforces them.
BOT_RATE, CHAT_RATE, GROUP_RATE = 30.0, 1.0, 20.0 / 60.0


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Bot:
    connection_id: uuid.UUID
    bot_id: int
    token: str


@dataclass(frozen=True)
class Send:
    bot: int  # index into the bots
    chat_id: int


@dataclass
class Seeded:
    workspace_id: uuid.UUID
    requested_by: uuid.UUID
    bots: list[Bot]


# --- database ------------------------------------------------------------------------


def new_fixture(admin_url: str, redis_url: str) -> Fixture:
    fixture = ingress.new_fixture(admin_url, redis_url)
    name = f"bench_outbound_{os.getpid()}_{secrets.token_hex(3)}"
    from sqlalchemy.engine import make_url

    url = make_url(fixture.database_url).set(database=name)
    fixture.database = name
    fixture.database_url = url.render_as_string(hide_password=False)
    return fixture


async def seed(fixture: Fixture, bots: int) -> Seeded:
    """A workspace and `bots` webhook-mode connections (so no worker polls them), their
    tokens sealed with the service's own credential code, daily limits out of the way."""
    from app.auth.service import create_workspace
    from app.config import Settings
    from app.connections.credentials import ConnectionCredentials
    from app.connections.models import (
        ApprovalMode,
        ConnectionMode,
        ConnectionStatus,
        TelegramConnection,
    )
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
    made: list[Bot] = []
    try:
        async with create_session_factory(engine)() as session:
            workspace, _admin = await create_workspace(session, "outbound benchmark")
            for index in range(bots):
                bot_id = BOT_ID_BASE + index
                token = f"{bot_id}:AAbench-outbound-{index:04d}-{secrets.token_hex(8)}"
                connection = TelegramConnection(
                    id=new_id(),
                    workspace_id=workspace.id,
                    name=f"bench bot {index}",
                    status=ConnectionStatus.active,
                    mode=ConnectionMode.webhook,
                    approval_mode=ApprovalMode.required,
                    daily_limit=DAILY_LIMIT,
                    bot_id=bot_id,
                    bot_username=f"outbound_bench_{index}_bot",
                    bot_first_name=f"Outbound bench {index}",
                    created_at=utcnow(),
                )
                credentials.seal_token(connection, BotToken(token))
                session.add(connection)
                made.append(Bot(connection.id, bot_id, token))
            await session.commit()
            workspace_id = workspace.id
    finally:
        await engine.dispose()
    return Seeded(workspace_id, uuid.uuid4(), made)


async def enqueue(fixture: Fixture, seeded: Seeded, sends: Sequence[Send]) -> None:
    """The queue as the approval flow leaves it (`queued`, due now), written with Core
    inserts: how rows got there is not what is measured."""
    from sqlalchemy import text

    from app.db import create_engine, utcnow
    from app.messages.models import MessageStatus, OutboundMessage

    table = OutboundMessage.__table__
    now = utcnow()
    engine = create_engine(fixture.database_url)
    try:
        async with engine.begin() as connection:
            # Each part starts from an empty queue and inbox.
            await connection.execute(
                text(
                    "TRUNCATE outbound_messages, conversation_messages, conversations, "
                    "contacts, audit_events"
                )
            )
            rows = [
                {
                    "id": uuid.uuid4(),
                    "workspace_id": seeded.workspace_id,
                    "connection_id": seeded.bots[send.bot].connection_id,
                    "chat_id": str(send.chat_id),
                    "text": f"bench message {number}",
                    "status": MessageStatus.queued,
                    "requested_by": seeded.requested_by,
                    "attempts": 0,
                    "next_attempt_at": now,
                    "created_at": now,
                    "updated_at": now,
                }
                for number, send in enumerate(sends)
            ]
            for start in range(0, len(rows), 5000):
                await connection.execute(table.insert(), rows[start : start + 5000])
            await connection.execute(text("ANALYZE outbound_messages"))
    finally:
        await engine.dispose()


async def queue_counts(dsn: str) -> dict[str, int]:
    import asyncpg

    db = await asyncpg.connect(dsn)
    try:
        rows = await db.fetch("SELECT status, count(*) FROM outbound_messages GROUP BY status")
    finally:
        await db.close()
    return {row[0]: row[1] for row in rows}


# --- processes -------------------------------------------------------------------------


class DoubleProcess:
    def __init__(self, limits: bool) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        argv = [sys.executable, str(DOUBLE), "--port", str(self.port)]
        if limits:
            argv.append("--limits")
        self.proc = spawn(argv)
        deadline = time.monotonic() + 15
        while True:
            try:
                with urlopen(f"{self.base}/_health", timeout=1):
                    break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise BenchError("the Bot API double did not start") from None
                time.sleep(0.1)

    def stats(self, sends: bool = False) -> dict[str, Any]:
        with urlopen(f"{self.base}/_stats{'?sends=1' if sends else ''}", timeout=30) as answer:
            result: dict[str, Any] = json.load(answer)
            return result

    def close(self) -> None:
        stop(self.proc, grace=5)


def worker_env(fixture: Fixture, api_base: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(ingress.service_settings(fixture, 0, log_level=WORKER_LOG_LEVEL[0]))
    env["TELEGRAM_API_BASE"] = api_base
    return env


def start_workers(fixture: Fixture, api_base: str, count: int, logs: Path) -> list[Any]:
    env = worker_env(fixture, api_base)
    procs = []
    for index in range(count):
        out = open(logs / f"worker{index}.log", "wb")  # noqa: SIM115  (closed with the process)
        procs.append(
            spawn(
                [sys.executable, "-m", "app", "worker"],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        )
    return procs


def worker_log_tail(logs: Path) -> str:
    tails = []
    for path in sorted(logs.glob("worker*.log")):
        lines = path.read_text(errors="replace").splitlines()
        tails.append(f"--- {path.name}\n" + "\n".join(lines[-15:]))
    return "\n".join(tails)


# --- (a) throughput ---------------------------------------------------------------------


@dataclass
class Rate:
    name: str
    messages: int
    seconds: float  # first send to last answer (startup excluded)
    wall: float  # from the processes' start
    cpu: float = 0.0  # the measured processes' CPU seconds
    note: str = ""

    @property
    def per_second(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else 0.0


def throughput_plan(messages: int, bots: int) -> list[Send]:
    # Round-robin over the bots, every chat used once, so no chat or group limit
    # binds. A bot's own 30/s could: 400 bots allow 12,000/s in all, above what the
    # senders reach here; --throughput-bots sets it.
    return [Send(number % bots, 10_000_000 + number) for number in range(messages)]


async def _wait_all_sent(dsn: str, total: int, limit_s: float, procs: Sequence[Any]) -> float:
    import asyncpg

    db = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + limit_s
        last_report = 0.0
        while True:
            row = await db.fetchrow(
                "SELECT count(*) FILTER (WHERE status = 'sent') AS sent,"
                " count(*) FILTER (WHERE status = 'failed') AS failed"
                " FROM outbound_messages"
            )
            assert row is not None
            sent, failed = int(row["sent"]), int(row["failed"])
            now = time.monotonic()
            if sent + failed >= total:
                return now
            if now - last_report > 2:
                log(f"  {sent}/{total} sent")
                last_report = now
            if now > deadline:
                raise BenchError(f"only {sent}/{total} sent after {limit_s:.0f} s")
            if any(proc.poll() is not None for proc in procs):
                raise BenchError("a worker process exited")
            # Each look counts the whole table: often enough to see the end soon
            # (the rate is taken from the rows' sent_at, not from here), rarely
            # enough not to take the workers' database time.
            await asyncio.sleep(0.25)
    finally:
        await db.close()


async def _send_span(dsn: str) -> tuple[float, int, int]:
    """Seconds from the first sent_at to the last, rows sent, rows failed."""
    import asyncpg

    db = await asyncpg.connect(dsn)
    try:
        row = await db.fetchrow(
            "SELECT extract(epoch FROM max(sent_at) - min(sent_at)) AS span,"
            " count(*) FILTER (WHERE status = 'sent') AS sent,"
            " count(*) FILTER (WHERE status = 'failed') AS failed FROM outbound_messages"
        )
    finally:
        await db.close()
    assert row is not None
    return float(row["span"] or 0.0), int(row["sent"]), int(row["failed"])


# Where a worker's time goes, for --profile (see ingress.summarize_profile): the
# deepest frame that matches decides.
PROFILE_AREAS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("SQLAlchemy: statement building and compiling", ("sqlalchemy/sql/",)),
    ("SQLAlchemy: engine, pool, asyncio adaptation", ("sqlalchemy/",)),
    ("asyncpg (driver)", ("asyncpg/",)),
    ("httpx/httpcore (HTTP client)", ("httpx/", "httpcore/", "h11/", "anyio/")),
    ("rate limiter (redis-py, app/ratelimit)", ("redis/", "app/ratelimit/")),
    ("vault (opening the sealed token)", ("app/vault", "cryptography/")),
    ("logging (structlog, logging)", ("logging/", "structlog/", "app/logging")),
    ("app/messages, app/inbox, app/audit", ("app/messages/", "app/inbox/", "app/audit/")),
    ("app/telegram (client, parsing)", ("app/telegram/", "json/")),
    ("start-up (imports)", ("<frozen importlib", "importlib/")),
)


def start_profile(pid: int, out: Path) -> subprocess.Popen[Any] | None:
    py_spy = ingress.find_py_spy()
    if py_spy is None:
        log("py-spy not found (.venv/bin/pip install py-spy): not profiling")
        return None
    # --nonblocking: the worker is not paused to be sampled.
    argv = [py_spy, "record", "--pid", str(pid), "--rate", "200", "--duration", "120"]
    argv += ["--nonblocking", "--format", "raw", "--output", str(out)]
    return spawn(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def finish_profile(profiler: subprocess.Popen[Any] | None, out: Path, title: str) -> None:
    if profiler is None:
        return
    # py-spy writes what it has on SIGINT.
    with contextlib.suppress(ProcessLookupError):
        os.kill(profiler.pid, signal.SIGINT)
    with contextlib.suppress(subprocess.TimeoutExpired):
        profiler.wait(timeout=20)
    stop(profiler)
    if out.exists():
        print(f"\nprofile of {title} ({out}):")
        ingress.PROFILE_AREAS = PROFILE_AREAS
        ingress.summarize_profile(out)


def run_workers_until_sent(
    fixture: Fixture,
    seeded: Seeded,
    sends: Sequence[Send],
    workers: int,
    logs: Path,
    profile: Path | None = None,
) -> Rate:
    asyncio.run(enqueue(fixture, seeded, sends))
    ingress.flush_redis(fixture.redis_url)
    double = DoubleProcess(limits=False)
    procs: list[Any] = []
    try:
        started = time.monotonic()
        procs = start_workers(fixture, double.base, workers, logs)
        profiler = None if profile is None else start_profile(procs[0].pid, profile)
        timeout = 30 + len(sends) / 50
        try:
            done = asyncio.run(
                _wait_all_sent(fixture.asyncpg_dsn(fixture.database), len(sends), timeout, procs)
            )
        except BenchError:
            log(worker_log_tail(logs))
            raise
        cpu = sum(ingress.process_cpu_seconds(proc.pid) for proc in procs)
        span, sent, failed = asyncio.run(_send_span(fixture.asyncpg_dsn(fixture.database)))
        answered = int(double.stats()["ok"])
        if profile is not None:
            finish_profile(profiler, profile, f"worker 1 of {workers}, throughput")
    finally:
        for proc in procs:
            stop(proc)
        double.close()
    note = f"{failed} failed" if failed else ""
    if answered != sent:
        # More answers than rows means a message was sent twice.
        note = (note + "; " if note else "") + f"double answered {answered} for {sent} rows"
    return Rate(
        f"{workers} worker{'s' if workers > 1 else ''}", sent, span, done - started, cpu, note
    )


async def bare_child(client: str, base: str, plan: list[Any], part: int, parts: int) -> None:
    """One bare loop process: its share of the calls, the dispatcher's concurrency in
    flight, nothing stored. Prints a JSON line: calls, first request and last answer
    (wall clock)."""
    calls = plan[part::parts]
    queue: asyncio.Queue[tuple[str, int, str]] = asyncio.Queue()
    for call in calls:
        queue.put_nowait((call[0], call[1], call[2]))
    failures = 0

    from app.messages.dispatcher import DispatchSettings

    concurrency = DispatchSettings().concurrency
    if client in ("httpx", "client"):
        import aiohttp
        import httpx

        from app.telegram.client import TelegramClient

        # As app.runtime builds them: httpx for the API server, aiohttp for the worker.
        http: Any
        if client == "httpx":
            http = httpx.AsyncClient(
                timeout=httpx.Timeout(10.0, connect=5.0),
                limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
            )
            close: Any = http.aclose
        else:
            http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=30)
            )
            close = http.close
        telegram = TelegramClient(http, base, request_timeout=10.0)

        async def send(token: str, chat_id: int, text: str) -> None:
            await telegram.send_message(token, chat_id=chat_id, text=text)

    else:
        import aiohttp

        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=200), timeout=aiohttp.ClientTimeout(total=10)
        )

        async def send(token: str, chat_id: int, text: str) -> None:
            async with session.post(
                f"{base}/bot{token}/sendMessage", json={"chat_id": chat_id, "text": text}
            ) as answer:
                body = await answer.json()
                if not body.get("ok"):
                    raise RuntimeError(body.get("description"))

        close = session.close

    async def lane() -> None:
        nonlocal failures
        while True:
            try:
                token, chat_id, text = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            try:
                await send(token, chat_id, text)
            except Exception:
                failures += 1

    first = time.time()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    last = time.time()
    await close()
    print(json.dumps({"calls": len(calls), "failures": failures, "first": first, "last": last}))


def run_bare(
    client: str, processes: int, seeded: Seeded, sends: Sequence[Send], logs: Path
) -> Rate:
    plan = [
        [seeded.bots[s.bot].token, s.chat_id, f"bench message {n}"] for n, s in enumerate(sends)
    ]
    plan_file = logs / "bare_plan.json"
    plan_file.write_text(json.dumps(plan))
    double = DoubleProcess(limits=False)
    procs: list[Any] = []
    try:
        started = time.monotonic()
        for part in range(processes):
            argv = [sys.executable, str(Path(__file__).resolve()), "--bare-child", client]
            argv += ["--bare-base", double.base, "--bare-plan", str(plan_file)]
            argv += ["--bare-part", f"{part}/{processes}"]
            procs.append(spawn(argv, stdout=subprocess.PIPE, text=True))
        results = []
        for proc in procs:
            out, _ = proc.communicate(timeout=30 + len(sends) / 50)
            if proc.returncode != 0:
                raise BenchError(f"the bare loop ({client}) failed")
            results.append(json.loads(out.strip().splitlines()[-1]))
        wall = time.monotonic() - started
        cpu = ingress.children_cpu_seconds()
    finally:
        for proc in procs:
            stop(proc)
        double.close()
    calls = sum(int(r["calls"]) - int(r["failures"]) for r in results)
    span = max(r["last"] for r in results) - min(r["first"] for r in results)
    failures = sum(int(r["failures"]) for r in results)
    name = f"bare {BARE_NAMES[client]} x{processes}"
    return Rate(name, calls, span, wall, cpu, f"{failures} failed" if failures else "")


def part_throughput(
    fixture: Fixture,
    seeded: Seeded,
    messages: int,
    rounds: int,
    logs: Path,
    profile: Path | None,
) -> bool:
    """The references once (httpx, a raw aiohttp session, 1 worker), then `rounds`
    rounds of bare client x1, bare client x2 and 2 workers one after another: on a
    shared 2-core machine one sample of each differs from the next by up to a
    quarter, so the target is judged on the median of the rounds' own ratios."""
    sends = throughput_plan(messages, len(seeded.bots))

    def bare(client: str, processes: int) -> Rate:
        log(f"(a) bare loop, {client}, {processes} process(es), {messages} calls")
        # children_cpu_seconds() accumulates over every reaped child (the workers
        # too): the loop's own is the difference.
        before = ingress.children_cpu_seconds()
        rate = run_bare(client, processes, seeded, sends, logs)
        rate.cpu -= before
        return rate

    def workers(count: int, round_: int) -> Rate:
        log(f"(a) {count} worker process(es), {messages} messages")
        out = None
        if profile is not None and round_ == 0:
            out = profile / f"throughput_{count}w.folded"
        return run_workers_until_sent(fixture, seeded, sends, count, logs, out)

    references = [bare("httpx", 1), bare("aiohttp", 1), workers(1, 0)]
    samples: list[dict[str, Rate]] = []
    for round_ in range(rounds):
        log(f"(a) round {round_ + 1} of {rounds}")
        in_round = [bare("client", 1), bare("client", 2), workers(2, round_)]
        samples.append({rate.name: rate for rate in in_round})

    def median_of(name: str) -> Rate:
        """The round whose rate is the median (the lower middle of an even count)."""
        rates = sorted((sample[name] for sample in samples), key=lambda rate: rate.per_second)
        return rates[(len(rates) - 1) // 2]

    bare1, bare2 = median_of("bare client x1"), median_of("bare client x2")
    print()
    print(
        f"(a) throughput: {messages} messages, {len(seeded.bots)} bots, each chat once, "
        f"no limits; {rounds} round(s)"
    )
    print(
        f"{'round':<7}{'bare client x1':>16}{'bare client x2':>16}{'2 workers':>11}  vs x1  vs x2"
    )
    for number, sample in enumerate(samples, start=1):
        one, two, ours = (
            sample[name].per_second for name in ("bare client x1", "bare client x2", "2 workers")
        )
        ratios = f"{ours / one:.2f}x  {ours / two:.2f}x"
        print(f"{number:<7}{one:>16.0f}{two:>16.0f}{ours:>11.0f}  {ratios}")
    print("medians (the references once):")
    print(
        f"{'sender':<18}{'msg/s':>9}{'span s':>9}{'wall s':>9}{'CPU s':>8}  vs bare x1  vs bare x2"
    )
    table = [bare1, bare2, *references[:2], references[2], median_of("2 workers")]
    for rate in table:
        print(
            f"{rate.name:<18}{rate.per_second:>9.0f}{rate.seconds:>9.2f}{rate.wall:>9.2f}"
            f"{rate.cpu:>8.1f}  {rate.per_second / bare1.per_second:>9.2f}x"
            f"  {rate.per_second / bare2.per_second:>9.2f}x  {rate.note}"
        )
    print(
        "msg/s: messages / span (first send to last send; the workers' span is "
        "min(sent_at)..max(sent_at), so their startup is excluded; wall includes it)."
    )
    ours = [sample["2 workers"].per_second for sample in samples]
    to_x2 = statistics.median(
        sample["2 workers"].per_second / sample["bare client x2"].per_second for sample in samples
    )
    to_x1 = statistics.median(
        sample["2 workers"].per_second / sample["bare client x1"].per_second for sample in samples
    )
    fast_enough = statistics.median(ours) >= 1000
    print(
        f"target 2 workers >= 1000 msg/s: {'met' if fast_enough else 'NOT met'} "
        f"(median {statistics.median(ours):.0f}); >= half the bare loop's rate: "
        f"{'met' if to_x2 >= 0.5 else 'NOT met'} (median of the rounds' ratios: {to_x2:.2f}x "
        f"bare client x2, {to_x1:.2f}x bare client x1)"
    )
    everything = [*references, *(rate for sample in samples for rate in sample.values())]
    return all(not rate.note for rate in everything)


# --- (b) pacing ------------------------------------------------------------------------


@dataclass
class BotPlan:
    privates: list[int] = field(default_factory=list)
    groups: list[int] = field(default_factory=list)

    @property
    def allowed(self) -> float:
        return min(BOT_RATE, len(self.privates) * CHAT_RATE + len(self.groups) * GROUP_RATE)


def pacing_plan(bots: int, duration: float) -> tuple[list[BotPlan], list[Send]]:
    """One bot in ten is limited by its own 30/s (40 private chats, 4 groups); the
    others by their chats (4 private chats at 1/s, 3 groups at 20/min: 5/s). Every
    chat's backlog outlasts the run, so the allowed rate holds throughout."""
    plans: list[BotPlan] = []
    sends: list[Send] = []
    private_backlog = math.ceil(duration * CHAT_RATE) + 5
    group_backlog = math.ceil(duration * GROUP_RATE) + 3
    for index in range(bots):
        busy = index % 10 == 0
        plan = BotPlan(
            privates=[20_000_000 + index * 100 + n for n in range(40 if busy else 4)],
            groups=[-(1_000_000_000_000 + index * 100 + n) for n in range(4 if busy else 3)],
        )
        plans.append(plan)
        for chat in plan.privates:
            sends += [Send(index, chat)] * private_backlog
        for chat in plan.groups:
            sends += [Send(index, chat)] * group_backlog
    return plans, sends


def check_sends(sends: Sequence[Sequence[Any]]) -> dict[str, int]:
    """Recount from the double's log of accepted sends, independently of its 429s."""
    by_chat: dict[tuple[int, int], list[float]] = defaultdict(list)
    by_bot: dict[int, list[float]] = defaultdict(list)
    for bot, chat, at in sends:
        by_chat[(bot, chat)].append(at)
        by_bot[bot].append(at)
    broken = {"chat": 0, "group": 0, "bot": 0}
    for (_bot, chat), times in by_chat.items():
        times.sort()
        broken["chat"] += sum(1 for a, b in itertools.pairwise(times) if b - a < 1.0)
        if chat < 0:
            broken["group"] += sum(
                1 for i in range(20, len(times)) if times[i] - times[i - 20] < 60
            )
    for times in by_bot.values():
        times.sort()
        broken["bot"] += sum(1 for i in range(30, len(times)) if times[i] - times[i - 30] < 1.0)
    return broken


def spacing_beyond_limits(
    sends: Sequence[Sequence[Any]], since: float, bots: set[int]
) -> dict[str, list[float]]:
    """For every send of `bots` (bots whose chats limit them, not their 30/s) after
    `since`: how long after the previous send of its chat it came, beyond the chat's
    interval (1 s; 3 s for a group, the pacer's spacing for 20 a minute). What a chat
    loses per send to the time between one send's arrival and the next one's
    admission."""
    by_chat: dict[tuple[int, int], list[float]] = defaultdict(list)
    for bot, chat, at in sends:
        if bot in bots:
            by_chat[(bot, chat)].append(at)
    beyond: dict[str, list[float]] = {"chat": [], "group": []}
    for (_bot, chat), times in by_chat.items():
        times.sort()
        interval = 1.0 / GROUP_RATE if chat < 0 else 1.0 / CHAT_RATE
        kind = "group" if chat < 0 else "chat"
        beyond[kind] += [b - a - interval for a, b in itertools.pairwise(times) if a >= since]
    return beyond


def window_beyond_limit(
    sends: Sequence[Sequence[Any]], since: float, bots: set[int]
) -> list[float]:
    """For every send of `bots` (bots their own 30/s limits) after `since`: how long
    after the 30th send before it it came, beyond the window's second. What a bot
    loses per send between a place in its window coming free and being used again."""
    by_bot: dict[int, list[float]] = defaultdict(list)
    for bot, _chat, at in sends:
        if bot in bots:
            by_bot[bot].append(at)
    beyond = []
    for times in by_bot.values():
        times.sort()
        window = int(BOT_RATE)
        beyond += [
            times[i] - times[i - window] - 1.0
            for i in range(window, len(times))
            if times[i - window] >= since
        ]
    return beyond


def _ms_summary(values: Sequence[float]) -> str:
    if not values:
        return "none"
    ordered = sorted(values)
    return (
        f"median {statistics.median(ordered) * 1000:.1f} ms, "
        f"p90 {ordered[int(len(ordered) * 0.9)] * 1000:.1f} ms, "
        f"max {ordered[-1] * 1000:.1f} ms (n={len(ordered)})"
    )


def part_pacing(
    fixture: Fixture, seeded: Seeded, duration: float, logs: Path, profile: Path | None
) -> bool:
    plans, sends = pacing_plan(len(seeded.bots), duration)
    allowed = sum(plan.allowed for plan in plans)
    log(f"(b) pacing: {len(sends)} queued messages, allowed {allowed:.0f}/s, {duration:.0f} s")
    asyncio.run(enqueue(fixture, seeded, sends))
    ingress.flush_redis(fixture.redis_url)
    double = DoubleProcess(limits=True)
    procs: list[Any] = []
    try:
        procs = start_workers(fixture, double.base, 2, logs)
        # Measured from the first send the double sees, so the workers' startup
        # (imports, connecting) is not counted against them.
        deadline = time.monotonic() + 60
        while int(double.stats()["ok"]) == 0:
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                log(worker_log_tail(logs))
                raise BenchError("the workers sent nothing")
            time.sleep(0.05)
        start = time.monotonic()
        out = None if profile is None else profile / "pacing.folded"
        profiler = None if out is None else start_profile(procs[0].pid, out)
        while (elapsed := time.monotonic() - start) < duration:
            time.sleep(min(2.0, duration - elapsed))
            stats = double.stats()
            elapsed = time.monotonic() - start
            log(f"  {elapsed:5.1f} s: {stats['ok']} sent, {stats['too_many']} x 429")
        stats = double.stats(sends=True)
        cpu = sum(ingress.process_cpu_seconds(proc.pid) for proc in procs)
        if out is not None:
            finish_profile(profiler, out, "worker 1 of 2, pacing")
    finally:
        for proc in procs:
            stop(proc)
        double.close()
    counts = asyncio.run(queue_counts(fixture.asyncpg_dsn(fixture.database)))

    accepted: list[list[Any]] = stats["sends"]
    first = min(at for _b, _c, at in accepted)
    end = float(stats["now"])
    whole = len(accepted) / (end - first)
    # The steady state: GCRA bursts are 1, so the first seconds ramp up; skip 2 s.
    steady_from = first + 2.0
    steady = sum(1 for _b, _c, at in accepted if at >= steady_from) / (end - steady_from)
    broken = check_sends(accepted)
    per_bot: dict[int, int] = defaultdict(int)
    for bot, _chat, at in accepted:
        if at >= steady_from:
            per_bot[bot] += 1
    shares = [
        per_bot.get(seeded.bots[i].bot_id, 0) / (end - steady_from) / plan.allowed
        for i, plan in enumerate(plans)
    ]
    busy = [s for i, s in enumerate(shares) if i % 10 == 0]
    small = [s for i, s in enumerate(shares) if i % 10 != 0]

    print()
    print(
        f"(b) pacing: {len(seeded.bots)} bots ({len(busy)} with 40 chats + 4 groups, "
        f"{len(small)} with 4 chats + 3 groups), 2 workers, {duration:.0f} s, limits on"
    )
    print(f"allowed rate (sum over bots of min(30/s, chats + groups/3 per s)): {allowed:.0f}/s")
    print(f"achieved, whole run:           {whole:8.0f}/s  ({whole / allowed:.1%} of allowed)")
    print(f"achieved, after the first 2 s: {steady:8.0f}/s  ({steady / allowed:.1%} of allowed)")
    print(
        f"per bot, share of its allowed rate after 2 s: 30/s bots median "
        f"{statistics.median(busy):.1%} [min {min(busy):.1%}], 5/s bots median "
        f"{statistics.median(small):.1%} [min {min(small):.1%}]"
    )
    chat_limited = {seeded.bots[i].bot_id for i in range(len(plans)) if i % 10 != 0}
    beyond = spacing_beyond_limits(accepted, steady_from, chat_limited)
    bot_limited = {seeded.bots[i].bot_id for i in range(len(plans)) if i % 10 == 0}
    window = window_beyond_limit(accepted, steady_from, bot_limited)
    print(f"30/s bots, each send after the 30th before it, beyond 1 s: {_ms_summary(window)}")
    print("5/s bots, each chat's sends: how far apart beyond the chat's interval")
    print(f"  private chats (1 s): {_ms_summary(beyond['chat'])}")
    print(f"  groups (3 s):        {_ms_summary(beyond['group'])}")
    print(
        f"429 answers: {stats['too_many']} (refused for chat {stats['violations']['chat']}, "
        f"group {stats['violations']['group']}, bot {stats['violations']['bot']})"
    )
    inside = [wait for waits in stats["refused_by"].values() for wait in waits]
    if inside:
        print(
            f"  refused sends came {statistics.median(inside) * 1000:.1f} ms (median) "
            f"[{min(inside) * 1000:.1f}-{max(inside) * 1000:.1f}] before their window allowed"
        )
    print(
        f"violations among accepted sends (recounted): chat {broken['chat']}, "
        f"group {broken['group']}, bot {broken['bot']}"
    )
    print(
        f"workers' CPU: {cpu:.1f} s over the run; queue afterwards: {dict(sorted(counts.items()))}"
    )
    rate_ok = steady >= 0.95 * allowed
    clean = stats["too_many"] == 0 and not any(broken.values())
    print(
        f"target >= 95% of the allowed rate: {'met' if rate_ok else 'NOT met'}; zero 429s and "
        f"no limit broken: {'met' if clean else 'NOT met'}"
    )
    return True


# --- main ------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20000, help="(a) messages (default 20000)")
    parser.add_argument("--bots", type=int, default=100, help="(b) bots (default 100)")
    parser.add_argument(
        "--throughput-bots",
        type=int,
        default=400,
        help="(a) bots (default 400: their 30/s each allow 12,000/s, above any sender here)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="(a) rounds of bare client x1, x2 and 2 workers, judged on their median (default 3)",
    )
    parser.add_argument("--duration", type=float, default=20.0, help="(b) seconds (default 20)")
    parser.add_argument("--only", choices=("throughput", "pacing"))
    parser.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL", DEFAULT_REDIS_URL))
    parser.add_argument(
        "--admin-database-url",
        default=os.environ.get("BENCH_ADMIN_DATABASE_URL", ingress.DEFAULT_ADMIN_DATABASE_URL),
    )
    parser.add_argument(
        "--profile", type=Path, help="record worker 1 with py-spy into this directory"
    )
    parser.add_argument(
        "--worker-log-level",
        default="WARNING",
        help="the workers' LOG_LEVEL (INFO shows the dispatcher's stats; default WARNING)",
    )
    # Internal: one bare loop process (see run_bare).
    parser.add_argument("--bare-child", choices=tuple(BARE_NAMES), help=argparse.SUPPRESS)
    parser.add_argument("--bare-base", help=argparse.SUPPRESS)
    parser.add_argument("--bare-plan", help=argparse.SUPPRESS)
    parser.add_argument("--bare-part", default="0/1", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not 1 <= args.messages <= 1_000_000 or not 1 <= args.bots <= 10_000:
        parser.error("--messages must be 1..1000000 and --bots 1..10000")
    if not 1 <= args.rounds <= 20:
        parser.error("--rounds must be 1..20")
    if not 1 <= args.throughput_bots <= 10_000:
        parser.error("--throughput-bots must be 1..10000")
    if not 3 <= args.duration <= 600:
        parser.error("--duration must be 3..600 seconds")
    return args


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.bare_child:
        require_loopback(args.bare_base, "the double")
        part, parts = (int(n) for n in args.bare_part.split("/"))
        try:
            import uvloop

            uvloop.install()
        except ImportError:
            pass
        plan = json.loads(Path(args.bare_plan).read_text())
        asyncio.run(bare_child(args.bare_child, args.bare_base, plan, part, parts))
        return 0

    signal.signal(signal.SIGTERM, _interrupt)
    WORKER_LOG_LEVEL[0] = args.worker_log_level
    fixture: Fixture | None = None
    ok = True
    logs = Path(tempfile.mkdtemp(prefix="bench_outbound_"))
    try:
        require_loopback(args.admin_database_url, "--admin-database-url")
        require_loopback(args.redis_url, "--redis-url")
        fixture = new_fixture(args.admin_database_url, args.redis_url)
        log(f"database {fixture.database}, Redis {args.redis_url}, logs in {logs}")
        from app.migrate import upgrade_to_head

        asyncio.run(ingress._create_database(fixture))
        fixture.created = True
        upgrade_to_head(fixture.database_url)  # runs its own event loop
        seeded = asyncio.run(seed(fixture, max(args.bots, args.throughput_bots)))
        if args.profile is not None:
            args.profile.mkdir(parents=True, exist_ok=True)
        if args.only in (None, "throughput"):
            first = dataclasses.replace(seeded, bots=seeded.bots[: args.throughput_bots])
            ok = (
                part_throughput(fixture, first, args.messages, args.rounds, logs, args.profile)
                and ok
            )
        if args.only in (None, "pacing"):
            first = dataclasses.replace(seeded, bots=seeded.bots[: args.bots])
            ok = part_pacing(fixture, first, args.duration, logs, args.profile) and ok
    except BenchError as exc:
        log(f"error: {exc}")
        ok = False
    except KeyboardInterrupt:
        log("interrupted")
        ok = False
    except Exception:
        traceback.print_exc()
        ok = False
    finally:
        ingress.stop_all()
        if fixture is not None:
            with contextlib.suppress(Exception):
                ingress.drop_fixture(fixture)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
