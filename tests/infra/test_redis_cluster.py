"""The service on a Redis Cluster (`REDIS_CLUSTER=true`): SPEC §5's hash-tagged keys.

A three-primary cluster of the tests' own (tests/infra/services.py). Each test
spreads its keys over every primary, so a command sent to the wrong node, a script
whose keys straddle two slots, or a pipeline the cluster client refuses, fails here.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from redis.asyncio.cluster import RedisCluster
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.locks import OperationInProgress, OperationLocks
from app.messages.pacing import (
    Confirmation,
    LocalOutboundPacer,
    PaceRequest,
    PaceVerdict,
    RedisOutboundPacer,
)
from app.ratelimit import (
    LeasedRateLimiter,
    RateLimit,
    RateLimiterUnavailable,
    RedisRateLimiter,
)
from app.redis_client import create_redis, is_cluster
from tests.conftest import WorkspaceFixture, make_settings, running_app
from tests.connections.helpers import connect_bot, webhook_credentials
from tests.infra.services import RedisClusterProcesses
from tests.ingress.test_polling import running_worker
from tests.ingress.test_webhook import post_update
from tests.messages.test_dispatcher import connect, reaches, request
from tests.ratelimit._support import free_port
from tests.telegram_double.double import TelegramDouble
from tests.telegram_double.fixtures import load_update

# A Redis Cluster on ports of a fixed range: run alone (see pyproject markers).
pytestmark = pytest.mark.exclusive

# Refills one token an hour: within a test, what is admitted is what the burst holds.
SLOW = RateLimit(rate=1, period=3600, burst=20)


def one_per_primary(client: RedisCluster, redis_key: Callable[[str], str]) -> list[str]:
    """Names (UUID strings) whose Redis keys, `redis_key(name)`, land on each
    primary: one name per primary."""
    found: dict[str, str] = {}
    primaries = {node.name for node in client.get_primaries()}
    for _ in range(10_000):
        name = str(uuid.uuid4())
        node = client.get_node_from_key(redis_key(name))
        assert node is not None
        found.setdefault(node.name, name)
        if set(found) == primaries:
            return list(found.values())
    raise AssertionError("no name found for some primary")


def cluster_settings(
    tmp_path: Path, database_url: str, cluster: RedisClusterProcesses, double: TelegramDouble
) -> Settings:
    return make_settings(
        tmp_path,
        database_url,
        redis_url=cluster.url,
        redis_cluster=True,
        telegram_api_base=double.base_url,
    )


async def test_the_settings_make_a_cluster_client_that_finds_every_primary(
    tmp_path: Path, database_url: str, redis_cluster: RedisClusterProcesses
) -> None:
    settings = make_settings(tmp_path, database_url, redis_url=redis_cluster.url)
    single = create_redis(settings)
    assert not is_cluster(single)
    await single.aclose()
    client = create_redis(settings.model_copy(update={"redis_cluster": True}), "infra-test")
    try:
        assert isinstance(client, RedisCluster)
        assert await client.ping()
        assert sorted(node.port for node in client.get_primaries()) == redis_cluster.ports
    finally:
        await client.aclose()


async def test_gcra_limits_hold_on_every_primary_and_survive_a_script_flush(
    cluster_client: RedisCluster,
) -> None:
    limiter = RedisRateLimiter(cluster_client)
    names = one_per_primary(cluster_client, limiter.redis_key)
    assert len(names) == 3
    for name in names:
        decisions = [await limiter.hit(name, SLOW) for _ in range(SLOW.burst)]
        assert all(d.allowed for d in decisions)
        assert decisions[-1].remaining == 0
        refused = await limiter.hit(name, SLOW)
        assert not refused.allowed and refused.retry_after > 0
        assert not (await limiter.peek(name, SLOW)).allowed
        # The state lives on the primary that owns the key's slot, with an expiry.
        assert await cluster_client.pttl(limiter.redis_key(name)) > 0
    # Scripts forgotten everywhere (a restart, a failover): EVALSHA's NOSCRIPT is
    # answered by EVAL on whichever node owns the key.
    await cluster_client.script_flush()
    fresh = RedisRateLimiter(cluster_client, prefix="after-flush")
    for name in one_per_primary(cluster_client, fresh.redis_key):
        assert (await fresh.hit(name, SLOW, cost=SLOW.burst)).allowed
        assert not (await fresh.hit(name, SLOW)).allowed


async def test_leased_tokens_from_two_replicas_never_exceed_the_shared_burst(
    cluster_client: RedisCluster,
) -> None:
    replicas = [LeasedRateLimiter(RedisRateLimiter(cluster_client), lease_size=4) for _ in "ab"]
    names = one_per_primary(cluster_client, RedisRateLimiter(cluster_client).redis_key)
    for name in names:
        decisions = await asyncio.gather(
            *(replicas[n % 2].hit(name, SLOW) for n in range(3 * SLOW.burst))
        )
        assert sum(d.allowed for d in decisions) == SLOW.burst


async def test_operation_locks_admit_one_holder_per_name_on_every_primary(
    cluster_client: RedisCluster,
) -> None:
    locks = OperationLocks(cluster_client)
    other_replica = OperationLocks(cluster_client)
    names = one_per_primary(cluster_client, lambda name: f"lock:{{{name}}}")
    for name in names:
        async with locks.hold(name):
            assert await cluster_client.exists(f"lock:{{{name}}}") == 1
            with pytest.raises(OperationInProgress):
                async with other_replica.hold(name):
                    pass
        # Released by its holder: the next caller gets it at once.
        assert await cluster_client.exists(f"lock:{{{name}}}") == 0
        async with other_replica.hold(name):
            pass


def _pace_key(name: str) -> str:
    return f"out:{{{name}}}:bot"


def _shape(verdicts: list[PaceVerdict]) -> list[tuple[bool, float, bool, str | None]]:
    return [(v.allowed, round(v.wait, 6), v.ticket is not None, v.limited_by) for v in verdicts]


async def test_the_outbound_pacer_decides_on_a_cluster_as_in_process(
    cluster_client: RedisCluster,
) -> None:
    """Connections on every primary in one batch: one script per connection, each
    on its own slot, the verdicts those of the in-process pacer."""
    connections = [uuid.UUID(name) for name in one_per_primary(cluster_client, _pace_key)]
    requests = [
        PaceRequest(connection, chat)
        for connection in connections
        for chat in (7, 7, 7, -100123, -100123)
    ]
    counted = dict.fromkeys(connections, 0)
    pacer = RedisOutboundPacer(cluster_client)
    verdicts = await pacer.admit(requests, counted)
    expected = await LocalOutboundPacer(clock=lambda: 1000.0).admit(requests, counted)
    assert _shape(verdicts) == _shape(expected)
    assert [v.allowed for v in verdicts].count(True) == 2 * len(connections)

    # Confirmation moves each chat's next turn to after Telegram's answer: a send
    # answered 60 s after its admission leaves its chat a second past that to wait.
    sent = [(r, v) for r, v in zip(requests, verdicts, strict=True) if v.allowed]
    await pacer.confirm(
        [Confirmation(r.connection_id, r.chat_id, v.admitted_at, 60.0) for r, v in sent]
    )
    # Each connection's chat 7 serves its first ticket next.
    next_in_chat_7: dict[uuid.UUID, int | None] = {}
    for r, v in zip(requests, verdicts, strict=True):
        if r.chat_id == 7 and v.ticket is not None:
            next_in_chat_7.setdefault(r.connection_id, v.ticket)
    for connection in connections:
        [again] = await pacer.admit(
            [PaceRequest(connection, 7, ticket=next_in_chat_7[connection])], counted
        )
        assert not again.allowed and again.limited_by == "chat"
        assert 60.0 < again.wait <= 61.0

    # A day the pacer has no count for yet is asked of the caller, on every slot.
    fresh = await RedisOutboundPacer(cluster_client, prefix="fresh").admit(requests[:1])
    assert fresh[0].needs_count


async def test_the_pacer_reloads_its_scripts_after_a_flush_on_every_primary(
    cluster_client: RedisCluster,
) -> None:
    connections = [uuid.UUID(n) for n in one_per_primary(cluster_client, _pace_key)]
    pacer = RedisOutboundPacer(cluster_client)
    counted = dict.fromkeys(connections, 0)
    first = await pacer.admit([PaceRequest(c, 1) for c in connections], counted)
    assert all(v.allowed for v in first)
    await cluster_client.script_flush()
    verdicts = await pacer.admit([PaceRequest(c, 2) for c in connections], counted)
    assert all(v.allowed for v in verdicts)


async def test_an_unreachable_cluster_is_unavailable_never_an_unexpected_error() -> None:
    """redis-py's cluster client raises RedisClusterException (not a RedisError)
    when no node answers; the limiter and the pacer still say "unavailable"."""
    client = RedisCluster(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.5)
    try:
        with pytest.raises(RateLimiterUnavailable):
            await RedisRateLimiter(client).hit("address", SLOW)
        with pytest.raises(RateLimiterUnavailable):
            await RedisOutboundPacer(client).admit([PaceRequest(uuid.uuid4(), 1)])
        with pytest.raises(RateLimiterUnavailable):
            await RedisOutboundPacer(client).confirm(
                [Confirmation(uuid.uuid4(), 1, admitted_at=1.0, elapsed=0.1)]
            )
    finally:
        await client.aclose()


async def test_a_delete_on_one_replica_reaches_the_others_cache_through_the_cluster(
    tmp_path: Path,
    database_url: str,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    redis_cluster: RedisClusterProcesses,
    cluster_client: RedisCluster,
) -> None:
    """Two app instances on the cluster; without the broadcast, replica B would
    accept the deleted key for its cache's 5 s."""
    settings = cluster_settings(tmp_path, database_url, redis_cluster, telegram_double)
    base = load_update("01_message")
    async with (
        running_app(settings) as (app_a, replica_a),
        running_app(settings) as (app_b, replica_b),
    ):
        for app in (app_a, app_b):
            assert is_cluster(app.state.runtime.redis)
            await asyncio.wait_for(app.state.runtime.directory.subscribed.wait(), 10)
        ready = await replica_b.get("/ready")
        assert ready.status_code == 200 and ready.json()["checks"]["redis"] == "ok"
        bot, body = await connect_bot(replica_a, workspace, telegram_double)
        key, secret = webhook_credentials(telegram_double, bot)
        assert (await post_update(replica_b, key, secret, base)).status_code == 200  # cached in B
        deleted = await replica_a.delete(
            f"/api/v1/connections/{body['id']}", headers=workspace.headers()
        )
        assert deleted.status_code == 200
        statuses = []
        for n in range(1, 20):
            later = {**base, "update_id": base["update_id"] + n}
            statuses.append((await post_update(replica_b, key, secret, later)).status_code)
            if statuses[-1] == 401:
                break
            await asyncio.sleep(0.05)
    assert statuses[-1] == 401
    assert len(statuses) < 10  # well inside the 5 s cache lifetime


async def test_webhooks_are_limited_and_messages_sent_by_a_worker_on_the_cluster(
    tmp_path: Path,
    database_url: str,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    redis_cluster: RedisClusterProcesses,
    cluster_client: RedisCluster,
    db_session_factory: async_sessionmaker[AsyncSession],
) -> None:
    """The whole service on the cluster: the per-connection update limit (leased
    tokens) answers 429 past its burst, and the worker's dispatcher, pacing through
    the cluster, sends what the API queued."""
    settings = cluster_settings(tmp_path, database_url, redis_cluster, telegram_double).model_copy(
        update={"ingress_updates_per_second": 1, "ingress_updates_burst": 5}
    )
    base = load_update("01_message")
    async with running_app(settings) as (_app, client):
        bot, connection_id = await connect(client, workspace, telegram_double)
        key, secret = webhook_credentials(telegram_double, bot)
        started = time.monotonic()
        statuses = []
        for n in range(15):
            update = {**base, "update_id": base["update_id"] + n}
            statuses.append((await post_update(client, key, secret, update)).status_code)
        elapsed = time.monotonic() - started
        assert set(statuses) == {200, 429} and statuses[0] == 200
        # The burst, and one more a second: never more, whatever the leases did.
        assert statuses.count(200) <= 5 + math.ceil(elapsed)
        messages = [
            await request(client, workspace, connection_id, chat_id=chat, text=f"hello {chat}")
            for chat in (501, 502, 503)
        ]
        async with running_worker(settings):
            for message in messages:
                await reaches(client, workspace, message["id"], "sent")
    sent = telegram_double.sent_messages(bot)
    assert sorted((m.chat_id, m.text) for m in sent) == [
        (501, "hello 501"),
        (502, "hello 502"),
        (503, "hello 503"),
    ]
    # The pacer's state for the connection lives in one slot, on the cluster.
    slot_keys = [k async for k in cluster_client.scan_iter(match=f"out:{{{connection_id}}}:*")]
    assert any(k.endswith(b":bot") for k in slot_keys)
    assert len({cluster_client.keyslot(k) for k in slot_keys}) == 1
