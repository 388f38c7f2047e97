"""Semantics of the Bot API methods the service uses, as FACTS.md describes them.

Every function takes the bot's state and already validated, coerced parameters
and returns a `Reply`. The caller holds the double's lock. Descriptions are the
real API's texts.
"""

from __future__ import annotations

import math
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from tests.telegram_double.state import (
    DEFAULT_MAX_CONNECTIONS,
    BotState,
    ChatState,
    SendLimits,
    SentMessageRecord,
)

WEBHOOK_PORTS = (80, 88, 443, 8443)
MAX_TEXT = 4096
_SECRET_CHARS = re.compile(r"[A-Za-z0-9_-]+")
_PARSE_MODES = {"html", "markdown", "markdownv2"}

CONFLICT_WEBHOOK = (
    "Conflict: can't use getUpdates method while webhook is active; "
    "use deleteWebhook to delete the webhook first"
)
CONFLICT_OTHER_POLL = (
    "Conflict: terminated by other getUpdates request; "
    "make sure that only one bot instance is running"
)


@dataclass(frozen=True)
class Reply:
    """An HTTP answer: JSON `body` with `status`, or `raw_body` text when set."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    raw_body: str | None = None


@dataclass(frozen=True)
class Context:
    now_monotonic: float
    now_unix: int
    enforce_set_webhook_rate_limit: bool
    update_kinds: frozenset[str]
    # Telegram's sending limits, enforced when set (TelegramDouble.send_limits).
    send_limits: SendLimits | None = None


def ok(result: Any, description: str | None = None) -> Reply:
    body: dict[str, Any] = {"ok": True, "result": result}
    if description is not None:
        body["description"] = description
    return Reply(200, body)


def error(
    status: int,
    description: str,
    *,
    retry_after: int | None = None,
    migrate_to_chat_id: int | None = None,
) -> Reply:
    """The Bot API error envelope; HTTP status equals error_code."""
    body: dict[str, Any] = {"ok": False, "error_code": status, "description": description}
    parameters: dict[str, int] = {}
    headers: dict[str, str] = {}
    if retry_after is not None:
        parameters["retry_after"] = retry_after
        headers["Retry-After"] = str(retry_after)
    if migrate_to_chat_id is not None:
        parameters["migrate_to_chat_id"] = migrate_to_chat_id
    if parameters:
        body["parameters"] = parameters
    return Reply(status, body, headers)


def too_many_requests(retry_after: int) -> Reply:
    return error(429, f"Too Many Requests: retry after {retry_after}", retry_after=retry_after)


def get_me(bs: BotState, params: dict[str, Any], ctx: Context) -> Reply:
    return ok(bs.bot.user())


def webhook_url_problem(url: str) -> str | None:
    """The setWebhook error text for a non-empty `url`, or None if acceptable."""
    invalid = "Bad Request: invalid webhook URL specified"
    if any(ch.isspace() for ch in url):
        return invalid
    # Telegram's URL parser assumes http:// when no scheme is given.
    text = url if "://" in url else f"http://{url}"
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        return invalid
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        return invalid
    if scheme != "https":
        return "Bad Request: bad webhook: An HTTPS URL must be provided for webhook"
    if (port or 443) not in WEBHOOK_PORTS:
        return "Bad Request: bad webhook: Webhook can be set up only on ports 80, 88, 443 or 8443"
    return None


def _secret_problem(secret: str) -> str | None:
    if len(secret) > 256:
        return "Bad Request: secret token is too long"
    if not _SECRET_CHARS.fullmatch(secret):
        return "Bad Request: secret token contains unallowed characters"
    return None


def _allowed_updates_problem(allowed: list[str], ctx: Context) -> str | None:
    # Real Telegram ignores unknown names; a typo here would silently lose updates.
    unknown = [kind for kind in allowed if kind not in ctx.update_kinds]
    if unknown:
        return f"Bad Request: unknown update type(s) in allowed_updates: {unknown}"
    return None


class InvalidCall(Exception):
    """Raised by a method for a call the double records as a violation."""

    def __init__(self, description: str) -> None:
        super().__init__(description)
        self.description = description


def set_webhook(bs: BotState, params: dict[str, Any], ctx: Context) -> Reply:
    url: str = params["url"]
    if url:
        # Checked before anything else, and even a refused call uses up the
        # second, as on the real server.
        if ctx.enforce_set_webhook_rate_limit and ctx.now_monotonic < bs.next_set_webhook_at:
            return too_many_requests(1)
        bs.next_set_webhook_at = ctx.now_monotonic + 1
        problem = webhook_url_problem(url)
        if problem is not None:
            return error(400, problem)
    secret: str | None = params.get("secret_token") or None
    if secret is not None and (problem := _secret_problem(secret)) is not None:
        return error(400, problem)
    allowed: list[str] | None = params.get("allowed_updates")
    if allowed is not None and (problem := _allowed_updates_problem(allowed, ctx)) is not None:
        raise InvalidCall(problem)
    if not url:
        return remove_webhook(bs, drop_pending=bool(params.get("drop_pending_updates")))

    max_connections = min(max(params.get("max_connections", DEFAULT_MAX_CONNECTIONS), 1), 100)
    ip_address: str | None = params.get("ip_address") or None
    has_certificate = "certificate" in params
    unchanged = (
        bs.url == url
        and bs.secret_token == secret
        and bs.max_connections == max_connections
        and bs.ip_address == ip_address
        and bs.has_custom_certificate == has_certificate
    )
    if allowed is not None:
        # An empty list means the default set; omitted keeps the previous one.
        bs.allowed_updates = list(allowed) or None
    if params.get("drop_pending_updates"):
        bs.pending.clear()
    if unchanged:
        return ok(True, "Webhook is already set")
    if bs.url != url:
        bs.last_error_date = None
        bs.last_error_message = None
    bs.url = url
    bs.secret_token = secret
    bs.max_connections = max_connections
    bs.ip_address = ip_address
    bs.has_custom_certificate = has_certificate
    return ok(True, "Webhook was set")


def remove_webhook(bs: BotState, *, drop_pending: bool) -> Reply:
    if drop_pending:
        bs.pending.clear()
    if not bs.url:
        return ok(True, "Webhook is already deleted")
    bs.url = ""
    bs.secret_token = None
    bs.max_connections = DEFAULT_MAX_CONNECTIONS
    bs.ip_address = None
    bs.has_custom_certificate = False
    bs.last_error_date = None
    bs.last_error_message = None
    return ok(True, "Webhook was deleted")


def delete_webhook(bs: BotState, params: dict[str, Any], ctx: Context) -> Reply:
    return remove_webhook(bs, drop_pending=bool(params.get("drop_pending_updates")))


def get_webhook_info(bs: BotState, params: dict[str, Any], ctx: Context) -> Reply:
    info: dict[str, Any] = {
        "url": bs.url,
        "has_custom_certificate": bs.has_custom_certificate,
        "pending_update_count": len(bs.pending),
    }
    if bs.url:
        info["max_connections"] = bs.max_connections
        if bs.ip_address is not None:
            info["ip_address"] = bs.ip_address
    if bs.last_error_date is not None:
        info["last_error_date"] = bs.last_error_date
        if bs.last_error_message is not None:
            info["last_error_message"] = bs.last_error_message
    if bs.last_synchronization_error_date is not None:
        info["last_synchronization_error_date"] = bs.last_synchronization_error_date
    if bs.allowed_updates is not None:
        info["allowed_updates"] = list(bs.allowed_updates)
    return ok(info)


def chat_for(bs: BotState, chat_id: int | str) -> ChatState | None:
    """The chat `chat_id` names, created on first use; None if it cannot exist."""
    key: int | str = chat_id.lower() if isinstance(chat_id, str) else chat_id
    existing = bs.chats.get(key)
    if existing is not None:
        return existing
    if isinstance(chat_id, str):
        if not chat_id.startswith("@") or len(chat_id) < 2:
            return None
        # A stable fake channel id per username.
        new_id = -1_002_000_000_000 - len(bs.chats)
        chat = {"id": new_id, "type": "channel", "title": chat_id[1:], "username": chat_id[1:]}
    elif chat_id > 0:
        chat = {"id": chat_id, "type": "private", "first_name": "Test user"}
    elif str(chat_id).startswith("-100"):
        chat = {"id": chat_id, "type": "supergroup", "title": "Test supergroup"}
    else:
        chat = {"id": chat_id, "type": "group", "title": "Test group"}
    state = ChatState(chat)
    bs.chats[key] = state
    return state


def send_message(bs: BotState, params: dict[str, Any], ctx: Context) -> Reply:
    text: str = params["text"]
    parse_mode: str | None = params.get("parse_mode")
    if parse_mode is not None and parse_mode.lower() not in _PARSE_MODES:
        return error(400, "Bad Request: unsupported parse_mode")
    # Telegram trims the text; entity parsing is not simulated, so the length is
    # counted on the raw text in code points.
    if not text.strip():
        return error(400, "Bad Request: message text is empty")
    if len(text) > MAX_TEXT:
        return error(400, "Bad Request: message is too long")
    chat = chat_for(bs, params["chat_id"])
    if chat is None or chat.status == "not_found":
        return error(400, "Bad Request: chat not found")
    if chat.status == "blocked":
        return error(403, "Forbidden: bot was blocked by the user")
    if chat.status == "kicked":
        return error(403, "Forbidden: bot was kicked from the group chat")
    if chat.status == "migrated":
        return error(
            400,
            "Bad Request: group chat was upgraded to a supergroup chat",
            migrate_to_chat_id=chat.migrate_to_chat_id,
        )
    if ctx.send_limits is not None:
        wait = _over_send_limits(bs, chat, ctx.send_limits, ctx.now_monotonic)
        if wait is not None:
            return too_many_requests(max(1, math.ceil(wait)))
        chat.delivered_at.append(ctx.now_monotonic)
        bs.delivered_at.append(ctx.now_monotonic)
    chat.last_message_id += 1
    message: dict[str, Any] = {
        "message_id": chat.last_message_id,
        "from": bs.bot.sender(),
        "chat": dict(chat.chat),
        "date": ctx.now_unix,
        "text": text,
    }
    for echoed in ("message_thread_id", "business_connection_id"):
        if echoed in params:
            message[echoed] = params[echoed]
    bs.sent.append(
        SentMessageRecord(
            chat_id=chat.chat["id"],
            message_id=chat.last_message_id,
            text=text,
            date=ctx.now_unix,
            params=dict(params),
            received_at=time.monotonic(),
        )
    )
    return ok(message)


def _over_send_limits(
    bs: BotState, chat: ChatState, limits: SendLimits, now: float
) -> float | None:
    """Seconds until a send to `chat` would be within Telegram's limits (None: it is)."""
    group = chat.chat["id"] < 0
    kept_for = max(limits.chat_interval, limits.group_window if group else 0.0)
    _forget_before(chat.delivered_at, now - kept_for)
    _forget_before(bs.delivered_at, now - limits.bot_window)
    if chat.delivered_at and now - chat.delivered_at[-1] < limits.chat_interval:
        return limits.chat_interval - (now - chat.delivered_at[-1])
    if group and len(chat.delivered_at) >= limits.group_sends:
        return limits.group_window - (now - chat.delivered_at[-limits.group_sends])
    if len(bs.delivered_at) >= limits.bot_sends:
        return limits.bot_window - (now - bs.delivered_at[-limits.bot_sends])
    return None


def _forget_before(times: deque[float], horizon: float) -> None:
    while times and times[0] <= horizon:
        times.popleft()


def start_poll(bs: BotState, params: dict[str, Any], ctx: Context) -> Reply | int:
    """Begin a getUpdates call: a 409 Reply, or the poll's generation number.

    Applies `offset` (confirming earlier updates) and `allowed_updates` once, and
    makes any poll already waiting for this bot end with a 409.
    """
    if bs.url:
        return error(409, CONFLICT_WEBHOOK)
    offset: int | None = params.get("offset")
    if offset is not None and offset < 0:
        bs.pending = bs.pending[offset:]
    elif offset:
        bs.pending = [u for u in bs.pending if u["update_id"] >= offset]
    if "allowed_updates" in params:
        problem = _allowed_updates_problem(params["allowed_updates"], ctx)
        if problem is not None:
            raise InvalidCall(problem)
        bs.allowed_updates = list(params["allowed_updates"]) or None
    bs.poll_generation += 1
    return bs.poll_generation


def poll(bs: BotState, params: dict[str, Any], generation: int) -> Reply | None:
    """One look at the queue for a waiting getUpdates; None means keep waiting."""
    if bs.poll_generation != generation:
        return error(409, CONFLICT_OTHER_POLL)
    if bs.url:
        # A webhook was set while polling: the poll ends empty.
        return ok([])
    limit = params.get("limit", 100)
    if not 1 <= limit <= 100:
        limit = 100
    offset = params.get("offset") or 0
    ready = [dict(u) for u in bs.pending if offset <= 0 or u["update_id"] >= offset]
    if ready:
        return ok(ready[:limit])
    return None


Handler = Callable[[BotState, dict[str, Any], Context], Reply]

HANDLERS: dict[str, Handler] = {
    "getMe": get_me,
    "setWebhook": set_webhook,
    "deleteWebhook": delete_webhook,
    "getWebhookInfo": get_webhook_info,
    "sendMessage": send_message,
}
