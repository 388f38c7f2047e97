"""`integrations verify`: checks a bot token, its webhook (or long polling), and
optionally a real send, the way an operator would by hand with curl.

Each check ends PASS, FAIL or SKIP with its reason, and a FAIL names the fix (the
health check's own hints, `app.connections.status`, where it has one). The command
exits non-zero on any FAIL.

Decisions:

- What the bot should look like: with `--connection`, the connection's mode, its
  webhook key (the URL must carry this connection's key, compared by its keyed
  hash) and its poller's lease; with `--token`, the mode this environment would
  give a new connection (`PUBLIC_BASE_URL` set: webhook, else polling), and a
  webhook counts as ours when it points to this service's webhook path (the key
  cannot be told without the database).
- Polling: no webhook may be set, and getUpdates must answer. The probe is one
  `getUpdates` with `timeout=0` and no offset, which confirms nothing (updates stay
  pending for whoever polls). Telegram serves one getUpdates at a time and ends
  the other with 409, so with `--connection` the probe is skipped while a worker
  holds the connection's poll lease (its lease is the proof that polling runs);
  with `--token` it always runs, and may cut a running poller's long poll short.
- Nothing secret is printed: not the token, not the webhook URL (its query holds
  the connection's webhook key; only its host is named), not the secret.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from app.connections.models import ConnectionMode
from app.connections.registration import WEBHOOK_PATH, host_of, split_webhook_url
from app.connections.status import (
    CONFLICT_OTHER_CONSUMER_HINT,
    DEGRADED_WINDOW,
    delivery_errors_hint,
    judge_webhook,
)
from app.telegram.client import TelegramClient
from app.telegram.errors import (
    TelegramConflict,
    TelegramError,
    TelegramForbidden,
    TelegramNotFound,
    TelegramUnauthorized,
    redact_token_text,
)
from app.telegram.types import BotToken, BotUser, WebhookInfo

__all__ = ["Check", "CheckStatus", "Expectation", "VerifyReport", "verify_bot"]

TEST_MESSAGE = "Test message from `integrations verify`: this bot can send here."

REJECTED_HINT = (
    "The token was revoked, regenerated or mistyped: get the bot's current token from "
    "@BotFather (/mybots, API Token)."
)
CHAT_NOT_FOUND_HINT = (
    "A bot can only write to a user who has started it (sent it /start), or to a group "
    "or channel it is a member of. Check the chat id."
)


class CheckStatus(enum.StrEnum):
    passed = "PASS"
    failed = "FAIL"
    skipped = "SKIP"


@dataclass(frozen=True)
class Check:
    name: str
    status: CheckStatus
    detail: str
    # What to do about a FAIL.
    hint: str | None = None


@dataclass(frozen=True)
class Expectation:
    """What the bot should look like (see the module docstring)."""

    mode: ConnectionMode
    public_base_url: str | None
    # For a connection: whether a key is its webhook key; None: any key on our path.
    key_matches: Callable[[str], bool] | None = None
    # For a connection: its bot id, the worker polling it (a live lease), and whether
    # a secret rotation is unsettled.
    bot_id: int | None = None
    poller: str | None = None
    poll_lease_until: datetime | None = None
    rotation_unsettled: bool = False


@dataclass
class VerifyReport:
    checks: list[Check] = field(default_factory=list)
    # Secrets that must never appear in what is printed (the token).
    _secrets: tuple[str, ...] = ()

    def add(self, name: str, status: CheckStatus, detail: str, hint: str | None = None) -> None:
        clean = redact_token_text(detail, *self._secrets)
        self.checks.append(
            Check(name, status, clean, redact_token_text(hint, *self._secrets) if hint else None)
        )

    def skip_rest(self, names: list[str], reason: str) -> None:
        for name in names:
            self.add(name, CheckStatus.skipped, reason)

    def count(self, status: CheckStatus) -> int:
        return sum(check.status is status for check in self.checks)

    @property
    def ok(self) -> bool:
        return self.count(CheckStatus.failed) == 0

    def summary(self) -> str:
        return (
            f"summary: {self.count(CheckStatus.passed)} passed, "
            f"{self.count(CheckStatus.failed)} failed, {self.count(CheckStatus.skipped)} skipped"
        )

    def lines(self) -> list[str]:
        width = max((len(check.name) for check in self.checks), default=0)
        out = []
        for check in self.checks:
            line = f"{check.status.value}  {check.name.ljust(width)}  {check.detail}"
            if check.hint:
                line += f" Fix: {check.hint}"
            out.append(line)
        out.append(self.summary())
        return out

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "checks": [
                {
                    "name": check.name,
                    "status": check.status.value,
                    "detail": check.detail,
                    "hint": check.hint,
                }
                for check in self.checks
            ],
            "summary": {
                "passed": self.count(CheckStatus.passed),
                "failed": self.count(CheckStatus.failed),
                "skipped": self.count(CheckStatus.skipped),
            },
        }


def _checks_after_get_me(expect: Expectation) -> list[str]:
    names = ["getWebhookInfo"]
    if expect.mode == ConnectionMode.webhook:
        names += ["webhook_url", "webhook_delivery"]
    else:
        names += ["webhook_absent", "getUpdates"]
    return [*names, "sendMessage"]


async def verify_bot(
    telegram: TelegramClient,
    token_text: str,
    expect: Expectation,
    *,
    chat_id: int | str | None = None,
    now: datetime | None = None,
    report: VerifyReport | None = None,
) -> VerifyReport:
    """Run every check on the bot `token_text` names; see the module docstring."""
    now = now or datetime.now(UTC)
    report = report if report is not None else VerifyReport()
    report._secrets = (*report._secrets, token_text.strip())
    later = _checks_after_get_me(expect)
    token_text = token_text.strip()
    if not BotToken.is_well_formed(token_text):
        report.add(
            "token_format",
            CheckStatus.failed,
            "Not a bot token (expected <digits>:<35 or more of A-Za-z0-9_->).",
            REJECTED_HINT,
        )
        report.skip_rest(["getMe", *later], "needs a well-formed token")
        return report
    report.add("token_format", CheckStatus.passed, "Shaped like a bot token.")
    token = BotToken(token_text)

    bot = await _get_me(report, telegram, token, expect)
    if bot is None:
        report.skip_rest(later, "getMe failed")
        return report

    info = await _get_webhook_info(report, telegram, token)
    if info is None:
        report.skip_rest(later[1:-1], "getWebhookInfo failed")
    elif expect.mode == ConnectionMode.webhook:
        _check_webhook(report, info, expect, now)
    else:
        await _check_polling(report, telegram, token, info, expect, now)
    await _check_send(report, telegram, token, chat_id)
    return report


async def _get_me(
    report: VerifyReport, telegram: TelegramClient, token: BotToken, expect: Expectation
) -> BotUser | None:
    try:
        bot = await telegram.get_me(token)
    except (TelegramUnauthorized, TelegramNotFound) as exc:
        report.add(
            "getMe",
            CheckStatus.failed,
            f"Telegram rejects the token: {exc.description}.",
            REJECTED_HINT,
        )
        return None
    except TelegramError as exc:
        report.add(
            "getMe",
            CheckStatus.failed,
            f"Telegram did not answer: {exc.description}.",
            "Check that this machine reaches the Bot API (TELEGRAM_API_BASE) and try again.",
        )
        return None
    name = f"@{bot.username}" if bot.username else repr(bot.first_name)
    if not bot.is_bot:
        report.add("getMe", CheckStatus.failed, f"{name} (id {bot.id}) is not a bot.")
        return None
    if expect.bot_id is not None and bot.id != expect.bot_id:
        report.add(
            "getMe",
            CheckStatus.failed,
            f"The token is bot {bot.id}'s, but the connection is bot {expect.bot_id}'s.",
            "Replace the connection's token with its own bot's (Replace token).",
        )
        return None
    report.add("getMe", CheckStatus.passed, f"{name} (id {bot.id}), a bot.")
    return bot


async def _get_webhook_info(
    report: VerifyReport, telegram: TelegramClient, token: BotToken
) -> WebhookInfo | None:
    try:
        info = await telegram.get_webhook_info(token)
    except TelegramError as exc:
        report.add("getWebhookInfo", CheckStatus.failed, f"Telegram refused: {exc.description}.")
        return None
    report.add(
        "getWebhookInfo",
        CheckStatus.passed,
        f"Answered: {'a webhook to ' + host_of(info.url) if info.url else 'no webhook'}, "
        f"{info.pending_update_count} update(s) pending.",
    )
    return info


def _is_ours(info: WebhookInfo, expect: Expectation) -> bool:
    if not expect.public_base_url or not info.url:
        return False
    key = split_webhook_url(expect.public_base_url, info.url)
    if key is None:
        return False
    return expect.key_matches is None or expect.key_matches(key)


def _last_error(info: WebhookInfo) -> datetime | None:
    return datetime.fromtimestamp(info.last_error_date, UTC) if info.last_error_date else None


def _ago(then: datetime, now: datetime) -> str:
    seconds = max(0, int((now - then).total_seconds()))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h"


def _check_webhook(
    report: VerifyReport, info: WebhookInfo, expect: Expectation, now: datetime
) -> None:
    ours = _is_ours(info, expect)
    last_error = _last_error(info)
    _, hint = judge_webhook(
        mode=ConnectionMode.webhook,
        url=info.url,
        url_is_ours=ours,
        last_error_date=last_error,
        last_error_message=info.last_error_message,
        rotation_unsettled=expect.rotation_unsettled,
        now=now,
    )
    if not expect.public_base_url:
        report.add(
            "webhook_url",
            CheckStatus.skipped,
            "PUBLIC_BASE_URL is unset here, so whether the webhook"
            + (f" to {host_of(info.url)}" if info.url else "")
            + " is this service's cannot be told.",
        )
    elif expect.rotation_unsettled:
        report.add(
            "webhook_url", CheckStatus.failed, "A webhook secret rotation is unsettled.", hint
        )
    elif ours:
        whose = "this connection's key" if expect.key_matches is not None else "a key of ours"
        report.add(
            "webhook_url",
            CheckStatus.passed,
            f"Points to this service ({host_of(info.url)}{WEBHOOK_PATH}, {whose}).",
        )
    elif info.url and split_webhook_url(expect.public_base_url, info.url) is not None:
        report.add(
            "webhook_url",
            CheckStatus.failed,
            f"Points to this service ({host_of(info.url)}) but with another key than "
            "this connection's.",
            "Resync the connection to register its own webhook again.",
        )
    else:
        what = f"Points to {host_of(info.url)}, not here." if info.url else "No webhook is set."
        report.add("webhook_url", CheckStatus.failed, what, hint)

    pending = f"{info.pending_update_count} update(s) waiting"
    if last_error is not None and now - last_error < DEGRADED_WINDOW:
        message = info.last_error_message or "no description"
        report.add(
            "webhook_delivery",
            CheckStatus.failed,
            f"Telegram's last delivery failed {_ago(last_error, now)} ago: {message!r}; {pending}.",
            _delivery_hint(info.last_error_message),
        )
    else:
        older = (
            f" (the last error, {_ago(last_error, now)} ago: {info.last_error_message!r})"
            if last_error is not None
            else ""
        )
        report.add(
            "webhook_delivery",
            CheckStatus.passed,
            f"No delivery error in the last hour{older}; {pending}.",
        )


def _delivery_hint(message: str | None) -> str:
    """Words for Telegram's usual delivery errors, and the health check's otherwise."""
    text = (message or "").lower()
    if "ssl" in text or "certificate" in text:
        return "Telegram refuses this service's TLS certificate: serve a valid, complete chain."
    if "wrong response" in text or "401" in text or "403" in text:
        return (
            "This service refused the deliveries (a wrong secret or key): resync the "
            "connection so Telegram has its current secret."
        )
    if "timeout" in text or "connection" in text or "resolve" in text:
        return (
            "Telegram cannot reach PUBLIC_BASE_URL: check DNS, the firewall and the "
            "reverse proxy in front of `integrations serve`."
        )
    return delivery_errors_hint(message)


async def _check_polling(
    report: VerifyReport,
    telegram: TelegramClient,
    token: BotToken,
    info: WebhookInfo,
    expect: Expectation,
    now: datetime,
) -> None:
    _, hint = judge_webhook(
        mode=ConnectionMode.polling,
        url=info.url,
        url_is_ours=False,
        last_error_date=None,
        last_error_message=None,
        rotation_unsettled=False,
        now=now,
    )
    if info.url:
        report.add(
            "webhook_absent",
            CheckStatus.failed,
            f"A webhook to {host_of(info.url)} is set; long polling needs none.",
            hint,
        )
        report.add(
            "getUpdates", CheckStatus.skipped, "Telegram answers 409 while a webhook is set."
        )
        return
    report.add("webhook_absent", CheckStatus.passed, "No webhook is set, as long polling needs.")
    pending = f"{info.pending_update_count} update(s) waiting"
    leased = expect.poll_lease_until is not None and expect.poll_lease_until > now
    if expect.poller and leased:
        report.add(
            "getUpdates",
            CheckStatus.passed,
            f"Polled by worker {expect.poller} (lease until "
            f"{expect.poll_lease_until:%Y-%m-%d %H:%M:%S} UTC); not probed, so its long poll "
            f"goes on; {pending}.",
        )
        return
    try:
        await telegram.get_updates(token, limit=1, timeout=0)
    except TelegramConflict as exc:
        report.add(
            "getUpdates",
            CheckStatus.failed,
            f"Telegram refused: {exc.description}.",
            CONFLICT_OTHER_CONSUMER_HINT,
        )
        return
    except TelegramError as exc:
        report.add("getUpdates", CheckStatus.failed, f"Telegram refused: {exc.description}.")
        return
    report.add(
        "getUpdates",
        CheckStatus.passed,
        f"Answers (probed with timeout 0, nothing confirmed); {pending}.",
    )


async def _check_send(
    report: VerifyReport, telegram: TelegramClient, token: BotToken, chat_id: int | str | None
) -> None:
    if chat_id is None:
        report.add("sendMessage", CheckStatus.skipped, "No --chat-id given.")
        return
    try:
        sent = await telegram.send_message(token, chat_id=chat_id, text=TEST_MESSAGE)
    except (TelegramForbidden, TelegramNotFound) as exc:
        report.add(
            "sendMessage",
            CheckStatus.failed,
            f"Telegram refused: {exc.description}.",
            CHAT_NOT_FOUND_HINT if isinstance(exc, TelegramNotFound) else None,
        )
        return
    except TelegramError as exc:
        hint = CHAT_NOT_FOUND_HINT if "chat not found" in exc.description.lower() else None
        report.add("sendMessage", CheckStatus.failed, f"Telegram refused: {exc.description}.", hint)
        return
    report.add(
        "sendMessage",
        CheckStatus.passed,
        f"Sent message {sent.message_id} to chat {sent.chat_id}.",
    )
