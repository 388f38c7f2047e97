"""What a connection's `status` and `status_hint` say, and the words of each hint.

Every writer of a connection's status (the API's health check and registration,
the worker's pollers) takes its hint from here, so the fix a user reads is the
same whichever part of the service noticed the fault.
"""

from __future__ import annotations

import enum
from datetime import datetime, timedelta

from app.connections.models import ConnectionMode, ConnectionStatus
from app.connections.registration import host_of


class Verdict(enum.StrEnum):
    """The health check's answer (SPEC section 4)."""

    healthy = "healthy"
    degraded = "degraded"
    action_required = "action_required"


# The connection's status after a health check with this verdict.
STATUS_FOR_VERDICT: dict[Verdict, ConnectionStatus] = {
    Verdict.healthy: ConnectionStatus.active,
    Verdict.degraded: ConnectionStatus.degraded,
    Verdict.action_required: ConnectionStatus.action_required,
}

UNAUTHORIZED_HINT = (
    "Telegram rejects the bot token: it was revoked or regenerated. Paste the bot's "
    "current token from @BotFather (Replace token)."
)
CREDENTIALS_UNREADABLE_HINT = (
    "The stored bot token cannot be decrypted with this service's vault keys: the key "
    "that sealed it is missing from VAULT_KEYS (or the data was altered). Restore the "
    "key (`integrations vault status` names the key ids in use), or paste the bot's "
    "token again (Replace token)."
)
UNSETTLED_ROTATION_HINT = (
    "Telegram was not told the new webhook secret. Both the old and the new secret "
    "are accepted meanwhile; resync to finish the rotation."
)
CONFLICT_WEBHOOK_HINT = (
    "Telegram refuses long polling because a webhook is set for this bot (another app "
    "may have taken it over). Resync the connection to remove the webhook (the other "
    "app stops receiving updates)."
)
CONFLICT_OTHER_CONSUMER_HINT = (
    "Another program is reading this bot's updates with getUpdates, and Telegram serves "
    "only one. Stop the other program, or revoke the token in @BotFather and paste the "
    "new one here (Replace token)."
)
NO_WEBHOOK_HINT = "The bot has no webhook, so no updates arrive. Resync to register it again."
MANUAL_CLEANUP_HINT = (
    "Telegram did not confirm deleteWebhook. The connection and its stored credentials "
    "are gone; if the bot still has a webhook, call "
    "https://api.telegram.org/bot<token>/deleteWebhook with the bot's token, or revoke "
    "the token in @BotFather."
)


# Telegram's last_error_date stays set after the errors stop; only a recent one
# says delivery is failing now.
DEGRADED_WINDOW = timedelta(hours=1)


def judge_webhook(
    *,
    mode: ConnectionMode,
    url: str,
    url_is_ours: bool,
    last_error_date: datetime | None,
    last_error_message: str | None,
    rotation_unsettled: bool,
    now: datetime,
) -> tuple[Verdict, str | None]:
    """The health verdict on what getWebhookInfo said, with the hint for the fix.

    The one judgement behind the health endpoint and `integrations verify`: a
    webhook-mode bot must point here, a polling-mode bot must have no webhook, and a
    delivery error within `DEGRADED_WINDOW` makes it degraded.
    """
    if rotation_unsettled:
        return Verdict.action_required, UNSETTLED_ROTATION_HINT
    if mode == ConnectionMode.webhook and not url_is_ours:
        hint = webhook_elsewhere_hint(host_of(url)) if url else NO_WEBHOOK_HINT
        return Verdict.action_required, hint
    if mode == ConnectionMode.polling and url:
        return Verdict.action_required, webhook_blocks_polling_hint(host_of(url))
    if last_error_date is not None and now - last_error_date < DEGRADED_WINDOW:
        return Verdict.degraded, delivery_errors_hint(last_error_message)
    return Verdict.healthy, None


def webhook_elsewhere_hint(host: str) -> str:
    return (
        f"The bot's webhook points to {host}: another app took it over. "
        "Resync to point it back here (the other app stops receiving updates)."
    )


def webhook_blocks_polling_hint(host: str) -> str:
    return (
        f"A webhook to {host} is set, which stops long polling. "
        "Resync to remove it (the other app stops receiving updates)."
    )


def delivery_errors_hint(last_error_message: str | None) -> str:
    return (
        f"Telegram reports delivery errors: {last_error_message or 'unknown error'}. "
        "Check that this service is reachable at its public URL; Telegram retries "
        "for up to 24 hours."
    )


def registration_failed_hint(reason: str) -> str:
    return f"Registering with Telegram failed: {reason} Resync to retry."


def unsettled_rotation_hint(reason: str) -> str:
    return f"{UNSETTLED_ROTATION_HINT} ({reason})"
