"""The reference of the comparison: aiogram 3's webhook handler on aiohttp.

`SimpleRequestHandler` checks the `X-Telegram-Bot-Api-Secret-Token` header against
its `secret_token` (secrets.compare_digest, 401 otherwise), reads the body and
hands it to the dispatcher, which validates it into aiogram's `Update` model and
propagates it through its routers to a handler. Every update kind gets a handler
here that does nothing, so each update is fully handled and nothing is stored.

By default the update is handled before the answer (`handle_in_background=False`):
a 200 then means the update was parsed and handled, as ours answers 200 only once
an update is stored. `--background` measures aiogram's own default instead, which
answers {} at once and handles the update in a task afterwards (same CPU, spent
after the answer).

Run by bench/ingress.py as

    python bench/aiogram_app.py --host 127.0.0.1 --port P --secret S [--background]

with uvloop as the event loop and aiohttp's access log off. No request leaves the
machine: the Bot object is never used to call Telegram.
"""

from __future__ import annotations

import argparse
from typing import Any

import uvloop
from aiogram import Bot, Dispatcher, Router
from aiogram.webhook.aiohttp_server import SimpleRequestHandler, setup_application
from aiohttp import web

WEBHOOK_PATH = "/api/v1/integrations/telegram/webhook"
# A well-formed token that no bot has: aiogram checks the shape only.
BENCH_BOT_TOKEN = "123456789:AAbenchmark-token-not-a-real-bot-0000"
# Observers that are not update kinds.
_NOT_UPDATE_KINDS = {"update", "error"}


async def _ignore(event: Any) -> None:
    """The handler of every update kind: handles the update, stores nothing."""


def build_app(secret: str, *, background: bool) -> web.Application:
    router = Router(name="bench")
    for name, observer in router.observers.items():
        if name not in _NOT_UPDATE_KINDS:
            observer.register(_ignore)
    dispatcher = Dispatcher()
    dispatcher.include_router(router)
    bot = Bot(token=BENCH_BOT_TOKEN)
    app = web.Application()
    SimpleRequestHandler(
        dispatcher=dispatcher,
        bot=bot,
        secret_token=secret,
        handle_in_background=background,
    ).register(app, path=WEBHOOK_PATH)
    setup_application(app, dispatcher, bot=bot)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--secret", required=True)
    parser.add_argument("--background", action="store_true")
    args = parser.parse_args()
    web.run_app(
        build_app(args.secret, background=args.background),
        host=args.host,
        port=args.port,
        access_log=None,
        print=None,
        shutdown_timeout=5.0,
        loop=uvloop.new_event_loop(),
    )


if __name__ == "__main__":
    main()
