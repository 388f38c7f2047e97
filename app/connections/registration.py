"""What a connection registers with Telegram: the webhook URL with its key, the
secret, and the updates it asks for; how the key and secret are generated."""

from __future__ import annotations

import secrets
from urllib.parse import parse_qs, urlencode, urlsplit

WEBHOOK_PATH = "/api/v1/integrations/telegram/webhook"

# Everything the service stores. Listed explicitly because omitting the parameter
# keeps whatever a previous owner of the bot set, and an empty list leaves out
# reactions and chat_member updates.
ALLOWED_UPDATES: tuple[str, ...] = (
    "message",
    "edited_message",
    "channel_post",
    "edited_channel_post",
    "business_connection",
    "business_message",
    "edited_business_message",
    "deleted_business_messages",
    "message_reaction",
    "message_reaction_count",
    "callback_query",
    "my_chat_member",
    "chat_member",
    "chat_join_request",
    "chat_boost",
    "removed_chat_boost",
    "purchased_paid_media",
)


def generate_webhook_secret() -> str:
    """256 random bits as 43 characters of A-Za-z0-9_- (Telegram allows 1-256 of those)."""
    return secrets.token_urlsafe(32)


def generate_webhook_key() -> str:
    """192 random bits, URL-safe: the `?key=` that routes a delivery to its connection."""
    return secrets.token_urlsafe(24)


def webhook_url(public_base_url: str, key: str) -> str:
    return f"{public_base_url.rstrip('/')}{WEBHOOK_PATH}?{urlencode({'key': key})}"


def split_webhook_url(public_base_url: str, url: str) -> str | None:
    """The key of `url` if it is one of this service's webhook URLs, else None."""
    if not url:
        return None
    expected = urlsplit(webhook_url(public_base_url, "x"))
    actual = urlsplit(url)
    if (actual.scheme, actual.netloc.lower(), actual.path) != (
        expected.scheme,
        expected.netloc.lower(),
        expected.path,
    ):
        return None
    keys = parse_qs(actual.query).get("key", [])
    return keys[0] if len(keys) == 1 else None


def host_of(url: str) -> str:
    """Only the host of a URL: what a warning may say about someone else's webhook."""
    return urlsplit(url).hostname or "an unknown host"
