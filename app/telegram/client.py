"""Async client for the Telegram Bot API.

Contract:
- One `TelegramClient` wraps a shared HTTP client it does not own (the process's
  runtime creates and closes it): an `httpx.AsyncClient`, an
  `aiohttp.ClientSession`, or any `Transport` (see transport.py for which one
  serves which process, and why). Any number of bots use it: the token is an
  argument of every call.
- A call is `POST {base_url}/bot{token}/{method}` with a JSON body; parameters
  that are None are omitted. Every request carries an explicit `httpx.Timeout`
  built from `request_timeout`; getUpdates adds its long-poll time to the read
  timeout.
- Success returns the typed result. Failure raises a `TelegramError` subclass
  (see errors.py). No retries happen here: the caller owns the retry policy
  (`TelegramError.retryable`, `TelegramTooManyRequests.retry_after`).
- The token never reaches an exception, a log line or the `on_call` hook. httpx
  logs each request URL at INFO, and the URL holds the token, so this module
  raises the `httpx` and `httpcore` loggers to WARNING.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote

import aiohttp
import httpx
import structlog

from app import metrics
from app.telegram.errors import (
    TelegramError,
    TelegramNetworkError,
    TelegramServerError,
    error_from_response,
    redact_token_text,
)
from app.telegram.transport import (
    AiohttpTransport,
    HttpAnswer,
    HttpxTransport,
    Transport,
    TransportFailure,
)
from app.telegram.types import BotToken, BotUser, SentMessage, WebhookInfo

__all__ = ["OnCall", "TelegramAnswer", "TelegramClient"]

_log = structlog.get_logger(__name__)
# The stdlib logger behind `_log`: asking it whether DEBUG is on is cheap, and spares
# a worker building the skipped DEBUG line of every successful send.
_stdlib_log = logging.getLogger(__name__)

_T = TypeVar("_T")

OnCall = Callable[[str, str, float], None]
"""Hook called once per call with (method, outcome, seconds); outcome is "ok",
a `TelegramError.outcome` such as "too_many_requests", or "timeout"."""


@dataclass(frozen=True, slots=True)
class TelegramAnswer:
    """A successful answer: `result` as decoded JSON, and the optional `description`."""

    result: Any
    description: str | None


class TelegramClient:
    """Calls Bot API methods for any bot through one shared HTTP client."""

    def __init__(
        self,
        http: httpx.AsyncClient | aiohttp.ClientSession | Transport,
        base_url: str,
        *,
        request_timeout: float,
        on_call: OnCall | None = None,
    ) -> None:
        if request_timeout <= 0:
            raise ValueError("request_timeout must be positive")
        self._transport: Transport
        if isinstance(http, httpx.AsyncClient):
            self._transport = HttpxTransport(http)
        elif isinstance(http, aiohttp.ClientSession):
            self._transport = AiohttpTransport(http)
        else:
            self._transport = http
        self._base_url = base_url.rstrip("/")
        self._request_timeout = request_timeout
        self._on_call = on_call

    async def get_me(self, token: BotToken | str) -> BotUser:
        """getMe: validates the token and describes the bot."""
        answer = await self.call(token, "getMe")
        return _typed("getMe", BotUser.from_api, answer.result)

    async def set_webhook(
        self,
        token: BotToken | str,
        *,
        url: str,
        secret_token: str | None,
        allowed_updates: list[str] | None,
        max_connections: int | None,
        drop_pending_updates: bool | None = None,
    ) -> str:
        """setWebhook; returns Telegram's description (`Webhook was set`, ...)."""
        answer = await self.call(
            token,
            "setWebhook",
            {
                "url": url,
                "secret_token": secret_token,
                "allowed_updates": allowed_updates,
                "max_connections": max_connections,
                "drop_pending_updates": drop_pending_updates,
            },
        )
        return answer.description or ""

    async def delete_webhook(
        self, token: BotToken | str, *, drop_pending_updates: bool | None = None
    ) -> str:
        """deleteWebhook; returns Telegram's description (`Webhook was deleted`, ...)."""
        answer = await self.call(
            token, "deleteWebhook", {"drop_pending_updates": drop_pending_updates}
        )
        return answer.description or ""

    async def get_webhook_info(self, token: BotToken | str) -> WebhookInfo:
        """getWebhookInfo: the webhook Telegram currently holds for this bot."""
        answer = await self.call(token, "getWebhookInfo")
        return _typed("getWebhookInfo", WebhookInfo.from_api, answer.result)

    async def send_message(
        self,
        token: BotToken | str,
        *,
        chat_id: int | str,
        text: str,
        parse_mode: str | None = None,
        reply_to_message_id: int | None = None,
        message_thread_id: int | None = None,
        disable_notification: bool | None = None,
        business_connection_id: str | None = None,
        direct_messages_topic_id: int | None = None,
        protect_content: bool | None = None,
        link_preview_options: Mapping[str, object] | None = None,
    ) -> SentMessage:
        """sendMessage. `reply_to_message_id` is sent as `reply_parameters`,
        since the flat parameter is no longer part of the API."""
        reply = None if reply_to_message_id is None else {"message_id": reply_to_message_id}
        answer = await self.call(
            token,
            "sendMessage",
            {
                "chat_id": chat_id,
                "text": text,
                "parse_mode": parse_mode,
                "reply_parameters": reply,
                "message_thread_id": message_thread_id,
                "disable_notification": disable_notification,
                "business_connection_id": business_connection_id,
                "direct_messages_topic_id": direct_messages_topic_id,
                "protect_content": protect_content,
                "link_preview_options": link_preview_options,
            },
        )
        return _typed("sendMessage", SentMessage.from_api, answer.result)

    async def get_updates(
        self,
        token: BotToken | str,
        *,
        offset: int | None = None,
        limit: int | None = None,
        # Telegram's own parameter name; it is the server-side wait, not a local deadline.
        timeout: int = 0,  # noqa: ASYNC109
        allowed_updates: list[str] | None = None,
    ) -> list[dict[str, Any]]:
        """getUpdates long poll; returns raw Update dicts in Telegram's order.

        `timeout` (seconds) is the server-side long-poll wait; the HTTP read
        timeout is extended by the same amount so a quiet poll is not an error.
        """
        answer = await self.call(
            token,
            "getUpdates",
            {
                "offset": offset,
                "limit": limit,
                "timeout": timeout,
                "allowed_updates": allowed_updates,
            },
            long_poll=max(timeout, 0),
        )
        result = answer.result
        if not isinstance(result, list) or not all(isinstance(item, dict) for item in result):
            raise TelegramServerError("getUpdates", 200, "result is not a list of updates")
        return result

    async def call(
        self,
        token: BotToken | str,
        method: str,
        params: Mapping[str, object] | None = None,
        *,
        long_poll: float = 0.0,
    ) -> TelegramAnswer:
        """Call any Bot API method with JSON-serializable `params`.

        None values are dropped. Raises `TelegramError` subclasses; never
        returns an `ok: false` answer.
        """
        secret = token.reveal() if isinstance(token, BotToken) else token
        bot_id = BotToken(secret).bot_id_hint
        body = {key: value for key, value in (params or {}).items() if value is not None}
        # quote() keeps a malformed token inside one path segment; ':' stays as is.
        quoted = quote(secret, safe=":")
        url = f"{self._base_url}/bot{quoted}/{method}"

        started = time.perf_counter()
        failure: TelegramError | None = None
        answer: TelegramAnswer | None = None
        status: int | None = None
        try:
            response = await self._transport.post(
                url,
                body,
                connect_timeout=self._request_timeout,
                read_timeout=self._request_timeout + long_poll,
            )
        except TransportFailure as exc:
            failure = TelegramNetworkError(
                method,
                f"timed out ({exc.kind})" if exc.timeout else f"transport error ({exc.kind})",
                timeout=exc.timeout,
                maybe_delivered=exc.maybe_delivered,
            )
        else:
            status = response.status
            try:
                answer = _parse_answer(method, response, (secret, quoted))
            except TelegramError as exc:
                failure = exc

        elapsed = time.perf_counter() - started
        metrics.observe_telegram_call(
            method, failure.error_code if failure is not None else None, failure is None, elapsed
        )
        outcome = _outcome(failure)
        self._report(method, outcome, elapsed, status, bot_id, failure)
        # Raised outside the except blocks, so nothing of the transport's failure is
        # kept as __context__.
        if failure is not None:
            raise failure
        assert answer is not None
        return answer

    def _report(
        self,
        method: str,
        outcome: str,
        elapsed: float,
        status: int | None,
        bot_id: int | None,
        failure: TelegramError | None,
    ) -> None:
        if failure is None and not _stdlib_log.isEnabledFor(logging.DEBUG):
            self._hook(method, outcome, elapsed)
            return
        fields: dict[str, Any] = {
            "method": method,
            "outcome": outcome,
            "status": status,
            "duration_ms": round(elapsed * 1000, 1),
            "bot_id": bot_id,
        }
        if failure is None:
            _log.debug("telegram.request", **fields)
        else:
            _log.info(
                "telegram.request",
                error_code=failure.error_code,
                description=failure.description,
                **fields,
            )
        self._hook(method, outcome, elapsed)

    def _hook(self, method: str, outcome: str, elapsed: float) -> None:
        if self._on_call is not None:
            try:
                self._on_call(method, outcome, elapsed)
            except Exception:
                # A broken metrics hook must not turn a delivered message into an error.
                _log.warning("telegram.on_call_failed", method=method, exc_info=True)


def _outcome(failure: TelegramError | None) -> str:
    if failure is None:
        return "ok"
    if isinstance(failure, TelegramNetworkError) and failure.timeout:
        return "timeout"
    return failure.outcome


def _parse_answer(method: str, response: HttpAnswer, secrets: tuple[str, ...]) -> TelegramAnswer:
    """Decode the Bot API envelope or raise the matching TelegramError."""
    try:
        payload = json.loads(response.body)
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        raise TelegramServerError(
            method,
            response.status,
            f"unexpected non-JSON answer (HTTP {response.status})",
        )
    if payload.get("ok") is True and "result" in payload:
        description = payload.get("description")
        return TelegramAnswer(
            result=payload["result"],
            description=redact_token_text(description, *secrets)
            if isinstance(description, str)
            else None,
        )
    if payload.get("ok") is False:
        description = payload.get("description")
        if isinstance(description, str):
            payload = {**payload, "description": redact_token_text(description, *secrets)}
        raise error_from_response(
            method,
            response.status,
            payload,
            retry_after_header=response.retry_after,
        )
    raise TelegramServerError(
        method, response.status, f"unexpected answer shape (HTTP {response.status})"
    )


def _typed(method: str, build: Callable[[dict[str, Any]], _T], result: object) -> _T:
    if not isinstance(result, dict):
        raise TelegramServerError(method, 200, "result is not an object")
    try:
        return build(result)
    except ValueError as exc:
        raise TelegramServerError(method, 200, f"unexpected result: {exc}") from None
