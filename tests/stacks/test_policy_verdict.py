"""The policy pack's verdict on every stack, and on stacks made insecure through config."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT, STACKS, StackRender


@pytest.mark.parametrize("stack", STACKS)
def test_every_stack_passes_every_mandatory_rule(
    renders: dict[str, StackRender], stack: str
) -> None:
    findings = json.loads((renders[stack].out / "policy.json").read_text())
    assert [f for f in findings if f["level"] == "mandatory"] == []
    assert "policy pack ecommerce-guardrails" in renders[stack].stdout
    assert "estimated nodes $" in renders[stack].stdout


def render_with(
    stack: str, tmp_path: Path, change: dict[str, Any]
) -> tuple[int, str, list[dict[str, Any]]]:
    config = yaml.safe_load((ROOT / f"Pulumi.{stack}.yaml").read_text())
    for key, value in change.items():
        config["config"][key] = value
    stack_file = tmp_path / f"Pulumi.{stack}.yaml"
    stack_file.write_text(yaml.safe_dump(config))
    out = tmp_path / "out"
    done = subprocess.run(
        [
            *(sys.executable, "-m", "infra.render", "--stack", stack),
            *("--stack-file", str(stack_file), "--out", str(out), "--policy"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    policy = out / "policy.json"
    return done.returncode, done.stdout, json.loads(policy.read_text()) if policy.exists() else []


@pytest.mark.slow
def test_a_single_replica_in_prod_is_caught(tmp_path: Path) -> None:
    code, stdout, findings = render_with(
        "prod", tmp_path, {"ecommerce:services": {"product": {"minReplicas": 1}}}
    )
    assert code == 1
    mandatory = [f for f in findings if f["level"] == "mandatory"]
    assert mandatory == [
        {
            "rule": "hpa-bounds",
            "level": "mandatory",
            "resource_type": "kubernetes:autoscaling/v2:HorizontalPodAutoscaler",
            "resource_name": "product-hpa",
            "message": "minReplicas must be >= 2 in this stack (got 1): one pod is no redundancy",
        }
    ]
    assert "hpa-bounds" in stdout


@pytest.mark.slow
def test_an_open_control_plane_is_caught(tmp_path: Path) -> None:
    network = yaml.safe_load((ROOT / "Pulumi.staging.yaml").read_text())["config"][
        "ecommerce:network"
    ]
    network["masterAuthorizedNetworks"] = [{"name": "anyone", "cidr": "0.0.0.0/0"}]
    code, _, findings = render_with("staging", tmp_path, {"ecommerce:network": network})
    assert code == 1
    assert [
        (f["rule"], f["resource_type"], f["message"]) for f in findings if f["level"] == "mandatory"
    ] == [
        (
            "gke-cluster-hardened",
            "gcp:container/cluster:Cluster",
            "master authorized network 'anyone' is open to the internet (0.0.0.0/0)",
        )
    ]
