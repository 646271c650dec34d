"""Three cache layers in front of the database, and how they are kept honest.

    L1  in-process: TTL + LRU per entry (cachetools), with single-flight loading
    L2  Redis cluster (shared by every instance)
    L3  Memcached over several nodes (rendezvous hashing by emcache)

Reads are cache-aside: the first layer that has the key answers, and the layers above it are
filled on the way back; a miss everywhere runs the loader once per key, however many requests
ask at the same moment. A layer that fails is skipped for a few seconds and never fails a
read. Writes invalidate: the keys are deleted from L2 and L3 and an invalidation message on
Redis pub/sub makes every instance drop them from its L1.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Protocol

import emcache
from cachetools import TLRUCache
from prometheus_client import Counter
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster

from services.kit.settings import HostPort

log = logging.getLogger(__name__)

INVALIDATION_CHANNEL = "cache:invalidate"
MISSING = object()


class Layer(Protocol):
    """A shared cache layer. Raising means "this layer is unwell", never "not found"."""

    name: str

    async def start(self) -> None: ...
    async def get(self, key: str) -> bytes | None: ...
    async def set(self, key: str, value: bytes, ttl: int) -> None: ...
    async def delete(self, keys: Sequence[str]) -> None: ...
    async def close(self) -> None: ...


def client(
    nodes: Sequence[HostPort], password: str | None, timeout_s: float = 1.0
) -> RedisCluster | Redis:
    """A cluster-aware client for several seed nodes, a plain one for a single node."""
    if len(nodes) > 1:
        return RedisCluster(
            startup_nodes=[ClusterNode(n.host, n.port) for n in nodes],
            password=password,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            require_full_coverage=False,
        )
    return Redis(
        host=nodes[0].host,
        port=nodes[0].port,
        password=password,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
    )


async def subscribe(
    nodes: Sequence[HostPort],
    password: str | None,
    channel: str,
    on_message: Callable[[Any], None],
    on_subscribed: Callable[[], None] | None = None,
) -> None:
    """Hand every JSON message on a pub/sub channel to `on_message`, for ever.

    Cluster pub/sub is broadcast, so one connection to any node hears every message; when it
    is lost, the next seed node is tried (a second's pause after a full round). Messages
    published while no subscription stood are lost: `on_subscribed` runs each time one is
    made, for state that must not outlive such a gap, including when redis-py reconnects
    and subscribes again by itself (it does, when the connection drops between two reads)."""
    while True:
        for node in nodes:
            connection = Redis(host=node.host, port=node.port, password=password)
            watcher = _Reconnects(on_subscribed)
            try:
                async with connection.pubsub() as pubsub:
                    await pubsub.subscribe(channel)
                    watcher.connected()
                    if pubsub.connection is not None:
                        pubsub.connection.register_connect_callback(watcher.connected)
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            on_message(json.loads(message["data"]))
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning("subscription to %s on %s lost: %s", channel, node, error)
            finally:
                with contextlib.suppress(Exception):
                    await connection.aclose()
        await asyncio.sleep(1.0)


class _Reconnects:
    """Tells `subscribe`'s caller of every (re)connection of its pub/sub connection (redis-py
    keeps connect callbacks as weak references to methods)."""

    def __init__(self, on_subscribed: Callable[[], None] | None) -> None:
        self.on_subscribed = on_subscribed

    def connected(self, _connection: object = None) -> None:
        if self.on_subscribed is not None:
            self.on_subscribed()


class RedisLayer:
    """L2: the Redis cluster, through a client with short timeouts so a sick node costs little."""

    name = "l2"

    def __init__(self, nodes: Sequence[HostPort], password: str | None, timeout_s: float = 0.25):
        self.nodes = list(nodes)
        self.password = password
        self.client = client(nodes, password, timeout_s)

    async def start(self) -> None:
        """Connections are made on first use: a cluster that is down must not stop the app."""

    async def get(self, key: str) -> bytes | None:
        return await self.client.get(key)

    async def set(self, key: str, value: bytes, ttl: int) -> None:
        await self.client.set(key, value, ex=ttl)

    async def delete(self, keys: Sequence[str]) -> None:
        # One DEL per key: keys of a cluster live on different slots.
        for key in keys:
            await self.client.delete(key)

    async def publish(self, channel: str, message: str) -> None:
        # Cluster pub/sub is broadcast: a message published on any node reaches every node.
        await self.client.execute_command("PUBLISH", channel, message)

    async def close(self) -> None:
        await self.client.aclose()


class MemcachedLayer:
    """L3: memcached nodes, keys spread by emcache's rendezvous hashing."""

    name = "l3"

    def __init__(self, nodes: Sequence[HostPort], timeout_s: float = 0.25):
        self.nodes = list(nodes)
        self.timeout_s = timeout_s
        self._client: emcache.Client | None = None

    async def start(self) -> None:
        self._client = await emcache.create_client(
            [emcache.MemcachedHostAddress(n.host, n.port) for n in self.nodes],
            timeout=self.timeout_s,
            connection_timeout=self.timeout_s,
            max_connections=8,
            purge_unhealthy_nodes=False,  # a node coming back keeps its share of keys
        )

    @property
    def client(self) -> emcache.Client:
        if self._client is None:
            raise ConnectionError("memcached client not started")
        return self._client

    async def get(self, key: str) -> bytes | None:
        item = await self.client.get(_memcached_key(key))
        return None if item is None else item.value

    async def set(self, key: str, value: bytes, ttl: int) -> None:
        await self.client.set(_memcached_key(key), value, exptime=ttl)

    async def delete(self, keys: Sequence[str]) -> None:
        for key in keys:
            with contextlib.suppress(emcache.NotFoundCommandError):
                await self.client.delete(_memcached_key(key))

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()


def _memcached_key(key: str) -> bytes:
    """Memcached keys are at most 250 bytes without spaces: long ones are hashed."""
    raw = key.encode()
    if len(raw) <= 200 and b" " not in raw:
        return raw
    return b"h:" + hashlib.sha256(raw).hexdigest().encode()


class _Health:
    """Skip a layer for a while after it fails, so a dead node is not waited on per request."""

    def __init__(self, backoff_s: float):
        self.backoff_s = backoff_s
        self.down_until = 0.0

    @property
    def up(self) -> bool:
        return time.monotonic() >= self.down_until

    def failed(self) -> None:
        self.down_until = time.monotonic() + self.backoff_s


class _Window:
    """Lookups and loads (misses everywhere) per second over the last `seconds` seconds."""

    def __init__(self, seconds: int = 60):
        self.seconds = seconds
        self.buckets: dict[int, list[int]] = {}

    def record(self, loaded: bool) -> None:
        now = int(time.monotonic())
        bucket = self.buckets.get(now)
        if bucket is None:
            bucket = self.buckets[now] = [0, 0]
            for old in [t for t in self.buckets if t <= now - self.seconds]:
                del self.buckets[old]
        bucket[0] += 1
        bucket[1] += loaded

    def ratio(self) -> float:
        since = int(time.monotonic()) - self.seconds
        lookups = loads = 0
        for second, (n, m) in self.buckets.items():
            if second > since:
                lookups, loads = lookups + n, loads + m
        return loads / lookups if lookups else 0.0


class Cache:
    """L1 + the shared layers, as one cache-aside API. A dependency of the app (its check
    never fails: the service keeps serving from the database when caches are down)."""

    name = "cache"

    def __init__(
        self,
        service: str,
        layers: Sequence[Layer],
        l1_entries: int = 10_000,
        requests: Counter | None = None,
        backoff_s: float = 5.0,
    ):
        self.service = service
        self.layers = list(layers)
        # Each entry carries its own expiry (catalog 1 h, search 15 min, ...).
        self.l1: TLRUCache[str, Any] = TLRUCache(
            maxsize=l1_entries, ttu=lambda _key, value, now: now + value[0], timer=time.monotonic
        )
        self._requests = requests
        self._health = {layer.name: _Health(backoff_s) for layer in self.layers}
        self._inflight: dict[str, asyncio.Future[Any]] = {}
        self._subscriber: asyncio.Task[None] | None = None
        self._window = _Window()

    # --- the dependency protocol --------------------------------------------------------------

    async def start(self) -> None:
        for layer in self.layers:
            try:
                await layer.start()
            except Exception as error:  # a cache that is down at start is skipped, not fatal
                self._health[layer.name].failed()
                log.warning("cache layer %s unavailable at start: %s", layer.name, error)
        redis = self._redis()
        if redis is not None:
            self._subscriber = asyncio.create_task(self._listen(redis))

    async def close(self) -> None:
        if self._subscriber is not None:
            self._subscriber.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._subscriber
        for layer in self.layers:
            with contextlib.suppress(Exception):
                await layer.close()

    async def check(self) -> None:
        """Caches degrade, they do not make a service unready."""

    def status(self) -> dict[str, bool]:
        return {name: health.up for name, health in self._health.items()}

    def miss_ratio(self) -> float:
        """Share of lookups in the last minute that no layer could answer (the loader ran)."""
        return self._window.ratio()

    # --- reads --------------------------------------------------------------------------------

    async def get_or_load(self, key: str, ttl: int, loader: Callable[[], Awaitable[Any]]) -> Any:
        """The cached value of `key`, or the loader's (then cached in every layer for `ttl` s).

        A loader returning None is not cached (a missing row may appear any time)."""
        entry = self.l1.get(key, MISSING)
        if entry is not MISSING:
            self._count("l1", "hit")
            self._window.record(loaded=False)
            return entry[1]
        self._count("l1", "miss")
        if key in self._inflight:  # single flight: wait for the load already under way
            return await asyncio.shield(self._inflight[key])
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            value = await self._load(key, ttl, loader)
        except BaseException as error:
            future.set_exception(error)
            future.exception()  # mark retrieved: waiters (if any) re-raise it themselves
            raise
        else:
            future.set_result(value)
            return value
        finally:
            del self._inflight[key]

    async def _load(self, key: str, ttl: int, loader: Callable[[], Awaitable[Any]]) -> Any:
        missed: list[Layer] = []
        for layer in self.layers:
            raw = await self._get(layer, key)
            if raw is not None:
                self._window.record(loaded=False)
                value = json.loads(raw)
                await self._fill(missed, key, raw, ttl)
                self.l1[key] = (ttl, value)
                return value
            missed.append(layer)
        self._window.record(loaded=True)
        value = await loader()
        if value is not None:
            await self._fill(missed, key, _encode(value), ttl)
            self.l1[key] = (ttl, value)
        return value

    async def _get(self, layer: Layer, key: str) -> bytes | None:
        health = self._health[layer.name]
        if not health.up:
            self._count(layer.name, "error")
            return None
        try:
            raw = await layer.get(key)
        except Exception as error:  # a sick layer is skipped, never fails the read
            health.failed()
            self._count(layer.name, "error")
            log.warning("cache layer %s failed on get: %s", layer.name, error)
            return None
        self._count(layer.name, "hit" if raw is not None else "miss")
        return raw

    async def _fill(self, layers: Iterable[Layer], key: str, raw: bytes, ttl: int) -> None:
        for layer in layers:
            if not self._health[layer.name].up:
                continue
            try:
                await layer.set(key, raw, ttl)
            except Exception as error:
                self._health[layer.name].failed()
                log.warning("cache layer %s failed on set: %s", layer.name, error)

    # --- writes -------------------------------------------------------------------------------

    async def invalidate(self, *keys: str) -> None:
        """Drop keys everywhere: every shared layer, and every instance's L1 (pub/sub)."""
        for key in keys:
            self.l1.pop(key, None)
        for layer in self.layers:
            try:
                await layer.delete(keys)
            except Exception as error:
                self._health[layer.name].failed()
                log.warning("cache layer %s failed on delete: %s", layer.name, error)
        redis = self._redis()
        if redis is not None:
            try:
                await redis.publish(INVALIDATION_CHANNEL, json.dumps(list(keys)))
            except Exception as error:
                log.warning("cache invalidation not published: %s", error)

    async def _listen(self, redis: RedisLayer) -> None:
        """Drop from L1 whatever another instance invalidated."""

        def drop(keys: Any) -> None:
            for key in keys:
                self.l1.pop(key, None)

        await subscribe(redis.nodes, redis.password, INVALIDATION_CHANNEL, drop)

    def _redis(self) -> RedisLayer | None:
        return next((layer for layer in self.layers if isinstance(layer, RedisLayer)), None)

    def _count(self, layer: str, result: str) -> None:
        if self._requests is not None:
            self._requests.labels(service=self.service, layer=layer, result=result).inc()


def _encode(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), default=str).encode()
