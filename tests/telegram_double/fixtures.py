"""Pytest fixtures for the Bot API double, and helpers for the sample updates.

Use from a conftest.py or a test module:

    from tests.telegram_double.fixtures import telegram_double

One server per test process is started on first use and stopped at exit; each
test gets it freshly `reset()`, which is much faster than a server per test.
At teardown the fixture fails the test if the double recorded violations
(misspelled parameters, unknown methods, ...) that the test did not take with
`take_violations()`.
"""

from __future__ import annotations

import atexit
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.telegram_double.double import TelegramDouble

UPDATES_DIR = Path(__file__).resolve().parent.parent / "data" / "telegram" / "updates"

_shared: TelegramDouble | None = None
_shared_lock = threading.Lock()


def shared_double() -> TelegramDouble:
    """The process-wide started double (started on first call)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            double = TelegramDouble().start()
            atexit.register(double.stop)
            _shared = double
        return _shared


def stop_shared_double() -> None:
    """Stop the process-wide double now (pytest_sessionfinish calls this, so the
    server's shutdown lines come before pytest's summary rather than after it)."""
    global _shared
    with _shared_lock:
        if _shared is not None:
            _shared.stop()
            _shared = None


@pytest.fixture
def telegram_double() -> Iterator[TelegramDouble]:
    """A reset, running Bot API double; `.base_url` is its address."""
    double = shared_double()
    double.reset()
    yield double
    leftover = double.take_violations()
    # Also releases requests still hanging or long-polling from this test.
    double.reset()
    if leftover:
        lines = "\n".join(f"  {v.method}: {v.description} {v.params!r}" for v in leftover)
        pytest.fail(f"the Bot API double refused calls:\n{lines}", pytrace=False)


def load_update(name: str) -> dict[str, Any]:
    """A sample Update by file name, with or without `.json` (e.g. "01_message")."""
    filename = name if name.endswith(".json") else f"{name}.json"
    data: dict[str, Any] = json.loads((UPDATES_DIR / filename).read_text(encoding="utf-8"))
    return data


def all_updates() -> list[tuple[str, dict[str, Any]]]:
    """Every sample Update as (file stem, update), in file-name order."""
    return [(path.stem, load_update(path.name)) for path in sorted(UPDATES_DIR.glob("*.json"))]
