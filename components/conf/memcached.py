"""Memcached command line (memcached 1.6 takes no config file: flags are its configuration).

Pure function, no I/O. Kubernetes puts the list in the container's ``args`` (after the
``memcached`` command); the local platform runs ``["memcached", *memcached_args(...)]``.

Eviction: LRU is memcached's default behaviour (segmented HOT/WARM/COLD LRU with the
background LRU maintainer and crawler, on by default since 1.5). The one flag that would break
it is ``-M`` (return errors instead of evicting), so it is never emitted: the product cache is
cache-aside and must make room for new entries, not fail writes. ``-o modern`` is not used
either: in 1.6 it enables nothing (``memcached -h``: "currently: nothing"), its former
contents are already the defaults.
"""

from __future__ import annotations

import re

_LISTEN_RE = re.compile(r"^[A-Za-z0-9.:\-\[\]]+$")


def memcached_args(
    port: int,
    memory_mb: int,
    max_connections: int = 1024,
    threads: int = 4,
    listen: str = "127.0.0.1",
    *,
    user: str | None = None,
    max_item_size_kb: int = 1024,
    protocol: str = "ascii",
) -> list[str]:
    """Arguments for one memcached node (without the ``memcached`` program name).

    ``listen`` defaults to loopback; Kubernetes passes ``0.0.0.0`` (NetworkPolicy restricts
    who connects: memcached has no authentication on the ASCII protocol).
    ``user`` is only for running as root locally (memcached refuses root without ``-u``);
    containers run as a non-root user and leave it None.
    ``protocol="ascii"``: the clients (emcache, aiomcache) speak ASCII/meta; the binary
    protocol is deprecated in 1.6, so it is switched off rather than left auto-negotiated.
    """
    if not 1 <= port <= 65535:
        raise ValueError(f"memcached port must be in 1..65535, got {port}")
    if memory_mb < 8:
        raise ValueError("memcached memory_mb must be >= 8")
    if max_connections < 1:
        raise ValueError("memcached max_connections must be >= 1")
    if threads < 1:
        raise ValueError("memcached threads must be >= 1")
    if not _LISTEN_RE.match(listen):
        raise ValueError(f"memcached listen address {listen!r} is not an address")
    if not 1 <= max_item_size_kb <= 1024 * 1024:
        raise ValueError("memcached max_item_size_kb must be in 1..1048576")
    if max_item_size_kb * 1024 > memory_mb * 1024 * 1024 // 2:
        raise ValueError("memcached max item size must be at most half of memory_mb")
    if protocol not in ("ascii", "auto", "binary"):
        raise ValueError(f"memcached protocol {protocol!r} is not ascii, auto or binary")

    args = [
        "-p", str(port),
        # UDP off (default since 1.5.6, stated): it was an amplification-attack vector.
        "-U", "0",
        "-l", listen,
        "-m", str(memory_mb),
        "-c", str(max_connections),
        "-t", str(threads),
        "-I", f"{max_item_size_kb}k",
        "-B", protocol,
    ]  # fmt: skip
    if user is not None:
        args += ["-u", user]
    return args
