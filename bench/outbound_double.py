"""A fast local Bot API double for bench/outbound.py: answers sendMessage in Telegram's
JSON shape and, with --limits, refuses with 429 what Telegram's limits would.

    .venv/bin/python bench/outbound_double.py --port P [--limits]

It runs as a process of its own (aiohttp on uvloop, one event loop) so that it does
not compete with the measured code for an event loop. tests/telegram_double is
built for behaviour, not load, and answers far slower than this.

Limits (--limits), checked against the sends already accepted, 429'd ones not
counted (a refused send is not delivered):
- per chat: more than 1 in any 1 s window;
- per group (negative chat id): more than 20 in any 60 s window;
- per bot: more than 30 in any 1 s window.

`GET /_stats` returns the counts; `GET /_stats?sends=1` adds every accepted send as
[bot_id, chat_id, monotonic seconds] so the bench can compute rates itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import time
from collections import deque
from typing import Any

from aiohttp import web

CHAT_WINDOW, CHAT_MAX = 1.0, 1
GROUP_WINDOW, GROUP_MAX = 60.0, 20
BOT_WINDOW, BOT_MAX = 1.0, 30


class Double:
    def __init__(self, limits: bool) -> None:
        self.limits = limits
        self.message_id = 0
        self.ok = 0
        self.too_many = 0
        self.other = 0
        self.violations = {"chat": 0, "group": 0, "bot": 0}
        # Accepted send times, only as many as a window needs.
        self.chat_last: dict[tuple[int, int], float] = {}
        self.group_times: dict[tuple[int, int], deque[float]] = {}
        self.bot_times: dict[int, deque[float]] = {}
        self.sends: list[tuple[int, int, float]] = []
        # How far inside its window each refused send came (seconds): jitter on a
        # sender pacing at exactly the limit shows as a few milliseconds.
        self.refused_by: dict[str, list[float]] = {"chat": [], "group": [], "bot": []}

    def refusal(self, bot: int, chat: int, now: float) -> tuple[str, float] | None:
        """The first limit this send would break and how long until it would not."""
        last = self.chat_last.get((bot, chat))
        if last is not None and now - last < CHAT_WINDOW:
            return "chat", CHAT_WINDOW - (now - last)
        if chat < 0:
            times = self.group_times.get((bot, chat))
            if times is not None and len(times) >= GROUP_MAX and now - times[0] < GROUP_WINDOW:
                return "group", GROUP_WINDOW - (now - times[0])
        bot_times = self.bot_times.get(bot)
        if bot_times is not None and len(bot_times) >= BOT_MAX and now - bot_times[0] < BOT_WINDOW:
            return "bot", BOT_WINDOW - (now - bot_times[0])
        return None

    def accept(self, bot: int, chat: int, now: float) -> None:
        self.chat_last[(bot, chat)] = now
        if chat < 0:
            self.group_times.setdefault((bot, chat), deque(maxlen=GROUP_MAX)).append(now)
        self.bot_times.setdefault(bot, deque(maxlen=BOT_MAX)).append(now)
        self.sends.append((bot, chat, now))


def _bot_id(token: str) -> int:
    head = token.split(":", 1)[0]
    return int(head) if head.isdigit() else 0


def build_app(double: Double) -> web.Application:
    async def method(request: web.Request) -> web.Response:
        name = request.match_info["method"]
        body: dict[str, Any] = await request.json() if request.can_read_body else {}
        if name != "sendMessage":
            double.other += 1
            return web.json_response({"ok": True, "result": True})
        bot = _bot_id(request.match_info["token"])
        raw_chat = body.get("chat_id", 0)
        chat = (
            int(raw_chat) if not isinstance(raw_chat, str) or raw_chat.lstrip("-").isdigit() else 0
        )
        now = time.monotonic()
        if double.limits:
            refused = double.refusal(bot, chat, now)
            if refused is not None:
                kind, wait = refused
                double.too_many += 1
                double.violations[kind] += 1
                double.refused_by[kind].append(wait)
                retry_after = max(1, math.ceil(wait))
                return web.json_response(
                    {
                        "ok": False,
                        "error_code": 429,
                        "description": f"Too Many Requests: retry after {retry_after}",
                        "parameters": {"retry_after": retry_after},
                    },
                    status=429,
                )
        double.accept(bot, chat, now)
        double.ok += 1
        double.message_id += 1
        chat_type = "supergroup" if chat < 0 else "private"
        result = {
            "message_id": double.message_id,
            "date": int(time.time()),
            "chat": {"id": chat, "type": chat_type}
            | ({"title": f"group {chat}"} if chat < 0 else {"first_name": "bench"}),
            "text": body.get("text", ""),
        }
        return web.Response(
            text=json.dumps({"ok": True, "result": result}), content_type="application/json"
        )

    async def stats(request: web.Request) -> web.Response:
        payload: dict[str, Any] = {
            "ok": double.ok,
            "too_many": double.too_many,
            "other": double.other,
            "violations": double.violations,
            "refused_by": double.refused_by,
            "now": time.monotonic(),
        }
        if request.query.get("sends"):
            payload["sends"] = double.sends
        return web.json_response(payload)

    async def health(_request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/_stats", stats)
    app.router.add_get("/_health", health)
    app.router.add_post("/bot{token}/{method}", method)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--limits", action="store_true", help="enforce Telegram's limits")
    args = parser.parse_args()
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    web.run_app(
        build_app(Double(args.limits)),
        host="127.0.0.1",
        port=args.port,
        access_log=None,
        print=None,
        backlog=1024,
    )


if __name__ == "__main__":
    main()
