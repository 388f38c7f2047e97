"""Waiting on a condition, never on a fixed sleep: a wait that runs out fails the test."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any

import pytest

# Only keeps a broken build from hanging; a healthy run never comes near it.
WAIT_LIMIT = 30.0


async def eventually(
    condition: Callable[[], Any], what: str, *, limit: float = WAIT_LIMIT, every: float = 0.02
) -> Any:
    """Call `condition` (sync or async) until it returns something truthy, and return
    that; fail the test, naming `what`, once `limit` seconds have passed."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if loop.time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(every)
