"""The failover scripts and the PostgreSQL entrypoint, as POSIX sh.

Every script text is a constant: the GKE containers and the local platform run the very same
bytes. What differs between them reaches the scripts as environment variables (names below,
values from ``postgres_env`` / ``failover_env``) and pgpool's ``%`` arguments. Passwords come
only from the files named by ``PGPASSFILE`` / ``PCPPASSFILE``.

The scripts act over SQL only: a pgpool pod cannot ssh into PostgreSQL pods. Promotion is
``pg_promote()``; re-pointing a standby is ``ALTER SYSTEM SET primary_conninfo`` + reload
(PostgreSQL >= 13); fencing a still-running old primary is ``default_transaction_read_only``
+ terminating its client sessions. Once its standbys follow the new primary, the fenced node
also cannot acknowledge a commit any more, because ``synchronous_standby_names`` waits for a
standby it no longer has.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from components.conf.postgres import (
    PgMember,
    PgTopology,
    PgTuning,
    PgUsers,
    WalArchive,
    check_token,
    pg_hba_conf,
    pgpass,
    postgresql_conf,
    synchronous_standby_names,
)

FAILOVER_SH = "failover.sh"
FOLLOW_PRIMARY_SH = "follow_primary.sh"
POSTGRES_START_SH = "postgres-start.sh"

# pgpool placeholders each script expects, in order (see the scripts' argument parsing).
FAILOVER_ARGS = "%d %h %p %P %m"
FOLLOW_PRIMARY_ARGS = "%d %h %p %m %H %r"


def members_value(topology: PgTopology) -> str:
    """``PG_MEMBERS``: ``name=host:port,...`` in pgpool node-id order."""
    return ",".join(f"{m.name}={m.address}" for m in topology.members)


def quorums_value(topology: PgTopology) -> str:
    """``PG_QUORUMS``: ``name:n:standby/standby,...``, for each member the quorum a commit
    on it waits for when it is primary (``ANY n`` of those standbys)."""
    n = topology.synchronous_standbys
    return ",".join(
        f"{m.name}:{n}:{'/'.join(q.name for q in topology.quorum(m))}" for m in topology.members
    )


def _common_env(topology: PgTopology, users: PgUsers, pgpassfile: str) -> dict[str, str]:
    return {
        "PG_MEMBERS": members_value(topology),
        "PG_BINDIR": topology.bin_dir,
        "PG_SUPERUSER": users.superuser,
        "PG_REPLICATION_USER": users.replication,
        "PGPASSFILE": check_token(pgpassfile, "pgpass file"),
    }


def postgres_env(
    topology: PgTopology, users: PgUsers, member: PgMember, pgpassfile: str
) -> dict[str, str]:
    """Environment of ``postgres-start.sh`` for one member (k8s: one StatefulSet per member)."""
    if member not in topology.members:
        raise ValueError(f"{member.name} is not a member of the topology")
    return _common_env(topology, users, pgpassfile) | {
        "PG_MEMBER": member.name,
        "PG_SYNCHRONOUS_STANDBY_NAMES": synchronous_standby_names(topology, member),
        "PGDATA": topology.data_dir_of(member),
        "PG_CONF_DIR": topology.conf_dir,
        "PG_SOCKET_DIR": topology.socket_dir,
        "PG_APP_USER": users.app,
        "PG_HEALTHCHECK_USER": users.healthcheck,
        "PG_APP_DATABASE": users.app_database,
    }


def failover_env(
    topology: PgTopology,
    users: PgUsers,
    pgpassfile: str,
    pcp_host: str,
    pcp_port: int,
    pcp_user: str,
    pcppassfile: str,
    pgpool_bin_dir: str | None = None,
) -> dict[str, str]:
    """Environment of failover.sh / follow_primary.sh; pgpool renders it into its commands.

    The pcp settings let follow_primary.sh re-attach the standbys it re-pointed;
    ``pcp_host`` may be pgpool's pcp socket directory.
    """
    env = _common_env(topology, users, pgpassfile) | {
        "PG_QUORUMS": quorums_value(topology),
        "PCP_HOST": check_token(pcp_host, "pcp host"),
        "PCP_PORT": str(pcp_port),
        "PCP_USER": check_token(pcp_user, "pcp user"),
        "PCPPASSFILE": check_token(pcppassfile, "pcppass file"),
    }
    if pgpool_bin_dir:
        env["PGPOOL_BINDIR"] = check_token(pgpool_bin_dir, "pgpool bin dir")
    return env


_PRELUDE = r"""
set -eu

PROG=${0##*/}
log() { printf '%s %s[%s]: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$PROG" "$$" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Tools come from PG_BINDIR when set, else from PATH.
pgbin() { printf '%s' "${PG_BINDIR:+$PG_BINDIR/}$1"; }

# libpq and pcp ignore a password file that group or others may read, and Kubernetes secret
# volumes with fsGroup are group-readable: hand them a private copy in that case.
# $1: file, $2: where to put the copy. Prints the path to use.
private_passfile() {
    case "$(ls -lnL "$1")" in
        -rw-------* | -r--------*) printf '%s' "$1" ;;
        *) (umask 077 && cat "$1" > "$2") && printf '%s' "$2" ;;
    esac
}

export PGCONNECT_TIMEOUT="${PGCONNECT_TIMEOUT:-3}"
: "${PG_MEMBERS:?name=host:port,... of every member}"
: "${PG_SUPERUSER:?}" "${PG_REPLICATION_USER:?}" "${PGPASSFILE:?}"

# One "name host port" line per member, in pgpool node-id order.
members() {
    printf '%s\n' "$PG_MEMBERS" | tr ',' '\n' | sed -n 's/^\([^=]*\)=\(.*\):\([0-9]*\)$/\1 \2 \3/p'
}
member_name() { members | awk -v h="$1" -v p="$2" '$2 == h && $3 == p { print $1 }'; }

# psql_to HOST PORT PSQL-ARGS... as the superuser: unaligned tuples-only output, non-zero
# exit on any error.
psql_to() {
    _host=$1 _port=$2
    shift 2
    "$(pgbin psql)" -X -q -A -t -v ON_ERROR_STOP=1 -h "$_host" -p "$_port" \
        -U "$PG_SUPERUSER" -d postgres "$@"
}

# sql HOST PORT STATEMENT...: one -c per statement, because ALTER SYSTEM refuses to share
# the implicit transaction of a multi-statement string.
sql() {
    _h=$1 _p=$2
    shift 2
    _n=$#
    for _stmt do set -- "$@" -c "$_stmt"; done
    shift "$_n"
    psql_to "$_h" "$_p" "$@" </dev/null
}

# primary | fenced | standby, or failure when the server does not answer.
role_of() {
    sql "$1" "$2" "SELECT CASE WHEN pg_is_in_recovery() THEN 'standby'
        WHEN current_setting('default_transaction_read_only')::bool THEN 'fenced'
        ELSE 'primary' END" 2>/dev/null
}

# Make a running ex-primary refuse new writes and drop its sessions, so clients that still
# reach it directly fail fast instead of writing into a timeline that is about to be lost.
fence() {
    sql "$1" "$2" \
        "ALTER SYSTEM SET default_transaction_read_only = on" \
        "SELECT pg_reload_conf()" \
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
         WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()" >/dev/null
}

conninfo_to() {  # HOST PORT APPLICATION_NAME: how a standby reaches its primary (no password:
    # the walreceiver reads the server's PGPASSFILE)
    printf 'host=%s port=%s user=%s application_name=%s connect_timeout=5' \
        "$1" "$2" "$PG_REPLICATION_USER" "$3"
}
"""

_PGPOOL_PRELUDE = r"""
tmpdir=$(mktemp -d)
trap 'rm -rf "$tmpdir"' EXIT
PGPASSFILE=$(private_passfile "$PGPASSFILE" "$tmpdir/pgpass")
export PGPASSFILE
"""

_FAILOVER_BODY = r"""
# Called by pgpool (failover_command) with: %d %h %p %P %m
failed_id=$1 failed_host=$2 failed_port=$3 old_primary_id=$4 proposed_id=$5
log "node $failed_id ($failed_host:$failed_port) is down; old primary id $old_primary_id"

if [ "$failed_id" != "$old_primary_id" ]; then
    log "a standby left; pgpool detaches it, nothing to promote"
    exit 0
fi

if [ "$(role_of "$failed_host" "$failed_port" || true)" = primary ]; then
    log "old primary still answers: fencing it before promoting another node"
    fence "$failed_host" "$failed_port" || log "fencing failed; continuing"
fi

# Promote the standby holding the most WAL, not pgpool's proposal (lowest live node id):
# with ANY n synchronous replication only the most advanced standby is sure to hold every
# acknowledged commit. Ties go to pgpool's proposal.
# Every acknowledged commit is on n of the failed primary's quorum (its standbys in other
# zones, PG_QUORUMS): once q - n + 1 of its q answer, the most advanced of them holds them
# all. With fewer, no standby is known to, and promoting one could lose acknowledged orders.
failed_name=$(members | awk -v i="$failed_id" 'NR == i + 1 { print $1 }')
quorum=$(printf '%s\n' "${PG_QUORUMS-}" | tr ',' '\n' | awk -F: -v n="$failed_name" '$1 == n')
needed=$(printf '%s' "$quorum" | cut -d: -f2)
quorum_names=" $(printf '%s' "$quorum" | cut -d: -f3 | tr '/' ' ') "
quorum_size=$(printf '%s' "$quorum_names" | wc -w)
answered=0 quorum_lsn=-1
best_id='' best_host='' best_port='' best_lsn=-1 id=-1
while read -r name host port; do
    id=$((id + 1))
    [ "$id" = "$failed_id" ] && continue
    state=$(sql "$host" "$port" "SELECT CASE WHEN pg_is_in_recovery() THEN 'standby '
            || pg_wal_lsn_diff(COALESCE(GREATEST(pg_last_wal_receive_lsn(),
                                                 pg_last_wal_replay_lsn()), '0/0'), '0/0')::bigint
        WHEN current_setting('default_transaction_read_only')::bool THEN 'fenced'
        ELSE 'primary' END") || {
        log "$name ($host:$port) does not answer; skipped"
        continue
    }
    case "$state" in
        primary)
            log "$name ($host:$port) is already a writable primary; nothing to promote"
            exit 0 ;;
        fenced)
            # An old primary fenced by an earlier failover: its timeline is a dead end.
            log "$name ($host:$port) is a fenced old primary; never promoted"
            ;;
        standby\ *)
            lsn=${state#standby }
            log "$name ($host:$port) has WAL up to byte $lsn"
            case "$quorum_names" in
                *" $name "*)
                    answered=$((answered + 1))
                    [ "$lsn" -le "$quorum_lsn" ] || quorum_lsn=$lsn ;;
            esac
            if [ "$lsn" -gt "$best_lsn" ] \
                || { [ "$lsn" -eq "$best_lsn" ] && [ "$id" = "$proposed_id" ]; }; then
                best_id=$id best_host=$host best_port=$port best_lsn=$lsn
            fi ;;
    esac
done <<EOF
$(members)
EOF

[ -n "$best_id" ] || die "no standby answers; the cluster has no primary"
if [ "${needed:-0}" -gt 0 ]; then
    must=$((quorum_size - needed + 1))
    [ "$answered" -ge "$must" ] || die "only $answered of the $quorum_size standbys that" \
        "acknowledge $failed_name's commits answer, $must must: none is known to hold every" \
        "acknowledged commit, so none is promoted (bring one back, or promote by hand)"
    [ "$best_lsn" -ge "$quorum_lsn" ] || die "the chosen standby is behind the quorum"
    log "$answered of $failed_name's $quorum_size quorum standbys answer: node $best_id" \
        "holds every acknowledged commit"
fi
log "promoting node $best_id ($best_host:$best_port)"
# A node fenced in an earlier failover carries read-only in postgresql.auto.conf: clear it.
promoted=$(sql "$best_host" "$best_port" \
    "ALTER SYSTEM RESET default_transaction_read_only" \
    "SELECT pg_reload_conf()" \
    "SELECT pg_promote(true, 60)" | tail -n 1)
[ "$promoted" = t ] || die "pg_promote on $best_host:$best_port did not complete"
log "node $best_id ($best_host:$best_port) is the new primary"
"""

_FOLLOW_PRIMARY_BODY = r"""
# Called by pgpool (follow_primary_command) for every detached node with: %d %h %p %m %H %r
node_id=$1 node_host=$2 node_port=$3 new_id=$4 new_host=$5 new_port=$6
: "${PCP_HOST:?}" "${PCP_PORT:?}" "${PCP_USER:?}" "${PCPPASSFILE:?}"
PCPPASSFILE=$(private_passfile "$PCPPASSFILE" "$tmpdir/pcppass")
export PCPPASSFILE

[ "$node_id" = "$new_id" ] && exit 0
role=$(role_of "$node_host" "$node_port") || {
    log "node $node_id ($node_host:$node_port) does not answer; it stays detached until" \
        "postgres-start.sh rejoins it and it is attached with pcp_attach_node"
    exit 0
}
if [ "$role" != standby ]; then
    # Still a primary: the one that failed over but is alive. Never attach it (split brain).
    log "node $node_id ($node_host:$node_port) answers as $role, not standby: fenced, detached"
    fence "$node_host" "$node_port" || log "fencing failed"
    exit 0
fi

name=$(member_name "$node_host" "$node_port")
[ -n "$name" ] || die "$node_host:$node_port is not in PG_MEMBERS"
log "re-pointing $name ($node_host:$node_port) at node $new_id ($new_host:$new_port)"
sql "$node_host" "$node_port" \
    "ALTER SYSTEM SET primary_conninfo = '$(conninfo_to "$new_host" "$new_port" "$name")'" \
    "SELECT pg_reload_conf()" >/dev/null

# Attach only once it really streams from the new primary, so pgpool never balances reads
# onto a standby stuck on the old timeline.
waited=0
until [ "$(sql "$node_host" "$node_port" "SELECT status FROM pg_stat_wal_receiver
          WHERE sender_host = '$new_host' AND sender_port = $new_port" 2>/dev/null)" = streaming ]
do
    [ "$waited" -lt "${FOLLOW_TIMEOUT_S:-60}" ] \
        || die "$name does not stream from $new_host:$new_port"
    sleep 1
    waited=$((waited + 1))
done
"${PGPOOL_BINDIR:+$PGPOOL_BINDIR/}pcp_attach_node" -w -h "$PCP_HOST" -p "$PCP_PORT" \
    -U "$PCP_USER" -n "$node_id" >/dev/null
log "node $node_id ($name) follows node $new_id and is attached again"
"""

_POSTGRES_START_BODY = r"""
# Entrypoint of every PostgreSQL member: decides its role, then execs postgres.
: "${PG_MEMBER:?}" "${PGDATA:?}" "${PG_CONF_DIR:?}" "${PG_SOCKET_DIR:?}"
: "${PG_APP_USER:?}" "${PG_HEALTHCHECK_USER:?}" "${PG_APP_DATABASE:?}"
umask 077

# The server's walreceiver keeps using this copy, so it lives as long as the server.
PGPASSFILE=$(private_passfile "$PGPASSFILE" "$PG_SOCKET_DIR/.pgpass.$PG_MEMBER")
export PGPASSFILE

self=$(members | awk -v n="$PG_MEMBER" '$1 == n { print $2, $3 }')
[ -n "$self" ] || die "$PG_MEMBER is not in PG_MEMBERS"
self_port=${self#* }
first_member=$(members | awk 'NR == 1 { print $1 }')

# Print "primary HOST PORT" for the first other member that is a writable primary,
# "peers" if others answer but none is primary, "none" if nobody answers.
probe_peers() {
    _seen=none
    while read -r _name _host _port; do
        [ "$_name" = "$PG_MEMBER" ] && continue
        if ! _role=$(role_of "$_host" "$_port"); then
            # Up but refusing us (bad password, starting up) still counts as an existing
            # cluster: only total silence may lead member 0 to initdb a new one.
            _rc=0
            "$(pgbin pg_isready)" -q -h "$_host" -p "$_port" || _rc=$?
            [ "$_rc" -gt 1 ] || _seen=peers
            continue
        fi
        if [ "$_role" = primary ]; then
            printf 'primary %s %s\n' "$_host" "$_port"
            return 0
        fi
        _seen=peers
    done <<EOF
$(members)
EOF
    printf '%s\n' "$_seen"
}

password_of() {  # the pgpass form rendered by components/conf/postgres.py: *:*:*:role:pw
    sed -n "s/^\*:\*:\*:$1://p" "$PGPASSFILE" | head -n 1 | sed 's/\\\(.\)/\1/g'
}

sql_literal() { printf "'%s'" "$(printf '%s' "$1" | sed "s/'/''/g")"; }

# Rewrite one setting of postgresql.auto.conf while the server is down (what ALTER SYSTEM
# would do; pg_basebackup -R does the same, but would also copy the password into it).
set_auto_conf() {
    _f=$PGDATA/postgresql.auto.conf
    touch "$_f"
    grep -v "^[[:space:]]*$1[[:space:]]*=" "$_f" > "$_f.new" || true
    printf "%s = '%s'\n" "$1" "$2" >> "$_f.new"
    mv "$_f.new" "$_f"
}

become_standby_of() {  # HOST PORT
    touch "$PGDATA/standby.signal"
    set_auto_conf primary_conninfo "$(conninfo_to "$1" "$2" "$PG_MEMBER")"
    log "configured as a standby of $1:$2"
}

# A throw-away server on the Unix socket only, with no synchronous standby to wait for, and
# no archiving (its data directory is not yet where the archiver's configuration points).
start_private() {  # DATADIR
    "$(pgbin postgres)" -D "$1" -p "$self_port" -c config_file="$PG_CONF_DIR/postgresql.conf" \
        -c listen_addresses='' -c synchronous_standby_names='' -c log_statement=none \
        -c archive_mode=off &
    private_pid=$!
    _i=0
    until "$(pgbin pg_isready)" -q -h "$PG_SOCKET_DIR" -p "$self_port"; do
        _i=$((_i + 1))
        [ "$_i" -lt 120 ] || die "private server did not start"
        kill -0 "$private_pid" 2>/dev/null || die "private server exited"
        sleep 0.5
    done
}
stop_private() { kill -INT "$private_pid"; wait "$private_pid" || true; }

# Only a complete cluster ever appears at PGDATA, so a crash half-way leaves nothing behind
# that a restart would mistake for a data directory.
install_datadir() {
    rmdir "$PGDATA" 2>/dev/null || true
    [ ! -e "$PGDATA" ] || die "cannot replace $PGDATA (a mount point? use a subdirectory)"
    mv "$1" "$PGDATA"
}

bootstrap() {
    log "empty data dir and no member answers: initialising a new cluster as primary"
    for _role in "$PG_SUPERUSER" "$PG_REPLICATION_USER" "$PG_HEALTHCHECK_USER" "$PG_APP_USER"; do
        [ -n "$(password_of "$_role")" ] || die "PGPASSFILE has no password for $_role"
    done
    _new=$PGDATA.init
    rm -rf "$_new"
    trap 'rm -f "$PG_SOCKET_DIR/.pw.$PG_MEMBER"' EXIT
    password_of "$PG_SUPERUSER" > "$PG_SOCKET_DIR/.pw.$PG_MEMBER"
    "$(pgbin initdb)" -D "$_new" -U "$PG_SUPERUSER" --pwfile="$PG_SOCKET_DIR/.pw.$PG_MEMBER" \
        --auth=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 >&2
    rm -f "$PG_SOCKET_DIR/.pw.$PG_MEMBER"
    start_private "$_new"
    # Passwords travel through the pipe, never through argv or the server log.
    for _role in "$PG_REPLICATION_USER" "$PG_HEALTHCHECK_USER" "$PG_APP_USER"; do
        case $_role in
            "$PG_REPLICATION_USER") _attrs=REPLICATION ;;
            *) _attrs='' ;;
        esac
        printf 'CREATE ROLE "%s" LOGIN %s PASSWORD %s;\n' "$_role" "$_attrs" \
            "$(sql_literal "$(password_of "$_role")")"
    done | psql_to "$PG_SOCKET_DIR" "$self_port" -f - >/dev/null
    # pg_monitor: pgpool's streaming-replication check reads pg_stat_replication.
    sql "$PG_SOCKET_DIR" "$self_port" \
        "GRANT pg_monitor TO \"$PG_HEALTHCHECK_USER\"" \
        "CREATE DATABASE \"$PG_APP_DATABASE\" OWNER \"$PG_APP_USER\"" >/dev/null
    stop_private
    install_datadir "$_new"
}

clone_from() {  # HOST PORT
    log "empty data dir: cloning from the primary $1:$2"
    _new=$PGDATA.clone
    rm -rf "$_new"
    "$(pgbin pg_basebackup)" -h "$1" -p "$2" -U "$PG_REPLICATION_USER" -D "$_new" \
        -X stream -c fast --no-password >&2
    install_datadir "$_new"
    become_standby_of "$1" "$2"
}

rejoin() {  # HOST PORT
    if [ -f "$PGDATA/standby.signal" ]; then
        # Already a standby: just follow the current primary. (pg_rewind would first run
        # crash recovery outside standby mode, writing WAL the primary never had.)
        become_standby_of "$1" "$2"
        return
    fi
    log "this data dir was a primary but $1:$2 is the primary now: rewinding"
    # pg_rewind reads the source's timeline from pg_control, which a just-promoted primary
    # updates only at its first checkpoint; without this it may wrongly see no divergence.
    sql "$1" "$2" "CHECKPOINT" >/dev/null
    "$(pgbin pg_rewind)" --target-pgdata="$PGDATA" \
        --source-server="host=$1 port=$2 user=$PG_SUPERUSER dbname=postgres" \
        --config-file="$PG_CONF_DIR/postgresql.conf" >&2 \
        || die "pg_rewind failed: move $PGDATA away to re-clone this member"
    become_standby_of "$1" "$2"
}

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    if [ -d "$PGDATA" ] && [ -n "$(ls -A "$PGDATA")" ]; then
        die "$PGDATA is not empty but holds no cluster; refusing to overwrite it"
    fi
    waited=0
    while :; do
        read -r found host port <<EOF
$(probe_peers)
EOF
        if [ "$found" = primary ]; then
            clone_from "$host" "$port"
            break
        elif [ "$found" = none ] && [ "$PG_MEMBER" = "$first_member" ]; then
            # Only when nobody answers: member 0 must never start a second, unrelated cluster
            # next to one that merely has no primary right now.
            bootstrap
            break
        fi
        [ "$waited" -lt "${PG_WAIT_PRIMARY_S:-600}" ] || die "no primary to clone from"
        log "waiting for a primary to clone from (other members: $found)"
        sleep 2
        waited=$((waited + 2))
    done
else
    read -r found host port <<EOF
$(probe_peers)
EOF
    if [ "$found" = primary ]; then
        rejoin "$host" "$port"
    elif [ -f "$PGDATA/standby.signal" ]; then
        log "no primary answers: starting as a standby; only pgpool promotes"
    else
        log "no other primary answers: starting as the primary this data dir was"
    fi
fi

exec "$(pgbin postgres)" -D "$PGDATA" -p "$self_port" \
    -c config_file="$PG_CONF_DIR/postgresql.conf" -c cluster_name="$PG_MEMBER" \
    -c synchronous_standby_names="${PG_SYNCHRONOUS_STANDBY_NAMES-}"
"""


def _script(title: str, *parts: str) -> str:
    header = f"#!/bin/sh\n# {title}\n# Rendered by components/conf/scripts.py; do not edit.\n"
    return header + "".join(p.strip("\n") + "\n" for p in parts)


def failover_sh() -> str:
    """pgpool's failover_command: fence the old primary, promote the most advanced standby."""
    return _script(
        "failover_command: promote the most advanced standby.",
        _PRELUDE,
        _PGPOOL_PRELUDE,
        _FAILOVER_BODY,
    )


def follow_primary_sh() -> str:
    """pgpool's follow_primary_command: re-point a standby at the new primary, re-attach it."""
    return _script(
        "follow_primary_command: make a standby follow the new primary.",
        _PRELUDE,
        _PGPOOL_PRELUDE,
        _FOLLOW_PRIMARY_BODY,
    )


def postgres_start_sh() -> str:
    """Entrypoint of every member: bootstrap, clone, rewind or restart, then exec postgres."""
    return _script(
        "PostgreSQL member entrypoint: choose the role, then exec postgres.",
        _PRELUDE,
        _POSTGRES_START_BODY,
    )


def postgres_files(
    topology: PgTopology,
    users: PgUsers,
    client_cidrs: Sequence[str],
    tuning: PgTuning | None = None,
    archive: WalArchive | None = None,
    replication_cidrs: Sequence[str] | None = None,
) -> dict[str, str]:
    """Every non-secret file a PostgreSQL member needs (ConfigMap data, or files on disk).

    postgresql.conf and pg_hba.conf go to ``topology.conf_dir``; the entrypoint anywhere
    (run it as ``sh postgres-start.sh`` with ``postgres_env(...)``).
    """
    return {
        "postgresql.conf": postgresql_conf(topology, tuning, archive),
        "pg_hba.conf": pg_hba_conf(users, client_cidrs, replication_cidrs),
        POSTGRES_START_SH: postgres_start_sh(),
    }


def postgres_secret_files(users: PgUsers, passwords: Mapping[str, str]) -> dict[str, str]:
    """The Secret of the PostgreSQL members: one pgpass with every role's password."""
    missing = [r for r in users.roles() if r not in passwords]
    if missing:
        raise ValueError(f"passwords missing for {missing}")
    return {"pgpass": pgpass({r: passwords[r] for r in users.roles()})}
