"""Offline render: what `pulumi up` would create, without credentials, cloud or CLI.

Runs the real program (`infra.program.main`, the code `pulumi up` runs) under Pulumi's own
mock runtime with the stack's config file, records every resource registration, and writes

  OUT/resources.json   every resource: {"type", "name", "inputs"}
  OUT/manifests/       one YAML file per Kubernetes object, as plain Kubernetes objects
  OUT/policy.json      with --policy: the policy pack's findings (exit 1 on a mandatory one)

then prints a summary. Values only the cloud knows (IP addresses, image digests, generated
passwords) come back as clearly marked placeholders from `OfflineMocks`.

    python -m infra.render --stack prod --out build/render/prod --policy
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
PLACEHOLDER = "offline-placeholder"
# How the engine marks a secret value in resource inputs (pulumi.runtime.rpc).
_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
SECRET_SIG_KEY, SECRET_SIG = "4dabf18193072939515e22adb298388d", "1b47061264138c4ac30d75fd1eb44270"


@dataclass
class Recorded:
    type: str
    name: str
    inputs: dict[str, Any]


@dataclass
class Render:
    stack: str
    resources: list[Recorded] = field(default_factory=list)
    seconds: float = 0.0

    def kubernetes_objects(self) -> list[dict[str, Any]]:
        """Plain Kubernetes objects (Helm releases and providers are not objects)."""
        return [
            r.inputs
            for r in self.resources
            if r.type.startswith("kubernetes:")
            and "apiVersion" in r.inputs
            and "kind" in r.inputs
            and not r.type.startswith("kubernetes:helm")
        ]

    def of_type(self, type_: str) -> list[Recorded]:
        return [r for r in self.resources if r.type == type_]


def _plain(value: Any) -> Any:
    """Engine values as plain data: whole floats become ints again (the engine passes every
    number as a float) and secret-wrapped values are unwrapped (they are placeholders here)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        if value.get(SECRET_SIG_KEY) == SECRET_SIG:
            return _plain(value["value"])
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _fake_digest(seed: str) -> str:
    return "sha256:" + hashlib.sha256(seed.encode()).hexdigest()


def _computed_outputs(
    type_: str, name: str, inputs: dict[str, Any], project: str
) -> dict[str, Any]:
    """What the provider would compute, for the values the program reads back."""
    outputs = dict(inputs)
    outputs.setdefault("name", name)
    if type_ == "gcp:container/cluster:Cluster":
        outputs.update(
            endpoint="192.0.2.10",
            masterAuth={"clusterCaCertificate": PLACEHOLDER, **(inputs.get("masterAuth") or {})},
        )
    elif type_ == "gcp:serviceaccount/account:Account":
        outputs["email"] = f"{inputs['accountId']}@{project}.iam.gserviceaccount.com"
    elif type_.startswith("random:"):
        outputs["result"] = f"{PLACEHOLDER}-{name}"
    elif type_ == "docker-build:index:Image":
        tag = (inputs.get("tags") or [name])[0]
        outputs["digest"] = _fake_digest(name)
        outputs["ref"] = f"{tag.rsplit(':', 1)[0]}@{outputs['digest']}"
    elif type_.startswith("tls:"):
        outputs.update(privateKeyPem=PLACEHOLDER, certPem=PLACEHOLDER, publicKeyPem=PLACEHOLDER)
    elif (
        type_ == "kubernetes:core/v1:Service"
        and (inputs.get("spec") or {}).get("type") == "LoadBalancer"
    ):
        outputs["status"] = {"loadBalancer": {"ingress": [{"ip": "192.0.2.80"}]}}
    return outputs


def render(stack: str, stack_file: Path | None = None) -> Render:
    """Run the stack's program under Pulumi's mock runtime and record every resource.

    `stack_file` replaces `Pulumi.<stack>.yaml` (a reviewer trying a change of config)."""
    import pulumi
    from pulumi.runtime.stack import run_pulumi_func
    from pulumi.runtime.sync_await import _sync_await

    from stacks.config import PROJECT, SECRET_KEYS

    stack_file = stack_file or ROOT / f"Pulumi.{stack}.yaml"
    if not stack_file.exists():
        known = sorted(p.name.split(".")[1] for p in ROOT.glob("Pulumi.*.yaml"))
        raise SystemExit(
            f"no stack {stack!r}: expected one of {', '.join(known)} ({stack_file} is missing)"
        )
    raw = (yaml.safe_load(stack_file.read_text()) or {}).get("config", {})
    config = {k: v if isinstance(v, str) else json.dumps(v) for k, v in raw.items()}
    # Secrets are encrypted per stack and never needed to see the shape of a deployment.
    for key in SECRET_KEYS:
        config[f"{PROJECT}:{key}"] = f"{PLACEHOLDER}-{key}"
    project_id = str(raw.get("gcp:project", "project"))

    result = Render(stack)

    class OfflineMocks(pulumi.runtime.Mocks):
        def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
            inputs = _plain(args.inputs)
            result.resources.append(Recorded(args.typ, args.name, inputs))
            return f"{args.name}-id", _computed_outputs(args.typ, args.name, inputs, project_id)

        def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], list[Any]]:
            if args.token == "gcp:organizations/getProject:getProject":
                return {"number": "123456789012", "projectId": project_id}, []
            if args.token == "gcp:organizations/getClientConfig:getClientConfig":
                return {"accessToken": PLACEHOLDER, "project": project_id}, []
            return {}, []

    started = time.perf_counter()
    pulumi.runtime.set_all_config(config, [f"{PROJECT}:{key}" for key in SECRET_KEYS])
    pulumi.runtime.set_mocks(OfflineMocks(), project=PROJECT, stack=stack, preview=False)

    from infra.program import main

    # set_mocks made the root stack; run the program inside it as the engine would.
    _sync_await(run_pulumi_func(main))
    result.seconds = time.perf_counter() - started
    return result


def write(result: Render, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    manifests = out / "manifests"
    if manifests.exists():
        for old in manifests.rglob("*.yaml"):
            old.unlink()
    (out / "resources.json").write_text(
        # By type and name: the engine registers them in no fixed order, a review diffs them.
        json.dumps(
            sorted((r.__dict__ for r in result.resources), key=lambda r: (r["type"], r["name"])),
            indent=2,
            sort_keys=True,
        )
        + "\n"
    )
    for obj in result.kubernetes_objects():
        metadata = obj.get("metadata") or {}
        folder = manifests / metadata.get("namespace", "_cluster")
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{obj['kind'].lower()}-{metadata['name']}.yaml"
        # libyaml's emitter when present: the pure-Python one is a fifth of the render time.
        path.write_text(yaml.dump(obj, Dumper=_DUMPER, sort_keys=False))


def summary(result: Render) -> str:
    lines = [
        f"stack {result.stack}: {len(result.resources)} resources, "
        f"rendered in {result.seconds:.2f} s",
        "",
    ]
    lines.append(f"{'resource type':<56} count")
    for type_, count in sorted(Counter(r.type for r in result.resources).items()):
        lines.append(f"{type_:<56} {count:>5}")
    lines += ["", f"{'node pool':<12} {'machine type':<16} {'nodes':>7}  taint"]
    for pool in result.of_type("gcp:container/nodePool:NodePool"):
        node = pool.inputs.get("nodeConfig", {})
        scaling = pool.inputs.get("autoscaling", {})
        taint = ",".join(t["value"] for t in node.get("taints") or []) or "-"
        bounds = f"{scaling.get('totalMinNodeCount')}..{scaling.get('totalMaxNodeCount')}"
        lines.append(
            f"{pool.inputs['name']:<12} {node.get('machineType', ''):<16} {bounds:>7}  {taint}"
        )
    lines += ["", f"{'service':<12} {'namespace':<10} {'replicas':>9}  metrics"]
    for hpa in result.of_type("kubernetes:autoscaling/v2:HorizontalPodAutoscaler"):
        spec, metadata = hpa.inputs["spec"], hpa.inputs["metadata"]
        metrics = ", ".join(
            (m.get("resource") or {}).get("name")
            or ((m.get("pods") or m.get("external") or {}).get("metric") or {}).get("name", "?")
            for m in spec.get("metrics", [])
        )
        bounds = f"{spec['minReplicas']}..{spec['maxReplicas']}"
        lines.append(f"{metadata['name']:<12} {metadata['namespace']:<10} {bounds:>9}  {metrics}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m infra.render", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--stack", required=True, help="dev, staging or prod (a Pulumi.<stack>.yaml)"
    )
    parser.add_argument("--out", type=Path, help="where to write (default build/render/<stack>)")
    parser.add_argument(
        "--stack-file", type=Path, help="a stack file to use instead of Pulumi.<stack>.yaml"
    )
    parser.add_argument(
        "--policy",
        action="store_true",
        help="also run the policy pack; exit 1 when a mandatory rule is violated",
    )
    args = parser.parse_args(argv)

    from stacks.config import ConfigError

    try:
        result = render(args.stack, args.stack_file)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 2
    out = args.out or ROOT / "build" / "render" / args.stack
    write(result, out)
    print(summary(result))
    print(
        f"\nwrote {out / 'resources.json'} and {len(result.kubernetes_objects())} "
        f"manifests to {out / 'manifests'}"
    )
    if args.policy:
        from policies import verdict

        findings = verdict.evaluate(result.resources, args.stack)
        verdict.write(findings, out / "policy.json")
        print(f"\n{verdict.table(findings)}")
        print(verdict.cost(result.resources, args.stack))
        print(f"wrote {out / 'policy.json'}")
        if verdict.mandatory(findings):
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
