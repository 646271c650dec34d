"""memcached command line for given inputs."""

from __future__ import annotations

import pytest

from components.conf.memcached import memcached_args


def pairs(args: list[str]) -> dict[str, str]:
    assert len(args) % 2 == 0, args
    return dict(zip(args[::2], args[1::2], strict=True))


def test_kubernetes_node_args() -> None:
    args = memcached_args(11211, 12288, max_connections=4096, threads=2, listen="0.0.0.0")
    assert pairs(args) == {
        "-p": "11211",
        "-U": "0",
        "-l": "0.0.0.0",
        "-m": "12288",
        "-c": "4096",
        "-t": "2",
        "-I": "1024k",
        "-B": "ascii",
    }


def test_local_node_runs_as_given_user() -> None:
    args = memcached_args(21211, 64, 256, 2, "127.0.0.1", user="nobody")
    assert pairs(args)["-u"] == "nobody"
    assert pairs(args)["-p"] == "21211"


def test_lru_eviction_is_never_disabled_and_modern_is_not_used() -> None:
    args = memcached_args(11211, 64)
    # -M turns eviction into write errors; "-o modern" is a no-op in 1.6.
    assert "-M" not in args and "--disable-evictions" not in args
    assert "-o" not in args
    assert "-u" not in args
    assert pairs(args)["-l"] == "127.0.0.1"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"port": 0, "memory_mb": 64},
        {"port": 11211, "memory_mb": 4},
        {"port": 11211, "memory_mb": 64, "threads": 0},
        {"port": 11211, "memory_mb": 64, "max_connections": 0},
        {"port": 11211, "memory_mb": 64, "listen": "0.0.0.0 -M"},
        {"port": 11211, "memory_mb": 64, "protocol": "text"},
        {"port": 11211, "memory_mb": 8, "max_item_size_kb": 8192},
    ],
)
def test_invalid_inputs_are_rejected(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        memcached_args(**kwargs)  # type: ignore[arg-type]
