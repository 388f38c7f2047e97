"""Values the Telegram client accepts and returns.

`BotToken` keeps a token out of reprs and logs. The result types are frozen
dataclasses built from Bot API JSON by `from_api`, which raises `ValueError`
when a required field is missing or has the wrong JSON type (the client turns
that into `TelegramServerError`). Fields Telegram may omit are `None` when
absent, except getMe's capability flags, which read as `False` when absent
because that is what an absent flag means.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["BotToken", "BotUser", "SentMessage", "WebhookInfo"]

_WELL_FORMED = re.compile(r"\d+:[A-Za-z0-9_-]{35,}")


class BotToken:
    """A bot token that does not show itself.

    `str()`, `repr()` and f-strings give `BotToken(***)`; only `reveal()`
    returns the secret. Equality compares in constant time. The wrapped value is
    not validated: a stored token may be malformed, and Telegram is the judge
    (see `is_well_formed` for a cheap pre-check).
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError("BotToken wraps a str")
        self._value = value

    @staticmethod
    def is_well_formed(text: str) -> bool:
        """True if `text` has a real token's shape: digits, ':', 35+ of [A-Za-z0-9_-]."""
        return _WELL_FORMED.fullmatch(text) is not None

    def reveal(self) -> str:
        """The token itself, for building the request URL and nothing else."""
        return self._value

    @property
    def bot_id_hint(self) -> int | None:
        """The bot id encoded before ':' (public, safe to log), or None if not digits."""
        head, sep, _ = self._value.partition(":")
        return int(head) if sep and head.isdigit() else None

    def __repr__(self) -> str:
        return "BotToken(***)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BotToken):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(self._value)


def _field(data: Mapping[str, Any], key: str, kind: type[Any], *, required: bool) -> Any:
    value = data.get(key)
    if value is None:
        if required:
            raise ValueError(f"missing field {key!r}")
        return None
    # bool is a subclass of int: an integer field must not accept true/false.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"field {key!r} is not {kind.__name__}")
    return value


@dataclass(frozen=True, slots=True)
class BotUser:
    """The bot itself, as getMe describes it."""

    id: int
    is_bot: bool
    first_name: str
    username: str | None
    can_join_groups: bool
    can_read_all_group_messages: bool
    supports_inline_queries: bool

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> BotUser:
        return cls(
            id=_field(data, "id", int, required=True),
            is_bot=_field(data, "is_bot", bool, required=True),
            first_name=_field(data, "first_name", str, required=True),
            username=_field(data, "username", str, required=False),
            can_join_groups=bool(_field(data, "can_join_groups", bool, required=False)),
            can_read_all_group_messages=bool(
                _field(data, "can_read_all_group_messages", bool, required=False)
            ),
            supports_inline_queries=bool(
                _field(data, "supports_inline_queries", bool, required=False)
            ),
        )


@dataclass(frozen=True, slots=True)
class WebhookInfo:
    """getWebhookInfo's answer. `url` is '' when no webhook is set."""

    url: str
    has_custom_certificate: bool
    pending_update_count: int
    ip_address: str | None
    last_error_date: int | None
    last_error_message: str | None
    last_synchronization_error_date: int | None
    max_connections: int | None
    allowed_updates: list[str] | None

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> WebhookInfo:
        allowed = _field(data, "allowed_updates", list, required=False)
        if allowed is not None and not all(isinstance(item, str) for item in allowed):
            raise ValueError("field 'allowed_updates' is not a list of str")
        return cls(
            url=_field(data, "url", str, required=True),
            has_custom_certificate=_field(data, "has_custom_certificate", bool, required=True),
            pending_update_count=_field(data, "pending_update_count", int, required=True),
            ip_address=_field(data, "ip_address", str, required=False),
            last_error_date=_field(data, "last_error_date", int, required=False),
            last_error_message=_field(data, "last_error_message", str, required=False),
            last_synchronization_error_date=_field(
                data, "last_synchronization_error_date", int, required=False
            ),
            max_connections=_field(data, "max_connections", int, required=False),
            allowed_updates=list(allowed) if allowed is not None else None,
        )


@dataclass(frozen=True, slots=True)
class SentMessage:
    """The identity of a message sendMessage created."""

    message_id: int
    chat_id: int
    date: int
    chat_type: str = "private"
    chat_title: str | None = None

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> SentMessage:
        chat = _field(data, "chat", dict, required=True)
        names = " ".join(
            part
            for part in (
                _field(chat, "first_name", str, required=False),
                _field(chat, "last_name", str, required=False),
            )
            if part
        )
        return cls(
            message_id=_field(data, "message_id", int, required=True),
            chat_id=_field(chat, "id", int, required=True),
            date=_field(data, "date", int, required=True),
            chat_type=_field(chat, "type", str, required=False) or "private",
            chat_title=_field(chat, "title", str, required=False)
            or names
            or _field(chat, "username", str, required=False),
        )
