"""A small closed-loop HTTP/1.1 load generator: the fallback when `wrk` is not installed.

N keep-alive connections, each with one request in flight at a time, POST real
Telegram updates (the same templates file as bench/wrk_updates.lua; update_id
base, base + 1, ... in the order sent, the payloads cycled in that order too)
for a fixed duration. Plain asyncio protocols on uvloop, no HTTP library: the
per-request cost is a few bytes concatenated and a header scan.

Unlike wrk, it stops sending at the deadline and then waits for the requests
still in flight ("drained"), so every request it sent is answered and the
database check can be exact. Only the answers received before the deadline count
towards throughput and latency.

    python bench/loadgen.py --url URL --templates FILE --base ID --secret S \
        [--connections 40] [--duration 10] [--acknowledged FILE]

With `--acknowledged FILE` it also writes the update_id of every request answered
2xx (drained ones included), one per line: what the server promised to have stored.

prints one line `LOADGEN_RESULT {json}` with the same fields as the wrk script.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter
from pathlib import Path
from typing import cast
from urllib.parse import urlsplit

import uvloop

_HEADER_END = b"\r\n\r\n"


class LoadGenerator:
    def __init__(
        self,
        *,
        host: str,
        port: int,
        target: str,
        secret: str,
        templates: list[bytes],
        base: int,
        connections: int,
        timeout: float,
    ) -> None:
        self.host, self.port = host, port
        self.templates = templates
        self.base = base
        self.connections = connections
        self.timeout = timeout
        self.head = (
            f"POST {target} HTTP/1.1\r\n"
            f"Host: {host}:{port}\r\n"
            "Content-Type: application/json\r\n"
            f"X-Telegram-Bot-Api-Secret-Token: {secret}\r\n"
            "Content-Length: "
        ).encode("latin-1")
        self.running = True
        self.deadline = 0.0
        self.sent = 0
        self.latencies: list[float] = []  # seconds, answers before the deadline only
        self.statuses: Counter[int] = Counter()
        self.drained: Counter[int] = Counter()
        self.errors: Counter[str] = Counter()
        self.acknowledged: list[int] = []
        self.in_flight = 0
        self.idle = asyncio.Event()
        self.reconnects: set[asyncio.Task[None]] = set()

    def next_request(self) -> tuple[int, bytes]:
        # One sequence over all connections, as wrk's single thread does: requests
        # in flight together carry different payloads (different chats), as they
        # would from Telegram; the storage cost depends on it.
        n = self.sent
        self.sent += 1
        update_id = self.base + n
        body = b'{"update_id":%d,%s' % (update_id, self.templates[n % len(self.templates)])
        return update_id, b"%s%d\r\n\r\n%s" % (self.head, len(body), body)

    def answered(self, status: int, started: float, update_id: int) -> None:
        now = time.perf_counter()
        if 200 <= status < 300:
            self.acknowledged.append(update_id)
        if now <= self.deadline:
            self.statuses[status] += 1
            self.latencies.append(now - started)
        else:
            self.drained[status] += 1

    async def run(self, duration: float) -> float:
        loop = asyncio.get_running_loop()
        start = time.perf_counter()
        self.deadline = start + duration
        clients = [_Connection(self) for _ in range(self.connections)]
        for client in clients:
            await client.connect(loop)
        await asyncio.sleep(max(0.0, self.deadline - time.perf_counter()))
        self.running = False
        elapsed = time.perf_counter() - start
        # Drain: every request already sent gets its answer (or its timeout).
        if self.in_flight:
            self.idle.clear()
            try:
                await asyncio.wait_for(self.idle.wait(), timeout=self.timeout + 1)
            except TimeoutError:
                self.errors["timeout"] += self.in_flight
        for client in clients:
            client.close()
        return elapsed


class _Connection(asyncio.Protocol):
    """One keep-alive connection with one request in flight at a time."""

    def __init__(self, gen: LoadGenerator) -> None:
        self.gen = gen
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.started = 0.0
        self.update_id = 0
        self.waiting = False
        self.timer: asyncio.TimerHandle | None = None

    async def connect(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            await loop.create_connection(lambda: self, self.gen.host, self.gen.port)
        except OSError:
            self.gen.errors["connect"] += 1

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self.transport = cast(asyncio.Transport, transport)
        self.buffer.clear()
        self.send()

    def send(self) -> None:
        gen = self.gen
        if not gen.running or self.transport is None:
            return
        self.update_id, request = gen.next_request()
        gen.in_flight += 1
        self.waiting = True
        self.started = time.perf_counter()
        self.timer = asyncio.get_running_loop().call_later(gen.timeout, self.timed_out)
        self.transport.write(request)

    def finish(self, status: int | None) -> None:
        gen = self.gen
        self.waiting = False
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        gen.in_flight -= 1
        if status is not None:
            gen.answered(status, self.started, self.update_id)
        if not gen.running and gen.in_flight == 0:
            gen.idle.set()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while self.waiting:
            end = self.buffer.find(_HEADER_END)
            if end < 0:
                return
            head = bytes(self.buffer[:end]).lower()
            status = int(head[9:12])
            length = _content_length(head)
            if length is None:
                # Chunked (small JSON answers): the body ends with the last chunk.
                tail = self.buffer.find(b"0\r\n\r\n", end + 4)
                if tail < 0:
                    return
                size = tail + 5
            else:
                size = end + 4 + length
                if len(self.buffer) < size:
                    return
            del self.buffer[:size]
            self.finish(status)
            if b"connection: close" in head:
                self.close()
                return
            self.send()

    def timed_out(self) -> None:
        self.timer = None
        if self.waiting:
            self.gen.errors["timeout"] += 1
            self.finish(None)
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.waiting:
            self.gen.errors["read"] += 1
            self.finish(None)
        if self.gen.running:
            # Reconnect, as wrk does, and carry on.
            loop = asyncio.get_running_loop()
            task = loop.create_task(self.connect(loop))
            self.gen.reconnects.add(task)
            task.add_done_callback(self.gen.reconnects.discard)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def _content_length(head: bytes) -> int | None:
    at = head.find(b"\r\ncontent-length:")
    if at < 0:
        return None
    start = at + len(b"\r\ncontent-length:")
    stop = head.find(b"\r\n", start)
    return int(head[start : stop if stop >= 0 else len(head)].strip())


def _percentile(ordered: list[float], percent: float) -> float:
    if not ordered:
        return 0.0
    rank = max(0, min(len(ordered) - 1, round(percent / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--templates", type=Path, required=True)
    parser.add_argument("--base", type=int, required=True)
    parser.add_argument("--secret", required=True)
    parser.add_argument("--connections", type=int, default=40)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--acknowledged", type=Path)
    args = parser.parse_args()

    url = urlsplit(args.url)
    target = url.path + (f"?{url.query}" if url.query else "")
    templates = [line for line in args.templates.read_bytes().splitlines() if line]
    gen = LoadGenerator(
        host=url.hostname or "127.0.0.1",
        port=url.port or 80,
        target=target,
        secret=args.secret,
        templates=templates,
        base=args.base,
        connections=args.connections,
        timeout=args.timeout,
    )
    elapsed = uvloop.run(gen.run(args.duration))
    if args.acknowledged is not None:
        args.acknowledged.write_text("".join(f"{n}\n" for n in gen.acknowledged))
    ordered = sorted(gen.latencies)
    result = {
        "duration_us": int(elapsed * 1e6),
        "requests": sum(gen.statuses.values()),
        "request_calls": gen.sent,
        "status_errors": sum(n for s, n in gen.statuses.items() if s > 399),
        "connect_errors": gen.errors["connect"],
        "read_errors": gen.errors["read"],
        "write_errors": 0,
        "timeouts": gen.errors["timeout"],
        "statuses": {str(s): n for s, n in gen.statuses.items()},
        "drained_statuses": {str(s): n for s, n in gen.drained.items()},
        "latency_us": {
            "p50": int(_percentile(ordered, 50) * 1e6),
            "p90": int(_percentile(ordered, 90) * 1e6),
            "p99": int(_percentile(ordered, 99) * 1e6),
            "p999": int(_percentile(ordered, 99.9) * 1e6),
            "max": int((ordered[-1] if ordered else 0.0) * 1e6),
            "mean": (sum(ordered) / len(ordered) * 1e6) if ordered else 0.0,
        },
    }
    print("LOADGEN_RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
