"""Typed errors of the Telegram Bot API client.

Contract:
- Every error carries `method`, `error_code` (Telegram's code, which equals the
  HTTP status; `None` when no HTTP answer arrived) and `description` (Telegram's
  text, or a short text of our own for transport failures).
- A bot token never appears in `str()`, `repr()` or `args` of any error: every
  description passes through `redact_token_text`, and the client raises network
  errors without chaining the httpx exception (whose message holds the URL, and
  the URL holds the token).
- `retryable` says whether the same call may succeed later unchanged (rate
  limits, server errors, network failures); callers own the retry policy.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import ClassVar

__all__ = [
    "REDACTED",
    "TelegramBadRequest",
    "TelegramConflict",
    "TelegramError",
    "TelegramForbidden",
    "TelegramMigrated",
    "TelegramNetworkError",
    "TelegramNotFound",
    "TelegramServerError",
    "TelegramTooManyRequests",
    "TelegramUnauthorized",
    "error_from_response",
    "redact_token_text",
]

REDACTED = "<redacted>"

# Looser than a real token on purpose: anything that merely looks like one is hidden.
_TOKEN_LIKE = re.compile(r"\d{3,}:[A-Za-z0-9_-]{30,}")
# Exact secrets shorter than this are not searched for: replacing a 2-character
# "token" everywhere would mangle text without protecting anything real.
_MIN_EXACT_SECRET = 8


def redact_token_text(text: str, *secrets: str) -> str:
    """Return `text` with bot-token-shaped substrings replaced by `<redacted>`.

    `secrets` are exact strings to hide as well (the client passes the token it
    used, raw and URL-quoted), which also covers tokens too malformed to match
    the shape `\\d{3,}:[A-Za-z0-9_-]{30,}`.
    """
    for secret in secrets:
        if len(secret) >= _MIN_EXACT_SECRET:
            text = text.replace(secret, REDACTED)
    return _TOKEN_LIKE.sub(REDACTED, text)


def _int_or_none(value: object) -> int | None:
    # bool is an int subclass; Telegram never sends booleans here.
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return None


class TelegramError(Exception):
    """A Bot API call failed. Base of every error the client raises."""

    outcome: ClassVar[str] = "error"
    retryable: ClassVar[bool] = False

    def __init__(
        self,
        method: str,
        error_code: int | None,
        description: str,
        *,
        parameters: Mapping[str, object] | None = None,
    ) -> None:
        self.method = method
        self.error_code = error_code
        self.description = redact_token_text(description)
        # Only the documented integer parameters are kept; anything else from the
        # wire is dropped rather than echoed into logs.
        self.parameters: dict[str, int] = {
            key: number
            for key, value in (parameters or {}).items()
            if (number := _int_or_none(value)) is not None
        }
        super().__init__(str(self))

    def __str__(self) -> str:
        code = "no response" if self.error_code is None else str(self.error_code)
        return f"{self.method} failed ({code}): {self.description}"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(method={self.method!r}, error_code={self.error_code!r}, "
            f"description={self.description!r})"
        )


class TelegramUnauthorized(TelegramError):
    """401: the token is unknown, revoked or malformed."""

    outcome = "unauthorized"


class TelegramNotFound(TelegramError):
    """404: unknown method, which Telegram also answers for some bad tokens."""

    outcome = "not_found"


class TelegramForbidden(TelegramError):
    """403: the bot was blocked by the user or removed from the chat."""

    outcome = "forbidden"


class TelegramBadRequest(TelegramError):
    """400: Telegram refused the parameters (chat not found, text empty, ...)."""

    outcome = "bad_request"


class TelegramMigrated(TelegramBadRequest):
    """400 with `parameters.migrate_to_chat_id`: the group became a supergroup."""

    outcome = "migrated"

    @property
    def migrate_to_chat_id(self) -> int:
        """The supergroup's chat id; retry the call there."""
        return self.parameters["migrate_to_chat_id"]


class TelegramConflict(TelegramError):
    """409: webhook and getUpdates clash, or another getUpdates poller won."""

    outcome = "conflict"


class TelegramTooManyRequests(TelegramError):
    """429: flood control. `retry_after` is in seconds, `None` if Telegram gave none."""

    outcome = "too_many_requests"
    retryable = True

    def __init__(
        self,
        method: str,
        error_code: int | None,
        description: str,
        *,
        parameters: Mapping[str, object] | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(method, error_code, description, parameters=parameters)
        self.retry_after = self.parameters.get("retry_after", retry_after)


class TelegramServerError(TelegramError):
    """5xx, or an answer that is not the Bot API's JSON envelope."""

    outcome = "server_error"
    retryable = True


class TelegramNetworkError(TelegramError):
    """No usable HTTP answer: connect failure, timeout or another transport error."""

    outcome = "network_error"
    retryable = True

    def __init__(
        self, method: str, description: str, *, timeout: bool, maybe_delivered: bool = True
    ) -> None:
        super().__init__(method, None, description)
        self.timeout = timeout
        # False only when the request cannot have reached Telegram (the connection
        # was never made): then a retry cannot repeat the call's effect. True means
        # the answer was lost: Telegram may have acted on it.
        self.maybe_delivered = maybe_delivered


_BY_CODE: dict[int, type[TelegramError]] = {
    400: TelegramBadRequest,
    401: TelegramUnauthorized,
    403: TelegramForbidden,
    404: TelegramNotFound,
    409: TelegramConflict,
}


def _parse_retry_after(header: str | None) -> int | None:
    if header is None or not header.strip().isdigit():
        return None
    return int(header.strip())


def error_from_response(
    method: str,
    http_status: int,
    payload: Mapping[str, object],
    *,
    retry_after_header: str | None = None,
) -> TelegramError:
    """Map an `{ok: false, ...}` answer to the matching typed error.

    `error_code` from the body wins over the HTTP status (they are equal on the
    real API). A body with `parameters.migrate_to_chat_id` is always
    `TelegramMigrated`, whatever the code.
    """
    code = _int_or_none(payload.get("error_code")) or http_status
    raw_description = payload.get("description")
    description = raw_description if isinstance(raw_description, str) else f"HTTP {code}"
    raw_parameters = payload.get("parameters")
    parameters: Mapping[str, object] = raw_parameters if isinstance(raw_parameters, Mapping) else {}

    if _int_or_none(parameters.get("migrate_to_chat_id")) is not None:
        return TelegramMigrated(method, code, description, parameters=parameters)
    if code == 429:
        return TelegramTooManyRequests(
            method,
            code,
            description,
            parameters=parameters,
            retry_after=_parse_retry_after(retry_after_header),
        )
    if code >= 500:
        return TelegramServerError(method, code, description, parameters=parameters)
    error_type = _BY_CODE.get(code, TelegramError)
    return error_type(method, code, description, parameters=parameters)
