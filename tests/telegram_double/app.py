"""The double's HTTP face: a Starlette app answering `/bot{token}/{method}`.

Runs on the server thread's event loop. Waiting (scripted delays, hangs, long
polls) happens here with short sleeps that re-check the double, so `reset()`
or `stop()` from the test thread ends every wait promptly.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import TYPE_CHECKING
from urllib.parse import unquote

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.telegram_double import methods
from tests.telegram_double.methods import Reply
from tests.telegram_double.params import decode_params
from tests.telegram_double.validation import ParamError

if TYPE_CHECKING:
    from tests.telegram_double.double import Prepared, TelegramDouble

_PATH = re.compile(r"/bot([^/]*)/([^/]*)")
_TICK = 0.01


def render(reply: Reply) -> Response:
    if reply.raw_body is not None:
        return Response(reply.raw_body, reply.status, media_type="text/html")
    return JSONResponse(reply.body, reply.status, headers=reply.headers)


def build_app(double: TelegramDouble) -> Starlette:
    async def endpoint(request: Request) -> Response:
        # Split the raw path before percent-decoding so that an encoded '/' stays
        # inside the token, where the real server rejects it as invalid.
        raw_path = request.scope.get("raw_path") or request.url.path.encode()
        match = _PATH.fullmatch(raw_path.decode("latin-1"))
        if match is None:
            return render(methods.error(404, "Not Found"))
        token, method = (unquote(part) for part in match.groups())
        body = await request.body()
        try:
            params, encoding = decode_params(
                request.headers.get("content-type", ""), request.url.query, body
            )
        except ParamError as exc:
            return render(double.reject(token, method, request.method, exc))
        outcome = double.begin(token, method, params, encoding=encoding, http_method=request.method)
        if isinstance(outcome, Reply):
            return render(outcome)
        reply = await _run(double, outcome)
        double.finish(outcome, reply)
        return render(reply)

    return Starlette(routes=[Route("/{path:path}", endpoint, methods=["GET", "POST"])])


async def _run(double: TelegramDouble, prepared: Prepared) -> Reply:
    delay = prepared.delay
    if delay is not None and delay.after_execute and prepared.failure is None:
        reply = double.execute(prepared)
        limit = delay.seconds
        await _wait(double, prepared, double.HANG_LIMIT if limit is None else limit)
        return reply
    if delay is not None:
        limit = delay.seconds
        await _wait(double, prepared, double.HANG_LIMIT if limit is None else limit)
    if prepared.failure is not None:
        return prepared.failure
    if prepared.method == "getUpdates":
        return await _long_poll(double, prepared)
    return double.execute(prepared)


async def _wait(double: TelegramDouble, prepared: Prepared, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    # Polling, not an asyncio.Event: reset() runs on the test thread, outside this loop.
    while time.monotonic() < deadline and not double.is_stale(prepared):  # noqa: ASYNC110
        await asyncio.sleep(min(_TICK, max(deadline - time.monotonic(), 0)))


async def _long_poll(double: TelegramDouble, prepared: Prepared) -> Reply:
    started = double.start_poll(prepared)
    if isinstance(started, Reply):
        return started
    requested = max(int(prepared.params.get("timeout", 0)), 0)
    deadline = time.monotonic() + min(requested, double.long_poll_cap)
    while True:
        reply = double.poll(prepared, started)
        if reply is not None:
            return reply
        if time.monotonic() >= deadline:
            return methods.ok([])
        await asyncio.sleep(_TICK)
