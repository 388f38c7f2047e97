"""Webhook delivery the way Telegram does it, driven by the test.

Each attempt is one POST of the JSON update to the webhook URL's path and query
through the `httpx.AsyncClient` the test passes (its base_url stands in for the
public host; an ASGI transport works too). `Content-Type: application/json`;
`X-Telegram-Bot-Api-Secret-Token` only when a secret was set; redirects are not
followed. A 2xx answer removes the update from the pending queue; anything else
keeps it pending and sets `last_error_date`/`last_error_message`. A 2xx JSON
body with a `method` field is executed as one Bot API call, as Telegram does.

Retry timing is not simulated: the test calls `redeliver_pending()` when it
wants Telegram's next attempt.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx

from tests.telegram_double.methods import Reply
from tests.telegram_double.state import DoubleUsageError

if TYPE_CHECKING:
    from tests.telegram_double.double import BotRef, TelegramDouble

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"


@dataclass(frozen=True)
class _Attempt:
    target: str
    headers: dict[str, str]
    body: bytes


async def deliver(
    double: TelegramDouble,
    bot: BotRef,
    update: dict[str, Any],
    *,
    client: httpx.AsyncClient,
    ignore_allowed_updates: bool,
) -> int:
    if not double.webhook(bot).url:
        raise DoubleUsageError("no webhook is set; Telegram would keep it for getUpdates")
    update_id = double.queue_update(bot, update, ignore_allowed_updates=ignore_allowed_updates)
    return await _attempt(double, bot, update_id, client)


async def redeliver_pending(
    double: TelegramDouble, bot: BotRef, *, client: httpx.AsyncClient
) -> list[int]:
    ids = [update["update_id"] for update in double.pending_updates(bot)]
    return [await _attempt(double, bot, update_id, client) for update_id in ids]


def _prepare(double: TelegramDouble, bot: BotRef, update_id: int) -> _Attempt:
    with double.locked_state(bot) as state:
        if not state.url:
            raise DoubleUsageError("no webhook is set")
        update = next((u for u in state.pending if u["update_id"] == update_id), None)
        if update is None:
            raise DoubleUsageError(f"update {update_id} is not pending")
        parts = urlsplit(state.url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        headers = {"Content-Type": "application/json"}
        if state.secret_token is not None:
            headers[SECRET_HEADER] = state.secret_token
        body = json.dumps(update, ensure_ascii=False).encode("utf-8")
        return _Attempt(target, headers, body)


def _record(double: TelegramDouble, bot: BotRef, update_id: int, error: str | None) -> None:
    with double.locked_state(bot) as state:
        if error is None:
            for index, update in enumerate(state.pending):
                if update["update_id"] == update_id:
                    del state.pending[index]
                    break
            return
        state.last_error_date = int(double.clock.time())
        state.last_error_message = error


async def _attempt(
    double: TelegramDouble, bot: BotRef, update_id: int, client: httpx.AsyncClient
) -> int:
    attempt = _prepare(double, bot, update_id)
    try:
        response = await client.post(
            attempt.target,
            content=attempt.body,
            headers=attempt.headers,
            follow_redirects=False,
        )
    except httpx.TimeoutException:
        _record(double, bot, update_id, "Read timeout expired")
        return 0
    except httpx.ConnectError:
        _record(double, bot, update_id, "Connection refused")
        return 0
    except httpx.TransportError:
        _record(double, bot, update_id, "Webhook connection closed")
        return 0
    if 200 <= response.status_code < 300:
        _record(double, bot, update_id, None)
        _run_reply_method(double, bot, response)
    else:
        _record(
            double,
            bot,
            update_id,
            f"Wrong response from the webhook: {response.status_code} {response.reason_phrase}",
        )
    return response.status_code


def _run_reply_method(double: TelegramDouble, bot: BotRef, response: httpx.Response) -> None:
    if not response.headers.get("content-type", "").startswith("application/json"):
        return
    try:
        body = response.json()
    except ValueError:
        return
    if not isinstance(body, dict) or not isinstance(body.get("method"), str):
        return
    params = {key: value for key, value in body.items() if key != "method"}
    token = double.bot(bot).token or ""
    prepared = double.begin(
        token, body["method"], params, encoding="webhook-reply", http_method="POST"
    )
    if isinstance(prepared, Reply):
        return
    # Telegram never reports the outcome of this call to anyone.
    reply = prepared.failure or double.execute(prepared)
    double.finish(prepared, reply)
