"""Shared fixtures: the offline renders of every stack and the local data tier, once per session.

Each stack renders in its own process, exactly as reviewers and CI run it
(`python -m infra.render`), because Pulumi's runtime keeps one program per process.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from stacks.local.data_tier import DataTier, DataTierConfig

# Every test has a time limit, and a hung one reports its asyncio tasks.
pytest_plugins = ["tests.timeouts"]

ROOT = Path(__file__).resolve().parents[1]
STACKS = ("dev", "staging", "prod")


@dataclass
class StackRender:
    stack: str
    out: Path
    resources: list[dict[str, Any]]
    stdout: str

    def of_type(self, type_: str) -> list[dict[str, Any]]:
        return [r for r in self.resources if r["type"] == type_]

    def inputs(self, type_: str) -> list[dict[str, Any]]:
        return [r["inputs"] for r in self.of_type(type_)]

    def manifests(self) -> list[dict[str, Any]]:
        return [
            yaml.safe_load(p.read_text()) for p in sorted((self.out / "manifests").rglob("*.yaml"))
        ]

    def objects(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.manifests() if m["kind"] == kind]

    def object(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
        found = [
            m
            for m in self.objects(kind)
            if m["metadata"]["name"] == name
            and (namespace is None or m["metadata"].get("namespace") == namespace)
        ]
        assert len(found) == 1, f"expected one {kind} {namespace}/{name}, found {len(found)}"
        return found[0]


@pytest.fixture(scope="session")
def renders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, StackRender]:
    base = tmp_path_factory.mktemp("render")
    processes = {
        stack: subprocess.Popen(
            [
                *(sys.executable, "-m", "infra.render", "--stack", stack),
                *("--out", str(base / stack), "--policy"),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for stack in STACKS
    }
    result = {}
    for stack, process in processes.items():
        stdout, stderr = process.communicate(timeout=180)
        assert process.returncode == 0, f"render of {stack} failed:\n{stdout}\n{stderr}"
        resources = json.loads((base / stack / "resources.json").read_text())
        result[stack] = StackRender(stack, base / stack, resources, stdout)
    return result


@pytest.fixture(scope="session")
def prod(renders: dict[str, StackRender]) -> StackRender:
    return renders["prod"]


# --- the local data tier -----------------------------------------------------------------------


@contextmanager
def fresh_state_dir(prefix: str) -> Iterator[Path]:
    """An empty state directory for a DataTier, removed afterwards (kept, with its logs, when
    an error escapes).

    Not pytest's tmp_path: that lives in /tmp/pytest-of-<user> (mode 0700), which the
    `postgres` OS user the servers run as (they refuse root) cannot enter.
    """
    path = Path(tempfile.mkdtemp(prefix=prefix))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def data_tier() -> Iterator[DataTier]:
    """A running data tier for the whole session: PostgreSQL primary + 1 synchronous replica
    behind PgPool-II, a Redis cluster of 3 masters + 3 replicas, 2 Memcached nodes.

    Connect as the app role with ``data_tier.postgres.pgpool_dsn`` (what services use),
    ``.primary_dsn`` or ``.replica_dsns[0]`` (asyncpg / libpq URLs; ``.dsn(address, role)``
    for another role); Redis: ``.redis.nodes`` and ``.redis.password``; Memcached:
    ``.memcached.nodes``; a service's environment, as on GKE:
    ``data_tier.service_environment(SERVICES["user"])``. Shared by every test: use your own
    tables and keys.
    """
    with fresh_state_dir("data-tier-") as state:
        config = DataTierConfig(pg_replicas=1, redis_masters=3, memcached_nodes=2)
        with DataTier(state, config) as tier:
            yield tier
