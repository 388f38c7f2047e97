"""Data the Bot API double keeps: bots, webhooks, queued updates, recorded calls.

Plain records without locking; `TelegramDouble` owns the lock and is the only
code that mutates them (server thread and test thread both go through it).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

DEFAULT_MAX_CONNECTIONS = 40
# Telegram's default allowed_updates: everything except these three.
OPT_IN_UPDATE_KINDS = frozenset({"chat_member", "message_reaction", "message_reaction_count"})

ChatStatus = Literal["ok", "not_found", "blocked", "kicked", "migrated"]


class DoubleUsageError(Exception):
    """A test asked the double for something Telegram would not do."""


class Clock(Protocol):
    """Time source: `monotonic()` for rate limits, `time()` for Unix dates."""

    def monotonic(self) -> float: ...

    def time(self) -> float: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()


class ManualClock:
    """A clock that moves only when a test calls `advance()`."""

    def __init__(self, *, monotonic: float = 1_000.0, unix: float = 1_750_000_000.0) -> None:
        self._monotonic = monotonic
        self._unix = unix

    def monotonic(self) -> float:
        return self._monotonic

    def time(self) -> float:
        return self._unix

    def advance(self, seconds: float) -> None:
        self._monotonic += seconds
        self._unix += seconds


@dataclass
class FakeBot:
    """A bot the double knows; the live object, so `token` follows rotate_token()
    and is None once revoked."""

    bot_id: int
    token: str | None
    username: str
    first_name: str
    is_bot: bool = True
    can_join_groups: bool = True
    can_read_all_group_messages: bool = False
    supports_inline_queries: bool = False

    def user(self) -> dict[str, Any]:
        """The getMe User object."""
        return {
            "id": self.bot_id,
            "is_bot": self.is_bot,
            "first_name": self.first_name,
            "username": self.username,
            "can_join_groups": self.can_join_groups,
            "can_read_all_group_messages": self.can_read_all_group_messages,
            "supports_inline_queries": self.supports_inline_queries,
        }

    def sender(self) -> dict[str, Any]:
        """The User object as it appears in a message's `from`."""
        return {
            "id": self.bot_id,
            "is_bot": self.is_bot,
            "first_name": self.first_name,
            "username": self.username,
        }


@dataclass(frozen=True)
class WebhookSnapshot:
    """What the double holds for a bot's webhook (for assertions)."""

    url: str
    secret_token: str | None
    max_connections: int
    allowed_updates: list[str] | None
    ip_address: str | None
    has_custom_certificate: bool
    last_error_date: int | None
    last_error_message: str | None
    pending_update_count: int


@dataclass(frozen=True)
class SendLimits:
    """Telegram's sending limits, which the double enforces when a test sets
    `TelegramDouble.send_limits`: a sendMessage over one is answered 429 with
    `retry_after`, and is not delivered (so it does not count).

    - a chat: one message per `chat_interval` seconds;
    - a group (negative chat id): `group_sends` in any `group_window` seconds;
    - a bot: `bot_sends` in any `bot_window` seconds, across its chats.
    """

    chat_interval: float = 1.0
    group_sends: int = 20
    group_window: float = 60.0
    bot_sends: int = 30
    bot_window: float = 1.0


@dataclass
class ChatState:
    chat: dict[str, Any]
    status: ChatStatus = "ok"
    migrate_to_chat_id: int | None = None
    last_message_id: int = 0
    # When the chat's delivered messages arrived (clock.monotonic()), for SendLimits.
    delivered_at: deque[float] = field(default_factory=deque)


@dataclass(frozen=True)
class SentMessageRecord:
    """A message the bot sent through sendMessage."""

    chat_id: int
    message_id: int
    text: str
    date: int
    params: dict[str, Any]
    # When the double received it (time.monotonic()), for pacing checks.
    received_at: float = 0.0


@dataclass
class BotState:
    """Everything Telegram holds per bot."""

    bot: FakeBot
    url: str = ""
    secret_token: str | None = None
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    ip_address: str | None = None
    has_custom_certificate: bool = False
    # None means Telegram's default set.
    allowed_updates: list[str] | None = None
    last_error_date: int | None = None
    last_error_message: str | None = None
    last_synchronization_error_date: int | None = None
    next_set_webhook_at: float = float("-inf")
    pending: list[dict[str, Any]] = field(default_factory=list)
    next_update_id: int = 100_000_001
    chats: dict[int | str, ChatState] = field(default_factory=dict)
    sent: list[SentMessageRecord] = field(default_factory=list)
    # When the bot's delivered messages arrived (clock.monotonic()), for SendLimits.
    delivered_at: deque[float] = field(default_factory=deque)
    poll_generation: int = 0

    def allows(self, kind: str) -> bool:
        if self.allowed_updates is None or not self.allowed_updates:
            return kind not in OPT_IN_UPDATE_KINDS
        return kind in self.allowed_updates

    def snapshot(self) -> WebhookSnapshot:
        return WebhookSnapshot(
            url=self.url,
            secret_token=self.secret_token,
            max_connections=self.max_connections,
            allowed_updates=None if self.allowed_updates is None else list(self.allowed_updates),
            ip_address=self.ip_address,
            has_custom_certificate=self.has_custom_certificate,
            last_error_date=self.last_error_date,
            last_error_message=self.last_error_message,
            pending_update_count=len(self.pending),
        )


@dataclass
class RecordedCall:
    """One request the double received. `status` is set once it was answered."""

    method: str
    token: str
    params: dict[str, Any]
    encoding: str
    http_method: str
    at: float
    bot_id: int | None = None
    status: int | None = None


@dataclass(frozen=True)
class Violation:
    """A request the real API might have accepted but the client must not send."""

    method: str
    description: str
    params: dict[str, Any]


@dataclass
class ScriptedFailure:
    method: str
    status: int
    description: str
    retry_after: int | None
    migrate_to_chat_id: int | None
    raw_body: str | None
    bot_id: int | None
    remaining: int


@dataclass
class ScriptedDelay:
    method: str
    # None: hang until the test ends (reset) or the double stops.
    seconds: float | None
    bot_id: int | None
    remaining: int
    # Carry the call out first and only then wait: the caller times out although
    # Telegram applied the change (a lost answer).
    after_execute: bool = False


def update_kind(update: dict[str, Any]) -> str:
    """The Update's payload field name (message, my_chat_member, ...)."""
    kinds = [key for key in update if key != "update_id"]
    if len(kinds) != 1:
        raise ValueError(f"an Update has exactly one payload field, got {kinds}")
    return kinds[0]
