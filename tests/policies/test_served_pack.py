"""The pack as the Pulumi engine runs it: `policies/__main__.py` serves it over gRPC, and its
answers match the offline verdict for the same resources and the same stack config."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import empty_pb2, struct_pb2
from pulumi.runtime.proto import analyzer_pb2, analyzer_pb2_grpc

from policies.rules import POLICIES
from policies.verdict import evaluate, policy_config
from tests.policies import fixtures as fx

ROOT = Path(__file__).resolve().parents[2]
LEVELS = {
    "advisory": analyzer_pb2.ADVISORY,
    "mandatory": analyzer_pb2.MANDATORY,
    "disabled": analyzer_pb2.DISABLED,
}


@pytest.fixture(scope="module")
def analyzer() -> Iterator[analyzer_pb2_grpc.AnalyzerStub]:
    pack = subprocess.Popen(
        [sys.executable, str(ROOT / "policies" / "__main__.py")],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert pack.stdout is not None
        port = int(pack.stdout.readline().strip())  # the engine reads the port the same way
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        grpc.channel_ready_future(channel).result(timeout=20)
        yield analyzer_pb2_grpc.AnalyzerStub(channel)
        channel.close()
    finally:
        pack.terminate()
        pack.wait(timeout=10)


def struct(value: dict) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(json.loads(json.dumps(value)))
    return message


def configure(stub: analyzer_pb2_grpc.AnalyzerStub, stack: str) -> None:
    """Send the stack's policy config the way the CLI does (--policy-pack-config)."""
    entries = {}
    for policy in POLICIES:
        entry = policy_config(stack).get(policy.name, {})
        level = (
            entry
            if isinstance(entry, str)
            else entry.get("enforcementLevel", policy.enforcement_level.value)
        )
        properties = (
            {k: v for k, v in entry.items() if k != "enforcementLevel"}
            if isinstance(entry, dict)
            else {}
        )
        entries[policy.name] = analyzer_pb2.PolicyConfig(
            enforcementLevel=LEVELS[level], properties=struct(properties)
        )
    stub.Configure(analyzer_pb2.ConfigureAnalyzerRequest(policyConfig=entries))


def violation(diagnostic: analyzer_pb2.AnalyzeDiagnostic) -> str:
    """The engine prefixes each violation with its rule's description; the verdict keeps both
    apart."""
    return diagnostic.message.split("\n", 1)[-1]


def urn(resource: fx.Resource) -> str:
    return f"urn:pulumi:prod::ecommerce::{resource.type}::{resource.name}"


def test_the_served_pack_is_the_rule_list(analyzer: analyzer_pb2_grpc.AnalyzerStub) -> None:
    info = analyzer.GetAnalyzerInfo(empty_pb2.Empty())
    served = {p.name: p.enforcementLevel for p in info.policies}
    assert served == {p.name: LEVELS[p.enforcement_level.value] for p in POLICIES}


def test_engine_and_offline_verdict_agree(analyzer: analyzer_pb2_grpc.AnalyzerStub) -> None:
    configure(analyzer, "prod")
    resources = [
        fx.modified(
            fx.deployment(),
            "spec",
            "template",
            "spec",
            "containers",
            "0",
            "image",
            value="user:latest",
        ),
        fx.modified(
            fx.deployment("product"), "spec", "template", "spec", "hostNetwork", value=True
        ),
        fx.hpa(low=1, high=4),
        fx.service("user", "LoadBalancer"),
        fx.modified(fx.cluster(), "enableLegacyAbac", value=True),
        fx.bucket(publicAccessPrevention="inherited", labels={}),
        fx.config_map({"redis.conf": "requirepass hunter2\n"}),
    ]
    engine = set()
    for resource in resources:
        response = analyzer.Analyze(
            analyzer_pb2.AnalyzeRequest(
                type=resource.type,
                properties=struct(resource.inputs),
                urn=urn(resource),
                name=resource.name,
            )
        )
        engine |= {(d.policyName, resource.name, violation(d)) for d in response.diagnostics}
    stack = analyzer.AnalyzeStack(
        analyzer_pb2.AnalyzeStackRequest(
            resources=[
                analyzer_pb2.AnalyzerResource(
                    type=r.type, properties=struct(r.inputs), urn=urn(r), name=r.name
                )
                for r in resources
            ]
        )
    )
    by_urn = {urn(r): r.name for r in resources}
    engine |= {(d.policyName, by_urn.get(d.urn, "prod"), violation(d)) for d in stack.diagnostics}

    offline = {
        (f.rule, f.resource_name, f.message)
        for f in evaluate(resources, "prod", policy_config("prod"))
    }
    assert engine == offline
    # Every family of rule took part, so the agreement means something.
    assert {rule for rule, _, _ in offline} >= {
        "images-pinned",
        "restricted-pod-security",
        "hpa-bounds",
        "only-gateway-exposed",
        "gke-cluster-hardened",
        "buckets-private",
        "required-labels",
        "no-plain-secrets",
        "default-deny-network-policy",
        "autoscaled-workloads",
    }
