"""The Redis cluster as a hard dependency (sessions, carts, throttles, event streams).

Services that keep state in Redis cannot serve without it, so its check() makes them
unready when it is down; the cache uses the same client but degrades instead.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

from services.kit.cache import client, subscribe
from services.kit.settings import HostPort


class RedisStore:
    name = "redis"

    def __init__(self, nodes: Sequence[HostPort], password: str | None, timeout_s: float = 1.0):
        self.nodes = list(nodes)
        self.password = password
        self.client = client(nodes, password, timeout_s)

    async def start(self) -> None:
        await self.client.ping()

    async def close(self) -> None:
        await self.client.aclose()

    async def check(self) -> None:
        await self.client.ping()


class ChannelListener:
    """A pub/sub channel heard for the app's lifetime (`services.kit.cache.subscribe` in a
    task of its own). Subclasses say what a message does (`heard`) and what a new
    subscription forgets (`resubscribed`). As a dependency its check never fails: a feed is
    best effort, and a service without it still serves."""

    name = "channel"

    def __init__(self, redis: RedisStore, channel: str) -> None:
        self.redis = redis
        self.channel = channel
        self._task: asyncio.Task[None] | None = None

    def heard(self, message: Any) -> None:
        raise NotImplementedError

    def resubscribed(self) -> None:
        """A subscription was (re)made: messages published while none stood were missed."""

    async def start(self) -> None:
        self._task = asyncio.create_task(
            subscribe(
                self.redis.nodes, self.redis.password, self.channel, self.heard, self.resubscribed
            )
        )

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def check(self) -> None:
        """Best effort: never makes the service unready."""
