"""The cache layers against the real Redis cluster and Memcached nodes of the data tier."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator

import pytest
from prometheus_client import CollectorRegistry, Counter
from redis.asyncio import Redis

from services.kit.cache import Cache, MemcachedLayer, RedisLayer, subscribe
from services.kit.settings import HostPort
from stacks.local.data_tier import DataTier
from stacks.local.ports import PortAllocator


def hostports(addresses: tuple[str, ...]) -> list[HostPort]:
    return [HostPort(a.rsplit(":", 1)[0], int(a.rsplit(":", 1)[1])) for a in addresses]


def counter() -> Counter:
    return Counter(
        "cache_requests", "test", ["service", "layer", "result"], registry=CollectorRegistry()
    )


def count(requests: Counter, layer: str, result: str) -> float:
    return requests.labels(service="test", layer=layer, result=result)._value.get()


@pytest.fixture
async def make_cache(data_tier: DataTier) -> AsyncIterator:
    made: list[Cache] = []

    async def build(*, redis: bool = True, memcached: bool = True, dead: bool = False) -> Cache:
        free = PortAllocator(None)
        layers = []
        if redis:
            nodes = (
                [HostPort("127.0.0.1", free.take("dead-redis"))]
                if dead
                else hostports(data_tier.redis.nodes)
            )
            layers.append(RedisLayer(nodes, data_tier.redis.password))
        if memcached:
            nodes = (
                [HostPort("127.0.0.1", free.take("dead-memcached"))]
                if dead
                else hostports(data_tier.memcached.nodes)
            )
            layers.append(MemcachedLayer(nodes))
        cache = Cache("test", layers, requests=counter(), backoff_s=0.3)
        await cache.start()
        made.append(cache)
        return cache

    yield build
    for cache in made:
        await cache.close()


def key() -> str:
    return f"test:{uuid.uuid4().hex}"


async def test_cache_aside_fills_every_layer_on_the_way_back(make_cache) -> None:
    first = await make_cache()
    name, loads = key(), []

    async def loader() -> dict:
        loads.append(1)
        return {"price": 1999}

    assert await first.get_or_load(name, 60, loader) == {"price": 1999}
    assert await first.get_or_load(name, 60, loader) == {"price": 1999}
    assert len(loads) == 1 and count(first._requests, "l1", "hit") == 1  # type: ignore[arg-type]

    # Another instance (empty L1) finds it in Redis.
    second = await make_cache()
    assert await second.get_or_load(name, 60, loader) == {"price": 1999}
    assert count(second._requests, "l2", "hit") == 1  # type: ignore[arg-type]
    # Without Redis, Memcached has it too, and the load still never reaches the loader.
    third = await make_cache(redis=False)
    assert await third.get_or_load(name, 60, loader) == {"price": 1999}
    assert count(third._requests, "l3", "hit") == 1  # type: ignore[arg-type]
    assert len(loads) == 1


async def test_a_lower_layer_refills_the_upper_ones(make_cache) -> None:
    cache = await make_cache()
    redis, memcached = cache.layers
    name = key()
    await memcached.set(name, b'{"from":"l3"}', 60)
    assert await cache.get_or_load(name, 60, _never) == {"from": "l3"}
    assert await redis.get(name) == b'{"from":"l3"}'


async def test_single_flight_loads_once_under_a_stampede(make_cache) -> None:
    cache = await make_cache()
    name, loads = key(), []

    async def slow() -> list[int]:
        loads.append(1)
        await asyncio.sleep(0.2)
        return [1, 2, 3]

    results = await asyncio.gather(*(cache.get_or_load(name, 60, slow) for _ in range(200)))
    assert all(r == [1, 2, 3] for r in results)
    assert len(loads) == 1


async def test_a_failed_load_reaches_every_waiter_and_is_not_cached(make_cache) -> None:
    cache = await make_cache()
    name = key()

    async def broken() -> None:
        await asyncio.sleep(0.05)
        raise RuntimeError("database down")

    results = await asyncio.gather(
        *(cache.get_or_load(name, 60, broken) for _ in range(5)), return_exceptions=True
    )
    assert all(isinstance(r, RuntimeError) for r in results)
    assert await cache.get_or_load(name, 60, _value) == "loaded"


async def test_invalidation_reaches_every_instance(make_cache) -> None:
    writer, reader = await make_cache(), await make_cache()
    name = key()
    assert await reader.get_or_load(name, 60, _value) == "loaded"
    await asyncio.sleep(0.2)  # the reader's subscription is listening
    await writer.invalidate(name)
    for _ in range(50):
        if name not in reader.l1:
            break
        await asyncio.sleep(0.05)
    assert name not in reader.l1
    assert [await layer.get(name) for layer in writer.layers] == [None, None]


async def test_layers_that_are_down_never_fail_a_read(make_cache) -> None:
    cache = await make_cache(dead=True)
    assert await cache.get_or_load(key(), 60, _value) == "loaded"
    assert count(cache._requests, "l2", "error") >= 1  # type: ignore[arg-type]
    assert cache.status() == {"l2": False, "l3": False}
    # Skipped while down: a second read does not wait on the dead servers.
    started = asyncio.get_running_loop().time()
    assert await cache.get_or_load(key(), 60, _value) == "loaded"
    assert asyncio.get_running_loop().time() - started < 0.2
    await cache.invalidate("anything")  # writes degrade too


async def test_miss_ratio_counts_reads_the_caches_could_not_answer(make_cache) -> None:
    cache = await make_cache()
    name = key()
    for _ in range(4):
        await cache.get_or_load(name, 60, _value)
    assert cache.miss_ratio() == pytest.approx(0.25)


async def _value() -> str:
    return "loaded"


async def _never() -> None:
    raise AssertionError("the loader must not run")


async def test_a_server_stopped_mid_way_degrades_to_the_next_layer(tmp_path) -> None:
    """A Memcached node of its own, used, then stopped: reads go on, from L2 and the loader."""
    from stacks.local.memcached import LocalMemcached
    from stacks.local.process import Supervisor

    supervisor = Supervisor(tmp_path / "logs", tmp_path / "processes.json")
    (tmp_path / "logs").mkdir()
    memcached = LocalMemcached(supervisor, PortAllocator(None), count=1)
    await asyncio.to_thread(memcached.start)
    cache = Cache(
        "test", [MemcachedLayer(hostports(memcached.nodes))], requests=counter(), backoff_s=0.3
    )
    await cache.start()
    try:
        name = key()
        assert await cache.get_or_load(name, 60, _value) == "loaded"
        cache.l1.clear()
        assert await cache.get_or_load(name, 60, _never) == "loaded"  # served by memcached
        await asyncio.to_thread(supervisor.stop)
        cache.l1.clear()
        assert await cache.get_or_load(name, 60, _value) == "loaded"  # the loader, no error
        assert count(cache._requests, "l3", "error") >= 1  # type: ignore[arg-type]
        assert cache.status() == {"l3": False}
    finally:
        await cache.close()
        await asyncio.to_thread(supervisor.stop)


async def test_a_subscription_lost_is_made_again_and_says_so(tmp_path) -> None:
    """`subscribe` hears every message; when its server goes away it keeps trying, subscribes
    again once the server is back, and `on_subscribed` runs each time (state built from the
    feed must not outlive a gap). A Redis server of its own: stopped, then started again."""
    from stacks.local.process import Process, Supervisor
    from stacks.local.redis import served_by
    from stacks.local.system import REDIS_SERVER

    supervisor = Supervisor(tmp_path / "logs", tmp_path / "processes.json")
    (tmp_path / "logs").mkdir()
    node = HostPort("127.0.0.1", PortAllocator(None).take("redis"))
    argv = [REDIS_SERVER, "--bind", node.host, "--port", str(node.port), "--save", ""]

    def serve() -> Process:
        process = supervisor.start("redis", argv, env={"HOME": str(tmp_path)}, cwd=tmp_path)
        supervisor.wait_until(
            lambda: served_by(node.host, node.port, "", process.pid),
            process=process,
            what="redis",
            timeout=30,
        )
        return process

    channel = f"test:{uuid.uuid4().hex}"
    heard: list[dict[str, int]] = []
    subscriptions: list[float] = []
    server = await asyncio.to_thread(serve)
    listener = asyncio.create_task(
        subscribe(
            [node],
            None,
            channel,
            heard.append,
            lambda: subscriptions.append(asyncio.get_running_loop().time()),
        )
    )

    async def publish_until_heard(n: int) -> None:
        publisher = Redis(host=node.host, port=node.port)
        deadline = asyncio.get_running_loop().time() + 15
        try:
            while {"n": n} not in heard:  # a message published before the subscription is lost
                assert asyncio.get_running_loop().time() < deadline, f"message {n} never heard"
                with contextlib.suppress(ConnectionError, OSError):
                    await publisher.publish(channel, json.dumps({"n": n}))
                await asyncio.sleep(0.05)
        finally:
            await publisher.aclose()

    try:
        await publish_until_heard(0)
        assert len(subscriptions) == 1
        await asyncio.to_thread(supervisor.stop, [server])
        await asyncio.sleep(1.5)  # it notices, and finds nobody to subscribe to
        await asyncio.to_thread(serve)
        await publish_until_heard(1)
        assert len(subscriptions) == 2
    finally:
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener
        await asyncio.to_thread(supervisor.stop)
