"""The one place a Redis client is made: a single server, or a Redis Cluster.

`REDIS_CLUSTER=true` makes `REDIS_URL` name one node of a Redis Cluster; the client
discovers the others (CLUSTER SLOTS) and sends each command to the primary that
owns its key's slot. Everything the service keeps in Redis is cluster-safe by
construction:

- every key carries a hash tag (`rl:{<key>}`, `lock:{<name>}`,
  `out:{<connection id>}:...`), and every Lua script touches the keys of one tag
  only, so each script runs on one slot;
- route-change broadcasts use classic pub/sub (PUBLISH / SUBSCRIBE), which a
  cluster forwards to every node, so a subscriber on any node hears them;
- nothing pipelines scripts on a cluster (redis-py's cluster pipeline refuses
  EVALSHA): the outbound pacer sends them concurrently instead.

Domain modules type their client as `RedisClient` and use only commands both
clients offer.
"""

from __future__ import annotations

from typing import TypeAlias

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisClusterException, RedisError

from app.config import Settings

RedisClient: TypeAlias = Redis | RedisCluster

# What a failing Redis raises: a single server's errors are RedisError (and OSError
# from the socket); a cluster client also raises RedisClusterException, which is not
# a RedisError (no node reachable, a command it cannot route).
REDIS_FAILURES: tuple[type[Exception], ...] = (RedisError, RedisClusterException, OSError)


def create_redis(settings: Settings, client_name: str | None = None) -> RedisClient:
    """The client for `settings.redis_url`, which must be set.

    Short timeouts: a request waiting on a dead Redis should fail fast with 503
    (Telegram redelivers) rather than hold a webhook connection open. The client
    name tells an operator's CLIENT LIST which process holds which connection.
    """
    url = settings.redis_url
    if url is None:
        raise ValueError("REDIS_URL is not set")
    if settings.redis_cluster:
        return RedisCluster.from_url(
            url,
            socket_connect_timeout=1.0,
            socket_timeout=1.0,
            health_check_interval=30,
            decode_responses=False,
            client_name=client_name,
        )
    return Redis.from_url(
        url,
        socket_connect_timeout=1.0,
        socket_timeout=1.0,
        health_check_interval=30,
        decode_responses=False,
        client_name=client_name,
    )


def is_cluster(redis: RedisClient) -> bool:
    return isinstance(redis, RedisCluster)


async def open_pubsub(redis: RedisClient) -> PubSub:
    """A pub/sub connection (the caller closes it).

    A cluster client picks the subscription's node from its slot map, which it
    only learns with its first command; so it learns it here first (a no-op once
    known), or the first SUBSCRIBE of a fresh client fails.
    """
    if isinstance(redis, RedisCluster):
        await redis.initialize()
    return redis.pubsub()
