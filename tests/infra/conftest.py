"""A Redis Cluster and a PgBouncer of the tests' own, for the whole test session."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio.cluster import RedisCluster

from tests.infra.services import PgBouncerProcess, RedisClusterProcesses


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterProcesses]:
    cluster = RedisClusterProcesses(tmp_path_factory.mktemp("redis-cluster"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
async def cluster_client(redis_cluster: RedisClusterProcesses) -> AsyncIterator[RedisCluster]:
    """A client of the test cluster; every primary is emptied before and after."""
    client = RedisCluster.from_url(redis_cluster.url)
    await client.flushall()
    yield client
    await client.flushall()
    await client.aclose()


@pytest.fixture(scope="session")
def pgbouncer() -> Iterator[PgBouncerProcess]:
    bouncer = PgBouncerProcess()
    try:
        bouncer.start()
        yield bouncer
    finally:
        bouncer.stop()
