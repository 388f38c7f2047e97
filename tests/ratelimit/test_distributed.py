"""Several OS processes, each with its own connection, hammer one key."""

from __future__ import annotations

import multiprocessing
import uuid

import pytest
import redis as redis_sync

from app.ratelimit import RateLimit
from tests.ratelimit._support import SHARED_REDIS_URL
from tests.ratelimit._workers import hammer

PROCESSES = 4
ATTEMPTS = 400  # per process
CONCURRENCY = 4  # coroutines per process
LIMIT = RateLimit.per_second(100, burst=20)


def _run(leased: bool) -> tuple[int, float]:
    """Returns the admitted total and the span (seconds, Redis clock) in which
    every attempt was made."""
    prefix = f"test-rl-{uuid.uuid4().hex}"
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(PROCESSES)
    results = context.Queue()
    processes = [
        context.Process(
            target=hammer,
            args=(SHARED_REDIS_URL, prefix, LIMIT, ATTEMPTS, CONCURRENCY, leased, barrier, results),
        )
        for _ in range(PROCESSES)
    ]
    for process in processes:
        process.start()
    try:
        reports = [results.get(timeout=120) for _ in processes]
        for process in processes:
            process.join(timeout=30)
            assert process.exitcode == 0
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
                process.join()
        client = redis_sync.Redis.from_url(SHARED_REDIS_URL)
        client.delete(f"{prefix}:{{shared}}")
        client.close()
    admitted = sum(report[0] for report in reports)
    span = (max(report[2] for report in reports) - min(report[1] for report in reports)) / 1e6
    return admitted, span


def _allowed_over(span: float) -> float:
    # GCRA from a full bucket: the burst plus one token per interval elapsed.
    return LIMIT.burst + LIMIT.rate * span / LIMIT.period


@pytest.mark.parametrize("leased", [False, True], ids=["redis", "leased"])
def test_processes_together_never_exceed_the_limit(leased: bool) -> None:
    admitted, span = _run(leased)
    assert 0 < admitted <= _allowed_over(span), (admitted, span)
    if not leased:
        # The bucket starts full, so the plain limiter admits the whole burst.
        assert admitted >= LIMIT.burst
