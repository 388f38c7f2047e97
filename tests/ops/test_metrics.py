"""Prometheus metrics: what each counts, who may read them, and labels that stay bounded."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app import metrics
from app.auth.models import Role
from app.config import Settings
from app.messages.queue_metrics import QueueGauges
from app.metrics import MetricsAccess, telegram_outcome
from app.telegram.client import TelegramClient
from app.telegram.errors import TelegramError
from app.worker import run_worker
from tests.conftest import WorkspaceFixture, make_settings, running_app
from tests.ingress.test_polling import (
    connect_polling_bots,
    polling_settings,
    queue,
    running_worker,
    wait_until_stored,
)
from tests.ingress.test_webhook import connected, post_update
from tests.messages.test_dispatcher import connect, dispatching, reaches, request
from tests.telegram_double.double import TelegramDouble
from tests.telegram_double.fixtures import load_update

__all__ = ["connected", "polling_settings"]


def sample(name: str, **labels: str) -> float:
    """A metric's current value in this process (0 before its first event)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


def scraped(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, by (name, sorted labels)."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


# -- who may read them ------------------------------------------------------------------


def test_access_is_open_in_development_and_loopback_only_in_production() -> None:
    development = MetricsAccess.for_settings(None, production=False)
    production = MetricsAccess.for_settings(None, production=True)
    assert development.allows("203.0.113.10")
    assert not production.allows("203.0.113.10")
    assert production.allows("127.0.0.1")
    assert production.allows("::1")
    # An IPv4 client on a dual-stack socket.
    assert production.allows("::ffff:127.0.0.1")
    assert not production.allows("not-an-address")
    assert not production.allows(None)


def test_configured_networks_replace_the_default_and_a_proxied_request_is_refused() -> None:
    access = MetricsAccess.for_settings(["10.0.0.0/8"], production=True)
    assert access.allows("10.1.2.3")
    assert not access.allows("127.0.0.1")
    for header in (b"x-forwarded-for", b"x-real-ip", b"forwarded"):
        assert not access.allows("10.1.2.3", [b"host", header])
    assert access.allows("10.1.2.3", [b"host", b"user-agent"])


def test_the_allowed_networks_setting_is_a_comma_separated_list_of_cidrs(
    tmp_path: Path, database_url: str
) -> None:
    parsed = make_settings(tmp_path, database_url, metrics_allowed_networks="10.0.0.0/8, ::1")
    assert parsed.metrics_allowed_networks == ["10.0.0.0/8", "::1"]
    assert (
        make_settings(tmp_path, database_url, metrics_allowed_networks="").metrics_allowed_networks
        is None
    )
    with pytest.raises(ValueError, match="does not appear to be an IPv4 or IPv6 network"):
        make_settings(tmp_path, database_url, metrics_allowed_networks="10.0.0.0/33")


async def test_the_api_serves_metrics_in_development_to_anyone(
    app_client: httpx.AsyncClient,
) -> None:
    response = await app_client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert "integrations_updates_received_total" in response.text
    assert "process_cpu_seconds_total" in response.text


@pytest.mark.parametrize(
    ("client_address", "networks", "headers", "allowed"),
    [
        ("203.0.113.10", None, {}, False),
        ("127.0.0.1", None, {}, True),
        ("127.0.0.1", None, {"X-Forwarded-For": "198.51.100.7"}, False),
        ("203.0.113.10", "203.0.113.0/24", {}, True),
        ("127.0.0.1", "203.0.113.0/24", {}, False),
    ],
)
async def test_production_metrics_are_for_the_allowed_networks_only(
    settings: Settings,
    db_session_factory: async_sessionmaker[AsyncSession],
    redis_client: Redis,
    client_address: str,
    networks: str | None,
    headers: dict[str, str],
    allowed: bool,
) -> None:
    production = settings.model_copy(
        update={
            "app_env": "production",
            "metrics_allowed_networks": None if networks is None else [networks],
        }
    )
    async with running_app(production, client_address=client_address) as (_app, client):
        response = await client.get("/metrics", headers=headers)
    if allowed:
        assert response.status_code == 200
        assert "integrations_outbound_messages" in response.text
    else:
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "forbidden"
        assert "integrations_" not in response.text


# -- what they count --------------------------------------------------------------------


async def test_webhook_deliveries_count_received_duplicates_rejections_and_batches(
    app_client: httpx.AsyncClient, connected: tuple[Any, str, str, str]
) -> None:
    _, _, key, secret = connected
    before = {
        "received": sample("integrations_updates_received_total", source="webhook"),
        "duplicate": sample("integrations_updates_duplicate_total", source="webhook"),
        "unauthenticated": sample("integrations_updates_rejected_total", reason="unauthenticated"),
        "media": sample("integrations_updates_rejected_total", reason="unsupported_media_type"),
        "invalid": sample("integrations_updates_rejected_total", reason="invalid_update"),
        "batches": sample("integrations_ingress_batch_size_count"),
    }
    update = load_update("01_message")
    assert (await post_update(app_client, key, secret, update)).status_code == 200
    assert (await post_update(app_client, key, secret, update)).status_code == 200
    assert (await post_update(app_client, key, "wrong-secret", update)).status_code == 401
    text_body = await post_update(app_client, key, secret, "{}", content_type="text/plain")
    assert text_body.status_code == 415
    assert (await post_update(app_client, key, secret, {"update_id": -1})).status_code == 400

    assert sample("integrations_updates_received_total", source="webhook") == before["received"] + 2
    assert (
        sample("integrations_updates_duplicate_total", source="webhook") == before["duplicate"] + 1
    )
    assert (
        sample("integrations_updates_rejected_total", reason="unauthenticated")
        == before["unauthenticated"] + 1
    )
    assert (
        sample("integrations_updates_rejected_total", reason="unsupported_media_type")
        == before["media"] + 1
    )
    assert (
        sample("integrations_updates_rejected_total", reason="invalid_update")
        == before["invalid"] + 1
    )
    assert sample("integrations_ingress_batch_size_count") == before["batches"] + 2


async def test_a_source_over_its_failure_limit_counts_as_rate_limited(
    settings: Settings,
    db_session_factory: async_sessionmaker[AsyncSession],
    redis_client: Redis,
) -> None:
    strict = settings.model_copy(update={"ingress_failed_auth_per_minute": 1})
    before = sample("integrations_rate_limited_total", limit="ingress_source")
    rejected = sample("integrations_updates_rejected_total", reason="source_rate_limited")
    async with running_app(strict) as (_app, client):
        statuses = [
            (await post_update(client, "no-such-key", "nope", {"update_id": 1})).status_code
            for _ in range(3)
        ]
    assert statuses[0] == 401 and statuses[-1] == 429
    refused = statuses.count(429)
    assert sample("integrations_rate_limited_total", limit="ingress_source") == before + refused
    assert (
        sample("integrations_updates_rejected_total", reason="source_rate_limited")
        == rejected + refused
    )


async def test_the_queue_gauges_count_unfinished_messages_and_approval_wait_is_observed(
    app_client: httpx.AsyncClient,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
) -> None:
    _, connection_id = await connect(app_client, workspace, telegram_double, approval="required")
    first = await request(app_client, workspace, connection_id, chat_id=501, text="one")
    await request(app_client, workspace, connection_id, chat_id=502, text="two")
    waits = sample("integrations_approval_wait_seconds_count")

    _, reviewer = await workspace.token(Role.reviewer)
    approved = await app_client.post(
        f"/api/v1/messages/{first['id']}/approve", headers=workspace.headers(reviewer)
    )
    assert approved.status_code == 200
    assert sample("integrations_approval_wait_seconds_count") == waits + 1

    values = scraped((await app_client.get("/metrics")).text)
    assert values[("integrations_outbound_messages", (("status", "pending_approval"),))] == 1
    assert values[("integrations_outbound_messages", (("status", "queued"),))] == 1
    assert values[("integrations_outbound_messages", (("status", "sending"),))] == 0
    # The approved one is due at once: it has been due for a moment, not for minutes.
    assert 0 <= values[("integrations_outbound_oldest_due_seconds", ())] < 60


async def test_the_queue_gauges_read_the_database_at_most_once_per_ttl(
    app_client: httpx.AsyncClient,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    db_engine: AsyncEngine,
) -> None:
    _, connection_id = await connect(app_client, workspace, telegram_double, approval="required")
    await request(app_client, workspace, connection_id, chat_id=501, text="one")
    cached = QueueGauges(db_engine, ttl=3600)
    await cached.refresh()
    assert sample("integrations_outbound_messages", status="pending_approval") == 1
    await request(app_client, workspace, connection_id, chat_id=502, text="two")
    await cached.refresh()
    assert sample("integrations_outbound_messages", status="pending_approval") == 1
    await QueueGauges(db_engine, ttl=0).refresh()
    assert sample("integrations_outbound_messages", status="pending_approval") == 2


async def test_sends_are_counted_by_outcome(
    app_client: httpx.AsyncClient,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    db_engine: AsyncEngine,
    settings: Settings,
    redis_client: Redis,
) -> None:
    bot, connection_id = await connect(app_client, workspace, telegram_double)
    telegram_double.set_chat(bot, 777, "not_found")
    sent, failed = (
        sample("integrations_outbound_sends_total", outcome="sent"),
        sample("integrations_outbound_sends_total", outcome="failed"),
    )
    calls = sample(
        "integrations_telegram_request_duration_seconds_count", method="sendMessage", outcome="ok"
    )
    refused = sample(
        "integrations_telegram_request_duration_seconds_count", method="sendMessage", outcome="4xx"
    )
    good = await request(app_client, workspace, connection_id, chat_id=501, text="hello")
    bad = await request(app_client, workspace, connection_id, chat_id=777, text="nobody")
    async with dispatching(db_engine, settings, redis_client):
        await reaches(app_client, workspace, good["id"], "sent")
        await reaches(app_client, workspace, bad["id"], "failed")
    assert sample("integrations_outbound_sends_total", outcome="sent") == sent + 1
    assert sample("integrations_outbound_sends_total", outcome="failed") == failed + 1
    ok_calls = sample(
        "integrations_telegram_request_duration_seconds_count", method="sendMessage", outcome="ok"
    )
    assert ok_calls == calls + 1
    refused_calls = sample(
        "integrations_telegram_request_duration_seconds_count", method="sendMessage", outcome="4xx"
    )
    assert refused_calls == refused + 1


async def test_polled_updates_count_as_received_from_polling(
    polling_settings: Settings,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    db_session_factory: async_sessionmaker[AsyncSession],
) -> None:
    ((bot, connection_id),) = await connect_polling_bots(
        polling_settings, workspace, telegram_double
    )
    before = sample("integrations_updates_received_total", source="polling")
    ids = queue(telegram_double, bot, 3)
    async with running_worker(polling_settings):
        await wait_until_stored(db_session_factory, connection_id, ids, "the polled updates")
    assert sample("integrations_updates_received_total", source="polling") == before + 3


async def test_a_chats_second_message_is_deferred_by_the_chat_limit(
    app_client: httpx.AsyncClient,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    db_engine: AsyncEngine,
    settings: Settings,
    redis_client: Redis,
) -> None:
    _, connection_id = await connect(app_client, workspace, telegram_double)
    before = sample("integrations_outbound_deferrals_total", reason="chat")
    messages = [
        await request(app_client, workspace, connection_id, chat_id=501, text=f"m{n}")
        for n in range(2)
    ]
    async with dispatching(db_engine, settings, redis_client):
        for message in messages:
            await reaches(app_client, workspace, message["id"], "sent")
    # One a second per chat: the second waited for its place at least once.
    assert sample("integrations_outbound_deferrals_total", reason="chat") >= before + 1


@pytest.mark.parametrize(
    ("status", "outcome"),
    [(401, "4xx"), (400, "4xx"), (429, "429"), (500, "5xx"), (502, "5xx")],
)
async def test_telegram_calls_are_timed_by_method_and_outcome(
    telegram_double: TelegramDouble, status: int, outcome: str
) -> None:
    bot = telegram_double.add_bot()
    assert bot.token is not None
    telegram_double.fail_next("getMe", status=status)
    name = "integrations_telegram_request_duration_seconds_count"
    before_failed = sample(name, method="getMe", outcome=outcome)
    before_ok = sample(name, method="getMe", outcome="ok")
    async with httpx.AsyncClient() as http:
        client = TelegramClient(http, telegram_double.base_url, request_timeout=5)
        with pytest.raises(TelegramError):
            await client.get_me(bot.token)
        await client.get_me(bot.token)
    assert sample(name, method="getMe", outcome=outcome) == before_failed + 1
    assert sample(name, method="getMe", outcome="ok") == before_ok + 1


async def test_a_call_without_an_answer_is_a_network_outcome() -> None:
    name = "integrations_telegram_request_duration_seconds_count"
    before = sample(name, method="getMe", outcome="network")
    async with httpx.AsyncClient() as http:
        client = TelegramClient(http, "http://127.0.0.1:9", request_timeout=2)
        with pytest.raises(TelegramError):
            await client.get_me("123456789:AA" + "x" * 33)
    assert sample(name, method="getMe", outcome="network") == before + 1


def test_the_outcome_label_has_five_values_and_unknown_methods_are_other() -> None:
    assert telegram_outcome(None, ok=True) == "ok"
    assert telegram_outcome(None, ok=False) == "network"
    assert telegram_outcome(429, ok=False) == "429"
    assert telegram_outcome(404, ok=False) == "4xx"
    assert telegram_outcome(503, ok=False) == "5xx"
    # A proxy's page with a 200 is not the Bot API's answer.
    assert telegram_outcome(200, ok=False) == "5xx"
    before = sample(
        "integrations_telegram_request_duration_seconds_count", method="other", outcome="ok"
    )
    metrics.observe_telegram_call("someNewMethod", 200, True, 0.01)
    after = sample(
        "integrations_telegram_request_duration_seconds_count", method="other", outcome="ok"
    )
    assert after == before + 1
    assert (
        REGISTRY.get_sample_value(
            "integrations_telegram_request_duration_seconds_count",
            {"method": "someNewMethod", "outcome": "ok"},
        )
        is None
    )


# Every label of the service's metrics, and every value it may take.
BOUNDED_LABELS = {
    "source": {"webhook", "polling"},
    "reason": {
        "forbidden_source",
        "source_rate_limited",
        "unauthenticated",
        "connection_rate_limited",
        "unsupported_media_type",
        "too_large",
        "invalid_update",
        "unavailable",
        "chat",
        "bot",
        "day",
        "paused",
        "credentials_unreadable",
        "pacer_unavailable",
    },
    "limit": {"ingress_source", "ingress_connection", "health_check"},
    "outcome": {
        "sent",
        "failed",
        "retried",
        "rate_limited",
        "migrated",
        "unauthorized",
        *metrics.TELEGRAM_OUTCOMES,
    },
    "status": {"pending_approval", "queued", "sending"},
    "method": {*metrics.TELEGRAM_METHODS, "other"},
}


async def test_labels_take_only_their_fixed_values_after_real_traffic(
    app_client: httpx.AsyncClient,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    db_engine: AsyncEngine,
    settings: Settings,
    redis_client: Redis,
) -> None:
    bot, connection_id = await connect(app_client, workspace, telegram_double)
    message = await request(app_client, workspace, connection_id, chat_id=4242, text="hi")
    async with dispatching(db_engine, settings, redis_client):
        await reaches(app_client, workspace, message["id"], "sent")
    text = (await app_client.get("/metrics")).text
    assert bot.token is not None
    for value in (bot.token, connection_id, workspace.admin_token):
        assert value not in text
    for family in text_string_to_metric_families(text):
        if not family.name.startswith("integrations_"):
            continue
        for item in family.samples:
            for label, value in item.labels.items():
                if label == "le":  # a histogram's bucket bound
                    continue
                # The chat id (4242) and the connection id are never a label value.
                assert value in BOUNDED_LABELS[label], (item.name, label, value)


# -- the worker's own endpoint ----------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@contextlib.asynccontextmanager
async def worker_serving_metrics(settings: Settings) -> AsyncIterator[str]:
    """run_worker with its metrics port; yields the endpoint's base URL."""
    port = free_port()
    stop = asyncio.Event()
    worker = settings.model_copy(update={"worker_metrics_port": port})
    task = asyncio.create_task(run_worker(worker, stop=stop, refresh_interval=0.2))
    base = f"http://127.0.0.1:{port}"

    async def listening() -> bool:
        try:
            async with aiohttp.ClientSession() as session, session.get(f"{base}/metrics"):
                return True
        except aiohttp.ClientConnectionError:
            return False

    from tests.waiting import eventually

    try:
        await eventually(listening, "the worker's metrics port")
        yield base
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def test_the_worker_serves_metrics_on_its_own_port(
    settings: Settings,
    app_client: httpx.AsyncClient,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
) -> None:
    _, connection_id = await connect(app_client, workspace, telegram_double, approval="required")
    await request(app_client, workspace, connection_id, chat_id=501, text="waiting")
    async with worker_serving_metrics(settings) as base, httpx.AsyncClient() as client:
        response = await client.get(f"{base}/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        values = scraped(response.text)
        assert values[("integrations_outbound_messages", (("status", "pending_approval"),))] == 1
        other = await client.get(f"{base}/")
        assert other.status_code == 404
        assert other.json()["error"]["code"] == "not_found"
        posted = await client.post(f"{base}/metrics")
        assert posted.status_code == 405
        proxied = await client.get(f"{base}/metrics", headers={"X-Forwarded-For": "192.0.2.1"})
        assert proxied.status_code == 403


async def test_the_worker_refuses_metrics_outside_the_allowed_networks(
    settings: Settings,
    db_session_factory: async_sessionmaker[AsyncSession],
    redis_client: Redis,
) -> None:
    closed = settings.model_copy(update={"metrics_allowed_networks": ["192.0.2.0/24"]})
    async with worker_serving_metrics(closed) as base, httpx.AsyncClient() as client:
        response = await client.get(f"{base}/metrics")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"
    assert "integrations_" not in response.text
