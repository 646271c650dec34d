"""The Redis cluster as a hard dependency (sessions, carts, throttles, event streams).

Services that keep state in Redis cannot serve without it, so its check() makes them
unready when it is down; the cache uses the same client but degrades instead.
"""

from __future__ import annotations

from collections.abc import Sequence

from services.kit.cache import client
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
