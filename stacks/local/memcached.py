"""Memcached nodes as local processes, with the flags ``memcached_args`` renders for GKE."""

from __future__ import annotations

import os
import socket
import time

from components.conf.memcached import memcached_args
from stacks.local.ports import HOST, PortAllocator
from stacks.local.process import Process, Supervisor
from stacks.local.system import MEMCACHED


def served_by(host: str, port: int, pid: int) -> bool:
    """The node speaks the ASCII protocol *and* is our process (``stats`` names its pid)."""
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            sock.sendall(b"stats\r\n")
            reply = b""
            while not reply.endswith(b"END\r\n"):
                chunk = sock.recv(4096)
                if not chunk:
                    return False
                reply += chunk
    except OSError:
        return False
    return f"STAT pid {pid}\r\n".encode() in reply


class LocalMemcached:
    def __init__(
        self,
        supervisor: Supervisor,
        ports: PortAllocator,
        *,
        count: int = 2,
        memory_mb: int = 64,
        threads: int = 2,
    ) -> None:
        self.supervisor = supervisor
        self.memory_mb = memory_mb
        self.threads = threads
        self.ports = {f"memcached-{i}": ports.take(f"memcached-{i}") for i in range(count)}
        self._nodes: dict[str, Process] = {}

    @property
    def nodes(self) -> tuple[str, ...]:
        return tuple(f"{HOST}:{port}" for port in self.ports.values())

    @property
    def processes(self) -> list[Process]:
        return list(self._nodes.values())

    def start(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        # memcached refuses to run as root unless told which user to become.
        user = "nobody" if os.geteuid() == 0 else None
        for name, port in self.ports.items():
            args = memcached_args(
                port, self.memory_mb, threads=self.threads, listen=HOST, user=user
            )
            self._nodes[name] = self.supervisor.start(name, [MEMCACHED, *args], env={})
        for name, port in self.ports.items():
            self.supervisor.wait_until(
                lambda name=name, port=port: served_by(HOST, port, self._nodes[name].pid),
                process=self._nodes[name],
                what=f"Memcached {name} on {HOST}:{port}",
                timeout=deadline - time.monotonic(),
            )
