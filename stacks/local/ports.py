"""TCP ports on 127.0.0.1 for the local platform.

Tests take random free ports so parallel runs and a running platform never collide; ``make up``
can ask for a fixed, predictable block instead (``base``), and then a taken port is an error
that names it. Random ports are drawn *below* the kernel's ephemeral range: a port from that
range could be handed to some outgoing connection between our check and the server's bind.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

from stacks.local.process import LocalPlatformError

HOST = "127.0.0.1"
# Zones, as a region has: the local servers are placed in them as on GKE (components.conf
# zone_of), so what depends on zones (commit quorums, Redis replicas) runs here too.
ZONES = ("zone-a", "zone-b", "zone-c")
_LOWEST = 10000


def is_taken(port: int, host: str = HOST) -> bool:
    """Whether a server could not listen on ``host:port`` now (bound as servers bind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As the servers do: a port whose old connections linger in TIME_WAIT is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def ensure_free(port: int, what: str, host: str = HOST) -> None:
    if is_taken(port, host):
        raise LocalPlatformError(
            f"port {port} on {host} ({what}) is already taken by another process: stop it "
            f"(`ss -ltnp 'sport = :{port}'` names it) or choose other ports"
        )


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


class PortAllocator:
    """Hands out distinct ports, each checked free: random ones, or ``base``, ``base+1``, ..."""

    def __init__(self, base: int | None = None, host: str = HOST) -> None:
        self.base = base
        self.host = host
        self.assigned: dict[str, int] = {}  # what -> port
        self._high = max(_LOWEST + 1000, _ephemeral_low())

    def take(self, what: str, fixed: int | None = None) -> int:
        """A free port for ``what``; ``fixed``: exactly that one (a clear error if taken)."""
        if what in self.assigned:
            raise ValueError(f"port for {what} already assigned")
        used = set(self.assigned.values())
        if fixed is not None:
            if fixed in used or not 1 <= fixed <= 65535:
                raise LocalPlatformError(f"port {fixed} cannot serve {what} (in use here)")
            ensure_free(fixed, what, self.host)
            port = fixed
        elif self.base is not None:
            port = self.base + len(self.assigned)
            if port > 65535:
                raise LocalPlatformError(f"base port {self.base} leaves no port for {what}")
            ensure_free(port, what, self.host)
        else:
            for _ in range(200):
                port = random.randrange(_LOWEST, self._high)
                if port not in used and not is_taken(port, self.host):
                    break
            else:
                raise LocalPlatformError(f"found no free port on {self.host} for {what}")
        self.assigned[what] = port
        return port
