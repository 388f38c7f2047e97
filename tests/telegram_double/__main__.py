"""Run the Bot API double as a standalone server, for trying the service by hand.

    python -m tests.telegram_double [--port 8081]

It prints its base URL and one bot token. Point the service at it with
``TELEGRAM_API_BASE=http://127.0.0.1:8081`` and connect the bot with that token.
A small control API stands in for a person writing to the bot:

- ``POST /_double/bots`` -> ``{"bot_id", "token", "username"}``: another bot.
- ``POST /_double/bots/{bot_id}/messages`` ``{"chat_id", "text", "first_name"?}``:
  a private-chat text message from that user, queued for getUpdates (the double
  does not push to webhooks on its own: polling-mode connections fetch it).
- ``GET /_double/bots/{bot_id}/sent``: what the bot has sent (sendMessage calls).

Stops on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import itertools
import json
import signal
import sys
import threading
import time
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from tests.telegram_double.app import build_app
from tests.telegram_double.double import TelegramDouble
from tests.telegram_double.server import ServerThread
from tests.telegram_double.state import DoubleUsageError

_message_ids = itertools.count(1)


def control_app(double: TelegramDouble) -> Starlette:
    """The double's Bot API face plus the `/_double/` control routes."""

    def bot_json(bot: Any) -> dict[str, Any]:
        return {"bot_id": bot.bot_id, "token": bot.token, "username": bot.username}

    async def add_bot(_request: Request) -> JSONResponse:
        return JSONResponse(bot_json(double.add_bot()), 201)

    async def queue_message(request: Request) -> JSONResponse:
        try:
            body = json.loads(await request.body())
            chat_id, text = int(body["chat_id"]), str(body["text"])
            bot_id = int(request.path_params["bot_id"])
        except (ValueError, KeyError, TypeError):
            return JSONResponse({"error": 'expected {"chat_id": int, "text": str}'}, 400)
        person = {"id": chat_id, "first_name": str(body.get("first_name", "Ann"))}
        update = {
            "message": {
                "message_id": next(_message_ids),
                "date": int(time.time()),
                "chat": {**person, "type": "private"},
                "from": {**person, "is_bot": False},
                "text": text,
            }
        }
        try:
            update_id = double.queue_update(bot_id, update)
        except DoubleUsageError as exc:
            return JSONResponse({"error": str(exc)}, 404)
        return JSONResponse({"update_id": update_id}, 201)

    async def sent(request: Request) -> JSONResponse:
        try:
            records = double.sent_messages(int(request.path_params["bot_id"]))
        except DoubleUsageError as exc:
            return JSONResponse({"error": str(exc)}, 404)
        return JSONResponse(
            [{"chat_id": r.chat_id, "text": r.text, "message_id": r.message_id} for r in records]
        )

    return Starlette(
        routes=[
            Route("/_double/bots", add_bot, methods=["POST"]),
            Route("/_double/bots/{bot_id:int}/messages", queue_message, methods=["POST"]),
            Route("/_double/bots/{bot_id:int}/sent", sent, methods=["GET"]),
            Mount("/", app=build_app(double)),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.telegram_double", description=__doc__)
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: any free)")
    args = parser.parse_args(argv)

    double = TelegramDouble()
    # Hand-driven use: no artificial cap on how long a long poll may wait.
    double.long_poll_cap = 30.0
    server = ServerThread(control_app(double))
    base_url = server.start(port=args.port)
    bot = double.add_bot()
    print(json.dumps({"base_url": base_url, "bot_id": bot.bot_id, "token": bot.token}), flush=True)

    stopped = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopped.set())
    stopped.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
