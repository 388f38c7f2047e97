"""Where webhook requests come from: failed-authentication limits per address,
Telegram's shared addresses, forwarded addresses and IPv6."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tests.conftest import (
    WorkspaceFixture,
    make_settings,
    running_app,
)
from tests.connections.helpers import connect_bot, webhook_credentials
from tests.ingress.helpers import stored_update_ids
from tests.ingress.test_webhook import post_update
from tests.telegram_double.double import TelegramDouble
from tests.telegram_double.fixtures import load_update

TELEGRAM_ADDRESS = "149.154.167.50"


async def test_a_junk_key_from_telegrams_addresses_does_not_lock_out_other_bots(
    tmp_path: Path,
    database_url: str,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    redis_client: Any,
    db_session_factory: async_sessionmaker[AsyncSession],
) -> None:
    """Telegram delivers every bot's webhooks from a few shared addresses."""
    settings = make_settings(
        tmp_path,
        database_url,
        telegram_api_base=telegram_double.base_url,
        ingress_failed_auth_per_minute=3,
    )
    sample = load_update("01_message")
    async with running_app(settings, client_address=TELEGRAM_ADDRESS) as (_app, client):
        bot, _ = await connect_bot(client, workspace, telegram_double)
        key, secret = webhook_credentials(telegram_double, bot)
        junk = [(await post_update(client, "junk-key", "x", sample)).status_code for _ in range(5)]
        assert junk[:3] == [401, 401, 401] and junk[3:] == [429, 429]
        # The same address delivering a real bot's update is not refused.
        assert (await post_update(client, key, secret, sample)).status_code == 200
    # Elsewhere, the per-address rule holds as before.
    async with running_app(settings, client_address="198.51.100.20") as (_app, client):
        for _ in range(3):
            assert (await post_update(client, "junk-key", "x", sample)).status_code == 401
        assert (await post_update(client, key, secret, sample)).status_code == 429
    assert await stored_update_ids(db_session_factory) == [sample["update_id"]]


async def test_forwarded_addresses_with_ports_count_as_the_address(
    tmp_path: Path,
    database_url: str,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    redis_client: Any,
) -> None:
    settings = make_settings(
        tmp_path,
        database_url,
        telegram_api_base=telegram_double.base_url,
        ingress_failed_auth_per_minute=2,
        ingress_trusted_proxies=["203.0.113.0/24"],
    )
    sample = load_update("01_message")
    async with running_app(settings) as (_app, client):
        statuses = [
            (
                await post_update(
                    client, "junk", "x", sample, headers={"X-Forwarded-For": f"198.51.100.7:{p}"}
                )
            ).status_code
            for p in range(5000, 5004)
        ]
    assert statuses == [401, 401, 429, 429]


async def test_ipv6_failures_are_counted_per_64_and_webhook_answers_carry_a_request_id(
    tmp_path: Path,
    database_url: str,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    redis_client: Any,
) -> None:
    settings = make_settings(
        tmp_path,
        database_url,
        telegram_api_base=telegram_double.base_url,
        ingress_failed_auth_per_minute=2,
    )
    sample = load_update("01_message")
    statuses = []
    for host in range(1, 5):
        async with running_app(settings, client_address=f"2001:db8:1:2::{host}") as (_, client):
            response = await post_update(client, "junk", "x", sample)
            statuses.append(response.status_code)
            assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"])
    assert statuses == [401, 401, 429, 429]
