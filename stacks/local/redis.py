"""A Redis Cluster as local processes: the rendered redis.conf per node, the rendered bootstrap.

The password lives in a 0600 include file (``redis_auth_conf``) and reaches redis-cli only
through ``REDISCLI_AUTH``, as in the GKE bootstrap Job. Layout under ``root``::

    redis-N.conf   redis-N/ (AOF and nodes.conf)   bootstrap.sh
"""

from __future__ import annotations

import time
from pathlib import Path

from redis import Redis
from redis.exceptions import RedisError

from components.conf import zone_of
from components.conf.redis import (
    REDISCLI_AUTH_ENV,
    RedisClusterSpec,
    RedisNode,
    cluster_bootstrap_sh,
    redis_auth_conf,
    redis_conf,
)
from stacks.local.ports import HOST, ZONES, PortAllocator
from stacks.local.process import (
    Process,
    Supervisor,
    make_dir,
    new_password,
    write_file,
)
from stacks.local.system import REDIS_CLI, REDIS_SERVER


def served_by(host: str, port: int, password: str, pid: int) -> bool:
    """The node answers with our password *and* is our process (not whatever holds the port)."""
    client = Redis(host=host, port=port, password=password, socket_timeout=1)
    try:
        return int(client.info("server")["process_id"]) == pid
    except RedisError:
        return False
    finally:
        client.close()


class LocalRedis:
    def __init__(
        self,
        root: Path,
        secrets_dir: Path,
        supervisor: Supervisor,
        ports: PortAllocator,
        *,
        masters: int = 3,
        replicas_per_master: int = 1,
        maxmemory_mb: int = 64,
    ) -> None:
        self.root = root
        self.supervisor = supervisor
        count = masters * (replicas_per_master + 1)
        self.spec = RedisClusterSpec(
            nodes=tuple(
                RedisNode(
                    name=f"redis-{i}",
                    host=HOST,
                    port=ports.take(f"redis-{i}"),
                    # Explicit: port + 10000 may be taken, or beyond 65535.
                    bus_port=ports.take(f"redis-{i} cluster bus"),
                    zone=zone_of(i, ZONES),  # as on GKE: no replica in its master's zone
                )
                for i in range(count)
            ),
            replicas_per_master=replicas_per_master,
            maxmemory_mb=maxmemory_mb,
        )
        self.password_file = secrets_dir / "redis-password"
        self.auth_include = secrets_dir / "redis-auth.conf"
        self._password = ""
        self._nodes: dict[str, Process] = {}

    @property
    def nodes(self) -> tuple[str, ...]:
        """Every node's ``host:port`` (cluster clients use them as seeds)."""
        return tuple(node.endpoint for node in self.spec.nodes)

    @property
    def password(self) -> str:
        return self._password

    @property
    def processes(self) -> list[Process]:
        return list(self._nodes.values())

    def start(self, timeout: float = 60.0) -> None:
        """Every node at once, then the rendered bootstrap forms the cluster and waits for it."""
        deadline = time.monotonic() + timeout
        self._write_files()
        for node in self.spec.nodes:
            self._nodes[node.name] = self.supervisor.start(
                node.name,
                [REDIS_SERVER, str(self.root / f"{node.name}.conf")],
                env={"HOME": str(self.root)},
                cwd=self.root,
            )
        for node in self.spec.nodes:
            self.supervisor.wait_until(
                lambda node=node: served_by(
                    node.host, node.port, self._password, self._nodes[node.name].pid
                ),
                process=self._nodes[node.name],
                what=f"Redis {node.name} on {node.endpoint}",
                timeout=deadline - time.monotonic(),
            )
        bootstrap = self.supervisor.start(
            "redis-bootstrap",
            ["sh", str(self.root / "bootstrap.sh")],
            env={"HOME": str(self.root), REDISCLI_AUTH_ENV: self._password},
            cwd=self.root,
        )
        allowed = max(1.0, deadline - time.monotonic())
        code = bootstrap.wait(allowed)
        self.supervisor.stop([bootstrap])  # already finished: only forgets it
        if code < 0:
            raise bootstrap.failure(
                f"the Redis cluster bootstrap did not finish in {allowed:.0f} s"
            )
        if code != 0:
            raise bootstrap.failure(f"the Redis cluster bootstrap failed (exit code {code})")

    def _write_files(self) -> None:
        self._password = new_password(40)
        write_file(self.password_file, self._password, mode=0o600)
        write_file(self.auth_include, redis_auth_conf(self._password), mode=0o600)
        make_dir(self.root)
        for node in self.spec.nodes:
            data_dir = make_dir(self.root / node.name)
            conf = redis_conf(
                node,
                self.spec,
                str(data_dir),
                bind=(HOST,),  # the ports were checked free on 127.0.0.1 only
                auth_include=str(self.auth_include),
            )
            write_file(self.root / f"{node.name}.conf", conf, mode=0o600)
        script = cluster_bootstrap_sh(self.spec, redis_cli=REDIS_CLI, wait_seconds=60)
        write_file(self.root / "bootstrap.sh", script, mode=0o700)
