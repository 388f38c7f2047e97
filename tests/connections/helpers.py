"""Helpers shared by the connection and ingress tests."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

from tests.conftest import WorkspaceFixture
from tests.telegram_double.double import TelegramDouble
from tests.telegram_double.state import FakeBot


async def connect_bot(
    client: httpx.AsyncClient,
    workspace: WorkspaceFixture,
    double: TelegramDouble,
    bot: FakeBot | None = None,
    **bot_options: Any,
) -> tuple[FakeBot, dict[str, Any]]:
    """Connect a (new) bot to the workspace; returns the bot and the 201 body."""
    bot = bot or double.add_bot(**bot_options)
    assert bot.token is not None
    response = await client.post(
        "/api/v1/connections/telegram",
        json={"bot_token": bot.token},
        headers=workspace.headers(),
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return bot, body


def webhook_credentials(double: TelegramDouble, bot: FakeBot) -> tuple[str, str]:
    """The (key, secret) Telegram holds for the bot's webhook."""
    webhook = double.webhook(bot)
    keys = parse_qs(urlsplit(webhook.url).query)["key"]
    assert webhook.secret_token is not None
    return keys[0], webhook.secret_token
