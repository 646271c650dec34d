"""The processes the local runner adds to the data tier (the simulators, the mail sink, the
services, the gateway), and how it tells that each is ready."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stacks.local.ports import HOST
from stacks.local.process import (
    LocalPlatformError,
    Process,
)


@dataclass
class AppProcess:
    """A simulator, service process or the gateway: how to (re)start it and when it is ready."""

    name: str
    kind: str  # simulator | sink | service | gateway
    argv: list[str]
    env: dict[str, str]
    port: int
    ready_url: str
    process: Process | None = None
    restarts: list[float] = field(default_factory=list)
    gave_up: bool = False

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"


def http_status(url: str, timeout: float = 1.0) -> int | None:
    """The HTTP status of a GET, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except (OSError, ValueError):
        return None


def http_json(
    url: str, body: Mapping[str, Any] | None = None, timeout: float = 10.0
) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url,
        data=data,
        method="GET" if body is None else "POST",
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status), json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return int(error.code), json.loads(error.read() or b"null")


def tcp_open(address: str, timeout: float = 0.5) -> bool:
    host, port = address.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except OSError:
        return False


def haproxy_servers(stats_socket: Path) -> dict[str, str]:
    """``backend/server`` -> status (UP, DOWN, ...) from HAProxy's admin socket."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(2)
        sock.connect(str(stats_socket))
        sock.sendall(b"show stat\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    lines = b"".join(chunks).decode().splitlines()
    if not lines or not lines[0].startswith("# "):
        raise LocalPlatformError("unexpected answer from HAProxy's admin socket")
    header = lines[0][2:].split(",")
    at = {name: i for i, name in enumerate(header)}
    servers = {}
    for line in lines[1:]:
        cols = line.split(",")
        if len(cols) < len(header) or cols[at["svname"]] in ("FRONTEND", "BACKEND"):
            continue
        servers[f"{cols[at['pxname']]}/{cols[at['svname']]}"] = cols[at["status"]]
    return servers
