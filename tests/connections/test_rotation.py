"""Webhook secret rotation when Telegram may not have received the new secret."""

from __future__ import annotations

import httpx

from tests.conftest import (
    WorkspaceFixture,
)
from tests.connections.helpers import connect_bot, webhook_credentials
from tests.telegram_double.double import TelegramDouble


async def test_a_second_rotation_waits_until_the_first_has_reached_telegram(
    app_client: httpx.AsyncClient, workspace: WorkspaceFixture, telegram_double: TelegramDouble
) -> None:
    telegram_double.enforce_set_webhook_rate_limit = False
    bot, body = await connect_bot(app_client, workspace, telegram_double)
    base = f"/api/v1/connections/{body['id']}"
    telegram_double.fail_next("setWebhook", status=500)
    first = await app_client.post(f"{base}/rotate-secret", headers=workspace.headers())
    assert first.status_code == 502
    second = await app_client.post(f"{base}/rotate-secret", headers=workspace.headers())
    assert second.status_code == 409
    assert second.json()["error"]["code"] == "rotation_unsettled"
    health = (await app_client.get(f"{base}/health", headers=workspace.headers())).json()
    assert health["verdict"] == "action_required" and "resync" in health["hint"]
    assert (await app_client.post(f"{base}/resync", headers=workspace.headers())).status_code == 200
    third = await app_client.post(f"{base}/rotate-secret", headers=workspace.headers())
    assert third.status_code == 200
    health = (await app_client.get(f"{base}/health", headers=workspace.headers())).json()
    assert health["verdict"] == "healthy"
    assert webhook_credentials(telegram_double, bot)[1]
