"""The shared backends a service's settings describe, as app dependencies with metrics."""

from __future__ import annotations

from dataclasses import replace

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from services.kit.cache import Cache, Layer, MemcachedLayer, RedisLayer, client
from services.kit.db import Database
from services.kit.metrics import Metrics
from services.kit.redis import RedisStore
from services.kit.revocation import Revocations
from services.kit.settings import Settings, SettingsError


def database(
    settings: Settings, metrics: Metrics, pool_max: int | None = None, role: str = ""
) -> Database:
    """The service's database; `pool_max` connections at most (default DATABASE_POOL_MAX),
    `role` for a second one with pools of its own (`services.kit.db.Database`)."""
    config = settings.database()
    if pool_max is not None:
        config = replace(config, max_connections=pool_max, min_connections=min(2, pool_max))
    return Database(config, settings.service_name, metrics, role)


def redis(settings: Settings) -> RedisStore:
    _require_redis(settings)
    return RedisStore(settings.redis_nodes, settings.redis_password())


def revocations(
    settings: Settings, redis_client: RedisCluster | Redis | None = None
) -> Revocations:
    """The revoked sessions every authenticated route checks, through `redis_client` (the
    service's own) or a client of their own with short timeouts (a sick node costs a request
    0.5 s, then a 503)."""
    if redis_client is not None:
        return Revocations(redis_client)
    _require_redis(settings)
    own = client(settings.redis_nodes, settings.redis_password(), timeout_s=0.5)
    return Revocations(own, owns_client=True)


def _require_redis(settings: Settings) -> None:
    if not settings.redis_nodes:
        raise SettingsError(
            [("REDIS_NODES", "missing; expected host:port,...")], settings.service_name
        )


def cache(settings: Settings, metrics: Metrics) -> Cache:
    """L1, then Redis (L2) and Memcached (L3) where the settings name them."""
    layers: list[Layer] = []
    if settings.redis_nodes:
        layers.append(RedisLayer(settings.redis_nodes, settings.redis_password()))
    if settings.memcached_nodes:
        layers.append(MemcachedLayer(settings.memcached_nodes))
    return Cache(settings.service_name, layers, requests=metrics.cache_requests)
