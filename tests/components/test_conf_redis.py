"""Rendered Redis configuration: content for given inputs, and the bootstrap's logic.

The bootstrap is exercised against a stub ``redis-cli`` (a small sh script keeping per-node
state in files), so its decisions (create once, no-op afterwards, join a blank node, refuse a
half-formed cluster) are tested in milliseconds without servers.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from components.conf.redis import (
    REDISCLI_AUTH_ENV,
    RedisClusterSpec,
    RedisNode,
    cluster_bootstrap_sh,
    redis_auth_conf,
    redis_conf,
)

PASSWORD = "correct-horse-battery-staple-42"


def k8s_spec() -> RedisClusterSpec:
    nodes = tuple(
        RedisNode(f"redis-{i}", f"redis-{i}.redis.cache.svc.cluster.local") for i in range(6)
    )
    return RedisClusterSpec(nodes=nodes, maxmemory_mb=4096, announce_hostnames=True)


def local_spec(base_port: int = 17001) -> RedisClusterSpec:
    nodes = tuple(RedisNode(f"redis-{i}", "127.0.0.1", base_port + i) for i in range(6))
    return RedisClusterSpec(nodes=nodes, maxmemory_mb=64)


def conf_lines(text: str) -> set[str]:
    return {line for line in text.splitlines() if line and not line.startswith("#")}


def test_k8s_node_conf_has_cluster_persistence_and_memory_settings() -> None:
    spec = k8s_spec()
    node = spec.nodes[2]
    text = redis_conf(
        node, spec, "/data", bind=("0.0.0.0",), auth_include="/etc/redis/auth/auth.conf"
    )
    lines = conf_lines(text)
    for expected in (
        "bind 0.0.0.0",
        "protected-mode yes",
        "port 6379",
        'dir "/data"',
        "daemonize no",
        "cluster-enabled yes",
        "cluster-config-file nodes.conf",
        "cluster-node-timeout 5000",
        "cluster-port 16379",
        "cluster-require-full-coverage no",
        "cluster-announce-hostname redis-2.redis.cache.svc.cluster.local",
        "cluster-preferred-endpoint-type hostname",
        "appendonly yes",
        "appendfsync everysec",
        "maxmemory 4096mb",
        "maxmemory-policy volatile-lru",
        'include "/etc/redis/auth/auth.conf"',
    ):
        assert expected in lines, expected
    assert not any(line.startswith(("requirepass", "masterauth")) for line in lines)


def test_local_node_conf_uses_given_port_dir_and_ip_endpoints() -> None:
    spec = local_spec()
    text = redis_conf(spec.nodes[0], spec, "/tmp/x/redis-0")
    lines = conf_lines(text)
    assert "port 17001" in lines
    assert "cluster-port 27001" in lines
    assert "bind 127.0.0.1 -::1" in lines
    assert 'dir "/tmp/x/redis-0"' in lines
    assert "cluster-preferred-endpoint-type ip" in lines
    assert not any(line.startswith("cluster-announce-hostname") for line in lines)
    assert not any(line.startswith("include") for line in lines)


def test_explicit_bus_port_is_used() -> None:
    nodes = tuple(RedisNode(f"r-{i}", "127.0.0.1", 7000 + i, bus_port=8000 + i) for i in range(6))
    spec = RedisClusterSpec(nodes=nodes)
    assert "cluster-port 8003" in conf_lines(redis_conf(nodes[3], spec, "/d"))


def test_open_bind_without_password_is_refused() -> None:
    spec = k8s_spec()
    with pytest.raises(ValueError, match="auth_include"):
        redis_conf(spec.nodes[0], spec, "/data", bind=("0.0.0.0",))


def test_node_must_belong_to_spec() -> None:
    with pytest.raises(ValueError, match="not part"):
        redis_conf(RedisNode("other", "127.0.0.1", 9999), local_spec(), "/d")


@pytest.mark.parametrize("count,replicas", [(5, 1), (4, 1), (2, 0), (7, 1)])
def test_spec_rejects_shapes_without_three_full_shards(count: int, replicas: int) -> None:
    nodes = tuple(RedisNode(f"r-{i}", "127.0.0.1", 7000 + i) for i in range(count))
    with pytest.raises(ValueError, match="3 masters"):
        RedisClusterSpec(nodes=nodes, replicas_per_master=replicas)


def test_spec_validation() -> None:
    nodes = local_spec().nodes
    with pytest.raises(ValueError, match="maxmemory_policy"):
        RedisClusterSpec(nodes=nodes, maxmemory_policy="lru")
    with pytest.raises(ValueError, match="maxmemory_mb"):
        RedisClusterSpec(nodes=nodes, maxmemory_mb=0)
    with pytest.raises(ValueError, match="unique"):
        RedisClusterSpec(nodes=(*nodes[:5], RedisNode("redis-9", "127.0.0.1", 17001)))
    with pytest.raises(ValueError, match="host"):
        RedisNode("r-0", "bad host;rm", 6379)
    with pytest.raises(ValueError, match="port"):
        RedisNode("r-0", "127.0.0.1", 70000)
    assert RedisClusterSpec(nodes=nodes).masters == 3


def test_auth_conf_quotes_the_password_and_sets_both_directions() -> None:
    text = redis_auth_conf('pa"ss\\word-0123456789')
    assert text == (
        'requirepass "pa\\"ss\\\\word-0123456789"\nmasterauth "pa\\"ss\\\\word-0123456789"\n'
    )
    with pytest.raises(ValueError, match="16"):
        redis_auth_conf("short")
    with pytest.raises(ValueError, match="control"):
        redis_auth_conf("line\nbreak-0123456789")


def test_bootstrap_script_content() -> None:
    spec = k8s_spec()
    script = cluster_bootstrap_sh(spec, resolve_hosts=True, wait_seconds=120)
    assert script.startswith("#!/bin/sh\n")
    assert "redis-5.redis.cache.svc.cluster.local:6379" in script
    # The masters first, then each replica of a chosen master (never left to redis-cli).
    assert "--cluster create $addrs --cluster-replicas 0 --cluster-yes" in script
    assert '--cluster-slave --cluster-master-id "$id"' in script
    assert "WAIT_SECONDS=120" in script
    assert "RESOLVE_HOSTS=1" in script
    assert "getent ahostsv4" in script
    # The password never appears: redis-cli reads REDISCLI_AUTH from the environment.
    assert REDISCLI_AUTH_ENV == "REDISCLI_AUTH"
    assert " -a " not in script and "--pass" not in script


@pytest.mark.parametrize("shell", ["sh", "dash", "bash"])
def test_bootstrap_script_parses(shell: str, tmp_path: Path) -> None:
    if shutil.which(shell) is None:
        pytest.skip(f"{shell} not installed")
    path = tmp_path / "bootstrap.sh"
    path.write_text(cluster_bootstrap_sh(k8s_spec(), resolve_hosts=True))
    subprocess.run([shell, "-n", str(path)], check=True)


def test_no_replica_shares_its_masters_zone() -> None:
    """Nodes placed as on GKE (node i in zone i mod n): every master gets a replica in
    another zone, with three zones as with two."""
    for zones in (("a", "b", "c"), ("a", "b")):
        nodes = tuple(
            RedisNode(f"redis-{i}", f"redis-{i}", zone=zones[i % len(zones)]) for i in range(6)
        )
        spec = RedisClusterSpec(nodes=nodes)
        zone = {n.name: n.zone for n in nodes}
        layout = spec.replica_of()
        assert sorted(layout) == ["redis-3", "redis-4", "redis-5"]
        assert sorted(layout.values()) == ["redis-0", "redis-1", "redis-2"]  # one each
        assert all(zone[r] != zone[m] for r, m in layout.items()), layout
    three = RedisClusterSpec(
        nodes=tuple(RedisNode(f"r-{i}", f"r-{i}", zone="abc"[i % 3]) for i in range(6))
    )
    assert three.replica_of() == {"r-3": "r-1", "r-4": "r-2", "r-5": "r-0"}
    # And the bootstrap forms exactly that layout.
    assert "PAIRS='r-3:6379=r-1:6379 r-4:6379=r-2:6379 r-5:6379=r-0:6379'" in (
        cluster_bootstrap_sh(three)
    )


def test_a_layout_that_must_put_a_replica_beside_its_master_is_refused() -> None:
    zones = "aaaaab"  # every master in zone a, and so is the first replica
    nodes = tuple(RedisNode(f"r-{i}", f"r-{i}", zone=zones[i]) for i in range(6))
    with pytest.raises(ValueError, match="r-3 \\(a\\): no master outside its zone"):
        RedisClusterSpec(nodes=nodes)


def test_bootstrap_rejects_bad_wait() -> None:
    with pytest.raises(ValueError):
        cluster_bootstrap_sh(local_spec(), wait_seconds=0)


# --- The bootstrap's decisions, against a stub redis-cli -----------------------------------

# Per-node state lives in $STUB/<port>: blank | member-ok | member-fail. Calls are logged.
STUB_CLI = r"""#!/bin/sh
port=""
prev=""
for a in "$@"; do
    [ "$prev" = "-p" ] && port=$a
    prev=$a
done
echo "$*" >> "$STUB/calls"
case "$*" in
    *"--cluster create"*)
        for f in "$STUB"/[0-9]*; do echo member-ok > "$f"; done
        exit 0 ;;
    *"--cluster add-node"*)
        new=${3##*:}
        echo member-ok > "$STUB/$new"
        exit 0 ;;
esac
state=$(cat "$STUB/$port")
case "$*" in
    *" ping") echo PONG ;;
    *"cluster info")
        fmt='cluster_state:%s\r\ncluster_slots_assigned:%s\r\ncluster_known_nodes:%s\r\n'
        case $state in
            blank) printf "$fmt" fail 0 1 ;;
            member-ok) printf "$fmt" ok 16384 6 ;;
            member-fail) printf "$fmt" fail 0 6 ;;
        esac ;;
    *"cluster nodes")
        printf 'aaa 127.0.0.1:1@2 myself,master - 0 0 1 connected 0-16383\r\n'
        for r in r1 r2 r3; do printf '%s 127.0.0.1:3@4 slave aaa 0 0 1 connected\r\n' $r; done
        printf 'ghost :0@0 slave,fail,noaddr aaa 0 0 1 disconnected\r\n' ;;
    *"cluster forget"*) echo OK ;;
esac
"""


@pytest.fixture
def stub(tmp_path: Path) -> Path:
    cli = tmp_path / "redis-cli"
    cli.write_text(STUB_CLI)
    cli.chmod(cli.stat().st_mode | stat.S_IXUSR)
    return tmp_path


def run_bootstrap(stub: Path, states: list[str]) -> tuple[int, str, list[str]]:
    spec = local_spec()
    for node, state in zip(spec.nodes, states, strict=True):
        (stub / str(node.port)).write_text(state + "\n")
    calls = stub / "calls"
    calls.write_text("")
    script = stub / "bootstrap.sh"
    script.write_text(cluster_bootstrap_sh(spec, redis_cli=str(stub / "redis-cli"), wait_seconds=2))
    env = {**os.environ, "STUB": str(stub)}
    env.pop("REDIS_CLI", None)
    proc = subprocess.run(["sh", str(script)], env=env, capture_output=True, text=True, timeout=30)
    return proc.returncode, proc.stderr, calls.read_text().splitlines()


def test_bootstrap_creates_once_then_is_a_no_op(stub: Path) -> None:
    rc, err, calls = run_bootstrap(stub, ["blank"] * 6)
    assert rc == 0, err
    # The masters, then each replica of its planned master (spec.replica_of()).
    assert [c for c in calls if "--cluster" in c] == [
        "--cluster create 127.0.0.1:17001 127.0.0.1:17002 127.0.0.1:17003 "
        "--cluster-replicas 0 --cluster-yes",
        "--cluster add-node 127.0.0.1:17004 127.0.0.1:17002 --cluster-slave "
        "--cluster-master-id aaa",
        "--cluster add-node 127.0.0.1:17005 127.0.0.1:17003 --cluster-slave "
        "--cluster-master-id aaa",
        "--cluster add-node 127.0.0.1:17006 127.0.0.1:17001 --cluster-slave "
        "--cluster-master-id aaa",
    ]
    rc, err, calls = run_bootstrap(stub, ["member-ok"] * 6)
    assert rc == 0, err
    assert "already formed" in err
    assert not [c for c in calls if "--cluster" in c]


def test_bootstrap_joins_a_blank_node_as_replica_and_forgets_the_ghost(stub: Path) -> None:
    rc, err, calls = run_bootstrap(stub, ["member-ok"] * 5 + ["blank"])
    assert rc == 0, err
    # Back into its planned shard, whose master is not in its zone.
    assert [c for c in calls if "--cluster" in c] == [
        "--cluster add-node 127.0.0.1:17006 127.0.0.1:17001 --cluster-slave --cluster-master-id aaa"
    ]
    assert len([c for c in calls if c.endswith("cluster forget ghost")]) == 6


def test_bootstrap_refuses_a_half_formed_cluster(stub: Path) -> None:
    rc, err, calls = run_bootstrap(stub, ["member-fail"] * 5 + ["blank"])
    assert rc == 1
    assert "half-formed" in err
    assert not [c for c in calls if "--cluster" in c]


def test_bootstrap_times_out_when_the_cluster_never_gets_ok(stub: Path) -> None:
    rc, err, _ = run_bootstrap(stub, ["member-fail"] * 6)
    assert rc == 1
    assert "not cluster_state:ok" in err
