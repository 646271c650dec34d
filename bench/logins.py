"""The ``logins`` scenario: what bcrypt lets the user service do, at the platform's cost.

Two figures, both per core:

- ``bcrypt``: ``bcrypt.checkpw`` at the service's cost in this process, one thread, for a
  few seconds: the ceiling no tuning of the service can pass.
- ``gateway``: ``concurrency`` shoppers logging in with their right password through the
  gateway, as fast as they are answered, for ``duration_s``. Counts the logins that got
  tokens, the fast 503s of the hashing bound (``PasswordHasher(pending_per_core)``), and the
  CPU the user service's processes spent: logins per CPU-second is the per-core figure.

Aiohttp rather than wrk: a few logins a second per core need no C load generator, and each
login needs its own body (an account of the bench's).
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import aiohttp
import bcrypt


def bcrypt_rate(rounds: int, seconds: float = 3.0) -> dict[str, Any]:
    """Password checks per CPU-second at ``rounds`` (one thread, this process)."""
    hashed = bcrypt.hashpw(b"bench-password-1", bcrypt.gensalt(rounds))
    checks, began_cpu, began = 0, time.process_time(), time.monotonic()
    while time.monotonic() - began < seconds:
        bcrypt.checkpw(b"bench-password-1", hashed)
        checks += 1
    cpu = time.process_time() - began_cpu
    return {"rounds": rounds, "checks": checks, "per_core_per_s": checks / cpu if cpu else None}


async def login_storm(
    gateway: str,
    emails: Sequence[str],
    password: str,
    *,
    concurrency: int,
    duration_s: float,
    cpu_of_user_service: Callable[[], float],
) -> dict[str, Any]:
    """``concurrency`` clients log in round the bench's accounts for ``duration_s``."""
    accounts = itertools.cycle(emails)
    statuses: Counter[int] = Counter()
    latencies: list[float] = []  # of the logins that got tokens
    refused: list[float] = []  # of the hashing bound's 503s
    deadline = time.monotonic() + duration_s
    timeout = aiohttp.ClientTimeout(total=15)

    async def client(session: aiohttp.ClientSession) -> None:
        while time.monotonic() < deadline:
            body = {"email": next(accounts), "password": password}
            began = time.monotonic()
            async with session.post(f"{gateway}/api/users/login", json=body) as response:
                await response.read()
                statuses[response.status] += 1
                if response.status == 200:
                    latencies.append(time.monotonic() - began)
                elif response.status == 503:
                    refused.append(time.monotonic() - began)
                    # As a client told Retry-After would: no tight loop against the bound.
                    await asyncio.sleep(float(response.headers.get("Retry-After", "1")))

    cpu_before, began = cpu_of_user_service(), time.monotonic()
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
    elapsed, cpu = time.monotonic() - began, cpu_of_user_service() - cpu_before
    ok = statuses.get(200, 0)
    quantiles = statistics.quantiles(latencies, n=100) if len(latencies) >= 2 else []
    return {
        "concurrency": concurrency,
        "duration_s": round(elapsed, 1),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "logins_per_s": ok / elapsed,
        "user_service_cpu_s": round(cpu, 2),
        "logins_per_cpu_s": ok / cpu if cpu > 0 else None,
        "p50_ms": 1000 * quantiles[49] if quantiles else None,
        "p99_ms": 1000 * quantiles[98] if quantiles else None,
        "refused_p50_ms": 1000 * statistics.median(refused) if refused else None,
    }
