"""Redis Cluster configuration: ``redis.conf`` per node, the auth include and the bootstrap script.

Pure functions, no I/O. The Kubernetes stack puts the output in a ConfigMap (the auth include
in a Secret); the local platform writes it to a temp dir and runs ``redis-server <file>`` and
``sh <bootstrap>``. Hosts, ports, dirs and counts are parameters: nothing here knows which
environment it renders for.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# Eviction policies Redis 7.0 accepts; checked so a typo fails at render time, not at pod start.
MAXMEMORY_POLICIES = frozenset(
    {
        "volatile-lru",
        "allkeys-lru",
        "volatile-lfu",
        "allkeys-lfu",
        "volatile-random",
        "allkeys-random",
        "volatile-ttl",
        "noeviction",
    }
)

# Environment variable redis-cli reads the password from (keeps it off the command line / `ps`).
REDISCLI_AUTH_ENV = "REDISCLI_AUTH"

_HOST_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$|^[0-9A-Fa-f:]+$")
_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
_LOOPBACK = frozenset({"127.0.0.1", "::1", "-::1"})


def _check_port(port: int, what: str) -> None:
    if not 1 <= port <= 65535:
        raise ValueError(f"{what} must be in 1..65535, got {port}")


@dataclass(frozen=True)
class RedisNode:
    """One Redis server.

    ``host`` is how clients and the bootstrap reach it: a stable DNS name in Kubernetes
    (``redis-0.redis.cache.svc.cluster.local``), ``127.0.0.1`` locally.
    """

    name: str
    host: str
    port: int = 6379
    # Cluster bus port; None means Redis' convention, port + 10000.
    bus_port: int | None = None
    # Where it runs: a replica is never in its master's zone (RedisClusterSpec.replica_of).
    zone: str | None = None

    def __post_init__(self) -> None:
        if not _NAME_RE.match(self.name):
            raise ValueError(f"redis node name {self.name!r} must be a DNS label")
        if not _HOST_RE.match(self.host):
            raise ValueError(f"redis node host {self.host!r} is not a hostname or IP")
        _check_port(self.port, f"redis node {self.name} port")
        _check_port(self.cluster_bus_port, f"redis node {self.name} bus port")

    @property
    def cluster_bus_port(self) -> int:
        return self.bus_port if self.bus_port is not None else self.port + 10000

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class RedisClusterSpec:
    """Settings shared by every node of one cluster."""

    nodes: tuple[RedisNode, ...]
    replicas_per_master: int = 1
    maxmemory_mb: int = 1024
    # volatile-lru, deliberately. The cluster holds sessions (TTL 24 h), carts (TTL 7 d), cache
    # entries (TTL 15-30 min) *and* streams / idempotency keys that carry no TTL. Under memory
    # pressure the least recently used *expiring* keys go (cold cache entries first, then
    # abandoned sessions and carts, which the database backs); keys without a TTL are never
    # evicted. allkeys-lru could silently drop a stream (lost events); noeviction would turn a
    # full cache into failed writes. If only TTL-less keys remain, writes fail with OOM: loud,
    # and the right signal to add memory rather than lose events.
    maxmemory_policy: str = "volatile-lru"
    # Failure detection time: a master unreachable this long is failed over to its replica.
    node_timeout_ms: int = 5000
    # Redis 7: nodes announce `host` and MOVED/CLUSTER SLOTS carry it, so clients follow stable
    # DNS names instead of pod IPs that change on restart. Kubernetes: True; locally: False.
    announce_hostnames: bool = False
    # "no": when one shard has lost master and replica, the other shards keep serving their
    # slots. For sessions/carts/cache, partial availability beats a full outage.
    require_full_coverage: bool = False

    def __post_init__(self) -> None:
        if self.replicas_per_master < 0:
            raise ValueError("replicas_per_master must be >= 0")
        group = self.replicas_per_master + 1
        if len(self.nodes) % group or len(self.nodes) // group < 3:
            raise ValueError(
                f"{len(self.nodes)} nodes cannot form >= 3 masters with "
                f"{self.replicas_per_master} replica(s) each (Redis Cluster needs 3 masters)"
            )
        if len({n.name for n in self.nodes}) != len(self.nodes):
            raise ValueError("redis node names must be unique")
        if len({n.endpoint for n in self.nodes}) != len(self.nodes):
            raise ValueError("redis node host:port endpoints must be unique")
        if self.maxmemory_mb <= 0:
            raise ValueError("maxmemory_mb must be > 0 (an unbounded cache grows until OOM-kill)")
        if self.maxmemory_policy not in MAXMEMORY_POLICIES:
            raise ValueError(f"unknown maxmemory_policy {self.maxmemory_policy!r}")
        if self.node_timeout_ms < 100:
            raise ValueError("node_timeout_ms must be >= 100")
        self.replica_of()  # a layout with a replica in its master's zone is refused here

    @property
    def masters(self) -> int:
        return len(self.nodes) // (self.replicas_per_master + 1)

    def replica_of(self) -> dict[str, str]:
        """Replica name -> master name, as the bootstrap forms the cluster: the first
        ``masters`` nodes are the masters, and each other node replicates a master in
        another zone (the next one round the ring, skipping its own zone), so losing a zone
        leaves every shard a copy. Nodes without a zone are zones of their own; in a
        single-zone stack (dev) zones cannot matter and only the ring does."""
        masters, replicas = self.nodes[: self.masters], self.nodes[self.masters :]
        zoned = len({n.zone for n in self.nodes}) > 1
        load = dict.fromkeys((m.name for m in masters), 0)
        layout = {}
        for k, replica in enumerate(replicas):
            ring = masters[(k + 1) % len(masters) :] + masters[: (k + 1) % len(masters)]
            choices = [
                m
                for m in ring
                if (not zoned or replica.zone is None or m.zone != replica.zone)
                and load[m.name] < self.replicas_per_master
            ]
            if not choices:
                raise ValueError(
                    f"redis node {replica.name} ({replica.zone}): no master outside its zone "
                    "has room for a replica; spread the nodes over more zones"
                )
            load[choices[0].name] += 1
            layout[replica.name] = choices[0].name
        return layout


def _redis_quote(value: str) -> str:
    """Quote a value for redis.conf (sdssplitargs syntax: double quotes, backslash escapes)."""
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ValueError("control characters are not allowed in redis.conf values")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def redis_auth_conf(password: str) -> str:
    """The include file holding the password: goes into a Secret (or a 0600 file locally).

    Both ``requirepass`` (clients) and ``masterauth`` (a replica authenticating to its master,
    needed after every failover) use the same password. This is the only rendered text that
    contains it; ``redis_conf`` only references the file by path.
    """
    if len(password) < 16:
        raise ValueError("redis password must be at least 16 characters")
    quoted = _redis_quote(password)
    return f"requirepass {quoted}\nmasterauth {quoted}\n"


def redis_conf(
    node: RedisNode,
    spec: RedisClusterSpec,
    data_dir: str,
    *,
    bind: Sequence[str] = ("127.0.0.1", "-::1"),
    auth_include: str | None = None,
    logfile: str = "",
) -> str:
    """Render ``redis.conf`` for one cluster node.

    ``data_dir`` holds AOF files and ``nodes.conf`` (a PersistentVolume in Kubernetes).
    ``bind`` defaults to loopback; Kubernetes passes ``("0.0.0.0",)``. ``auth_include`` is
    the path of the file rendered by :func:`redis_auth_conf` (mounted from a Secret): the
    password never sits in this ConfigMap, and unlike ``--requirepass`` on the command line
    it does not show in ``ps``. Redis refuses to start if that file is missing: fails closed.
    ``logfile=""`` logs to stdout (container logs / the local runner's capture).
    """
    if node not in spec.nodes:
        raise ValueError(f"node {node.name} is not part of the cluster spec")
    if not bind:
        raise ValueError("bind must list at least one address")
    # Protected mode does not apply once `bind` is explicit, so an unauthenticated node on a
    # non-loopback address would be open to anything that can reach it: refuse to render that.
    if auth_include is None and not set(bind) <= _LOOPBACK:
        raise ValueError("a redis node bound beyond loopback needs auth_include (a password)")

    lines = [
        f"# Redis Cluster node {node.name} ({node.endpoint}); rendered by components/conf/redis.py",
        f"bind {' '.join(bind)}",
        # Refuses non-loopback clients whenever no password is set: a second safety net.
        "protected-mode yes",
        f"port {node.port}",
        "tcp-backlog 511",
        "timeout 0",
        "tcp-keepalive 60",
        # Foreground + stdout: Kubernetes and the local runner supervise and collect logs.
        "daemonize no",
        "supervised no",
        f"logfile {_redis_quote(logfile)}",
        "loglevel notice",
        f"dir {_redis_quote(data_dir)}",
        "",
        "# Cluster",
        "cluster-enabled yes",
        # Relative to `dir`; Redis writes it, so it must live on the persistent volume.
        "cluster-config-file nodes.conf",
        f"cluster-node-timeout {spec.node_timeout_ms}",
        f"cluster-port {node.cluster_bus_port}",
        f"cluster-require-full-coverage {'yes' if spec.require_full_coverage else 'no'}",
        # A replica of a dead master may migrate to an orphaned master: keeps every shard covered.
        "cluster-allow-replica-migration yes",
        "cluster-migration-barrier 1",
    ]
    if spec.announce_hostnames:
        lines += [
            f"cluster-announce-hostname {node.host}",
            "cluster-preferred-endpoint-type hostname",
        ]
    else:
        lines.append("cluster-preferred-endpoint-type ip")
    lines += [
        "",
        "# Persistence: AOF fsync'd every second (at most ~1 s of writes lost on a crash).",
        "appendonly yes",
        "appendfsync everysec",
        "aof-use-rdb-preamble yes",
        # No periodic RDB: AOF is the durability, backups take `redis-cli --rdb` on demand, and
        # each extra fork costs copy-on-write memory on nodes sized to their maxmemory.
        'save ""',
        "",
        "# Memory",
        f"maxmemory {spec.maxmemory_mb}mb",
        f"maxmemory-policy {spec.maxmemory_policy}",
        "maxmemory-samples 5",
        # Free big values (carts, streams) in a background thread: no latency spikes.
        "lazyfree-lazy-eviction yes",
        "lazyfree-lazy-expire yes",
        "lazyfree-lazy-user-del yes",
        "replica-lazy-flush yes",
        "",
        "# Replication",
        "replica-read-only yes",
        "replica-serve-stale-data yes",
        "repl-diskless-sync yes",
        "",
        "# Hardening (Redis 7 defaults, stated so a later edit is a visible diff)",
        "enable-protected-configs no",
        "enable-debug-command no",
        "enable-module-command no",
    ]
    if auth_include is not None:
        lines += [
            "",
            "# requirepass / masterauth live in a Secret-backed file, never in this ConfigMap.",
            f"include {_redis_quote(auth_include)}",
        ]
    return "\n".join(lines) + "\n"


def cluster_bootstrap_sh(
    spec: RedisClusterSpec,
    *,
    redis_cli: str = "redis-cli",
    wait_seconds: int = 300,
    resolve_hosts: bool = False,
) -> str:
    """POSIX sh script that forms the cluster once and is a no-op afterwards.

    Used by the Kubernetes bootstrap Job and by the local runner. The password comes from the
    ``REDISCLI_AUTH`` environment variable (unset: no auth), never from the script; a
    ``REDIS_CLI`` environment variable overrides the ``redis_cli`` path at run time. Steps:

    1. wait until every node answers PING (``wait_seconds`` each, then exit 1);
    2. if no node knows another and none has slots: ``redis-cli --cluster create``;
       if a healthy cluster exists and some nodes are blank (e.g. a pod that lost its volume):
       add each blank node as a replica; if the cluster is half-formed: exit 1 and say so
       (an operator runs ``redis-cli --cluster check``; guessing could lose slots);
    3. wait until every node reports ``cluster_state:ok``;
    4. after a create/join of its own: wait until every node's view lists all replicas
       (roles travel by gossip and lag ``cluster_state:ok`` by a second or two).

    ``resolve_hosts``: CLUSTER MEET (behind ``--cluster create``/``add-node``) accepts IPs
    only. redis-cli 7.0 resolves names itself (redis#10436; "localhost" verified here), but
    failures with container DNS names were reported (redis#11148), so Kubernetes sets this and
    the script resolves each name with ``getent ahostsv4`` first. Names must resolve before the
    pods are ready (headless Service with ``publishNotReadyAddresses``). Clients still get
    hostnames in MOVED / CLUSTER SLOTS when ``spec.announce_hostnames`` is set.
    The blank-node join also ``CLUSTER FORGET``s failed, slot-less entries (the lost node's
    old identity); it never touches a node that holds slots.
    """
    if wait_seconds < 1:
        raise ValueError("wait_seconds must be >= 1")
    endpoints = " ".join(n.endpoint for n in spec.nodes)
    by_name = {n.name: n for n in spec.nodes}
    pairs = " ".join(
        f"{by_name[replica].endpoint}={by_name[master].endpoint}"
        for replica, master in spec.replica_of().items()
    )
    return _BOOTSTRAP_TEMPLATE.format(
        redis_cli=shlex.quote(redis_cli),
        nodes=shlex.quote(endpoints),
        masters=shlex.quote(" ".join(n.endpoint for n in spec.nodes[: spec.masters])),
        pairs=shlex.quote(pairs),
        count=len(spec.nodes),
        replica_count=len(spec.nodes) - spec.masters,
        wait=wait_seconds,
        resolve=1 if resolve_hosts else 0,
    )


# Braces doubled for str.format. Kept POSIX (dash / busybox ash): no arrays, no [[ ]].
_BOOTSTRAP_TEMPLATE = """\
#!/bin/sh
# Redis Cluster bootstrap, rendered by components/conf/redis.py. Idempotent: forms the
# cluster once; on a formed cluster it only checks health. Password: REDISCLI_AUTH env var.
set -eu

REDIS_CLI=${{REDIS_CLI:-{redis_cli}}}
NODES={nodes}
# The masters, and each replica's master (replica=master): never in one zone.
MASTERS={masters}
PAIRS={pairs}
NODE_COUNT={count}
REPLICA_COUNT={replica_count}
WAIT_SECONDS={wait}
RESOLVE_HOSTS={resolve}

log() {{ printf 'redis-bootstrap: %s\\n' "$*" >&2; }}
die() {{ log "ERROR: $*"; exit 1; }}

# cli HOST:PORT ARGS... (host may be a DNS name; the port is after the last colon)
cli() {{
    ep=$1
    shift
    "$REDIS_CLI" -h "${{ep%:*}}" -p "${{ep##*:}}" "$@"
}}

# info_field HOST:PORT FIELD -> value of FIELD in CLUSTER INFO (empty if unreachable)
info_field() {{
    cli "$1" cluster info 2>/dev/null | tr -d '\\r' | sed -n "s/^$2://p"
}}

# addr HOST:PORT -> IP:PORT when RESOLVE_HOSTS=1 (CLUSTER MEET in 7.0 takes IPs only)
addr() {{
    if [ "$RESOLVE_HOSTS" != 1 ]; then
        printf '%s' "$1"
        return 0
    fi
    ip=$(getent ahostsv4 "${{1%:*}}" | sed -n '1s/[[:space:]].*//p')
    [ -n "$ip" ] || {{ log "cannot resolve ${{1%:*}}"; return 1; }}
    printf '%s:%s' "$ip" "${{1##*:}}"
}}

# 1. Every node answers PING.
for ep in $NODES; do
    i=0
    while :; do
        reply=$(cli "$ep" ping 2>&1 || true)
        case $reply in
            PONG) break ;;
            *NOAUTH*|*WRONGPASS*|*"invalid password"*)
                die "$ep rejected our credentials (is REDISCLI_AUTH set?): $reply" ;;
        esac
        i=$((i + 1))
        [ "$i" -lt "$WAIT_SECONDS" ] || die "$ep did not answer PING in ${{WAIT_SECONDS}}s: $reply"
        sleep 1
    done
done
log "all $NODE_COUNT nodes answer PING"

# 2. Classify nodes: blank (knows only itself, no slots) or member.
blank=""
members=""
changed=0
for ep in $NODES; do
    known=$(info_field "$ep" cluster_known_nodes)
    slots=$(info_field "$ep" cluster_slots_assigned)
    [ -n "$known" ] || die "$ep does not answer CLUSTER INFO (cluster-enabled no?)"
    if [ "$known" = 1 ] && [ "$slots" = 0 ]; then
        blank="$blank $ep"
    else
        members="$members $ep"
    fi
done

# master_id_for HOST:PORT -> the id of the node a replica planned for HOST:PORT's shard
# follows: that node's own id while it is a master, else its master's (after a failover).
master_id_for() {{
    cli "$1" cluster nodes | tr -d '\r' | awk '$3 ~ /myself/ {{
        if ($3 ~ /master/) print $1; else print $4 }}'
}}

# add_replica REPLICA MASTER: REPLICA joins as a replica of MASTER's shard.
add_replica() {{
    a=$(addr "$1") || die "cannot resolve $1"
    m=$(addr "$2") || die "cannot resolve $2"
    id=$(master_id_for "$2")
    [ -n "$id" ] || die "$2 does not say which master its shard has"
    log "adding $1 as a replica of $2's shard (master $id)"
    "$REDIS_CLI" --cluster add-node "$a" "$m" --cluster-slave --cluster-master-id "$id"
}}

# planned_master REPLICA -> its master in PAIRS (empty if REPLICA is a master)
planned_master() {{
    for pair in $PAIRS; do
        [ "${{pair%%=*}}" = "$1" ] && {{ printf '%s' "${{pair#*=}}"; return 0; }}
    done
    return 0
}}

if [ -z "$members" ]; then
    addrs=""
    for ep in $MASTERS; do
        a=$(addr "$ep") || die "cannot resolve $ep"
        addrs="$addrs $a"
    done
    log "creating cluster:$addrs, then each replica in another zone than its master"
    # shellcheck disable=SC2086  # word splitting of the address list is intended
    "$REDIS_CLI" --cluster create $addrs --cluster-replicas 0 --cluster-yes
    for pair in $PAIRS; do
        add_replica "${{pair%%=*}}" "${{pair#*=}}"
    done
    changed=1
elif [ -n "$blank" ]; then
    seed=""
    for ep in $members; do
        if [ "$(info_field "$ep" cluster_state)" = ok ]; then
            seed=$ep
            break
        fi
    done
    [ -n "$seed" ] || die "cluster half-formed (members:$members; blank:$blank);" \\
        "inspect with: redis-cli --cluster check <node>"
    seed_addr=$(addr "$seed") || die "cannot resolve $seed"
    for ep in $blank; do
        planned=$(planned_master "$ep")
        if [ -n "$planned" ]; then  # back into its planned shard: its master's zone is not its own
            add_replica "$ep" "$planned"
        else
            # A planned master that lost its data: its replica was promoted; it replicates
            # that shard again (the pair keeps its two zones).
            a=$(addr "$ep") || die "cannot resolve $ep"
            for pair in $PAIRS; do
                [ "${{pair#*=}}" = "$ep" ] || continue
                id=$(master_id_for "${{pair%%=*}}")
                log "adding blank node $ep as a replica of its shard (master $id)"
                "$REDIS_CLI" --cluster add-node "$a" "$seed_addr" --cluster-slave \
                    --cluster-master-id "$id"
                break
            done
        fi
    done
    changed=1
    # A blank node usually replaces one that lost its data: its old identity lingers as a
    # failed, slot-less entry. Forget those on every node (within FORGET's 60 s window).
    ghosts=$(cli "$seed" cluster nodes | tr -d '\\r' |
        awk '$3 ~ /(fail|noaddr)/ && $3 !~ /fail\\?/ && NF < 9 {{ print $1 }}')
    for id in $ghosts; do
        log "forgetting failed node $id"
        for ep in $NODES; do
            cli "$ep" cluster forget "$id" >/dev/null 2>&1 || true
        done
    done
else
    log "cluster already formed: nothing to create"
fi

# 3. Every node reports cluster_state:ok.
for ep in $NODES; do
    i=0
    until [ "$(info_field "$ep" cluster_state)" = ok ]; do
        i=$((i + 1))
        [ "$i" -lt "$WAIT_SECONDS" ] || die "$ep not cluster_state:ok after ${{WAIT_SECONDS}}s"
        sleep 1
    done
done
log "cluster_state:ok on all $NODE_COUNT nodes"

# 4. After a change of ours, wait until every node's view has all replicas: cluster_state:ok
# comes as soon as slots are covered, while replica roles still travel by gossip. (Not on a
# no-op run: a replica briefly down during a rollout must not fail the job.)
if [ "$changed" = 1 ]; then
    for ep in $NODES; do
        i=0
        until [ "$(cli "$ep" cluster nodes 2>/dev/null | tr -d '\\r' |
            awk '$3 ~ /slave/ && $3 !~ /fail/ {{ n++ }} END {{ print n + 0 }}')" \\
            -ge "$REPLICA_COUNT" ]; do
            i=$((i + 1))
            [ "$i" -lt "$WAIT_SECONDS" ] || die "$ep does not see $REPLICA_COUNT replicas"
            sleep 1
        done
    done
    log "every node sees $REPLICA_COUNT replicas"
fi
"""


def exporter_passwords(addresses: Iterable[str], password: str) -> str:
    """redis_exporter's password file (``-redis.password-file``): each node's
    ``redis://host:port`` -> its password (one for the whole cluster here)."""
    return json.dumps({f"redis://{address}": password for address in addresses})
