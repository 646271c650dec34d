"""The pack's verdict on a rendered stack, without the Pulumi CLI.

Runs the pack's own policy objects (`policies.rules.POLICIES`, the list `__main__.py` builds
the pack from) over recorded resources, the way the policy engine does: each rule gets the
same argument objects, the same unknown-value proxy, and its enforcement level and config from
the same per-stack file the CLI takes (`--policy-pack-config policies/config/<stack>.json`).
So the offline verdict and `pulumi preview --policy-pack policies` cannot disagree.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from pulumi_policy import (
    EnforcementLevel,
    Policy,
    PolicyCustomTimeouts,
    PolicyResource,
    PolicyResourceOptions,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)
from pulumi_policy.proxy import UnknownValueError, unknown_checking_proxy

from policies.rules import PACK_NAME, POLICIES

CONFIG_DIR = Path(__file__).resolve().parent / "config"


class Resource(Protocol):
    type: str
    name: str
    inputs: dict[str, Any]


@dataclass(frozen=True)
class Finding:
    rule: str
    level: str  # "mandatory" or "advisory"
    resource_type: str
    resource_name: str
    message: str


def policy_config(stack: str) -> dict[str, Any]:
    """The per-stack policy config (the CLI's --policy-pack-config file), or none."""
    path = CONFIG_DIR / f"{stack}.json"
    return json.loads(path.read_text()) if path.exists() else {}


def settings(policy: Policy, config: Mapping[str, Any]) -> tuple[EnforcementLevel, dict[str, Any]]:
    """A rule's enforcement level and properties: its own entry, else `all`, else its default."""
    entry = config.get(policy.name)
    level = policy.enforcement_level or EnforcementLevel.ADVISORY
    if "all" in config:
        level = EnforcementLevel(config["all"])
    properties: dict[str, Any] = {}
    if isinstance(entry, str):
        level = EnforcementLevel(entry)
    elif isinstance(entry, Mapping):
        properties = {k: v for k, v in entry.items() if k != "enforcementLevel"}
        if "enforcementLevel" in entry:
            level = EnforcementLevel(entry["enforcementLevel"])
    return level, properties


def evaluate(
    resources: Sequence[Resource],
    stack: str,
    config: Mapping[str, Any] | None = None,
    policies: Iterable[Policy] = POLICIES,
) -> list[Finding]:
    config = policy_config(stack) if config is None else config
    findings: list[Finding] = []
    urns = {id(r): f"urn:pulumi:{stack}::ecommerce::{r.type}::{r.name}" for r in resources}
    by_urn = {urns[id(r)]: r for r in resources}
    stack_resources = [_policy_resource(r, urns[id(r)]) for r in resources]
    for policy in policies:
        level, properties = settings(policy, config)
        if level == EnforcementLevel.DISABLED:
            continue

        def run(
            check: Any,
            args: Any,
            subject: Resource | None,
            policy: Policy = policy,
            level: EnforcementLevel = level,
        ) -> None:
            def report(message: str, urn: str | None = None) -> None:
                target = by_urn.get(urn or "") or subject
                findings.append(
                    Finding(
                        policy.name,
                        level.value,
                        target.type if target else "stack",
                        target.name if target else stack,
                        message,
                    )
                )

            try:
                check(args, report)
            except UnknownValueError as unknown:
                # What the engine does: the rule could not run, and says so (never a pass).
                findings.append(
                    Finding(
                        policy.name,
                        EnforcementLevel.ADVISORY.value,
                        subject.type if subject else "stack",
                        subject.name if subject else stack,
                        f"can't run policy during preview: {unknown.message}",
                    )
                )

        if isinstance(policy, ResourceValidationPolicy):
            for resource in resources:
                args = ResourceValidationArgs(
                    resource.type,
                    unknown_checking_proxy(resource.inputs),
                    urns[id(resource)],
                    resource.name,
                    _options(),
                    None,
                    properties,
                )
                run(policy.validate, args, resource)
        elif isinstance(policy, StackValidationPolicy):
            run(policy.validate, StackValidationArgs(stack_resources, properties), None)
    return findings


def cost(resources: Sequence[Resource], stack: str) -> str:
    """The cost rule's estimate, shown with every verdict (the rule only speaks when over)."""
    from policies.rules.cost import budget, estimate

    policy_resources = [_policy_resource(r, r.name) for r in resources]
    limit = budget(policy_resources)
    limit_text = f"budget ${limit:,}/month" if limit else "no budget set"
    return f"{stack}: {estimate(policy_resources).describe()}; {limit_text}"


def mandatory(findings: Iterable[Finding]) -> list[Finding]:
    return [f for f in findings if f.level == EnforcementLevel.MANDATORY.value]


def write(findings: Sequence[Finding], path: Path) -> None:
    path.write_text(json.dumps([asdict(f) for f in findings], indent=2) + "\n")


def table(findings: Sequence[Finding]) -> str:
    if not findings:
        return f"policy pack {PACK_NAME}: no findings"
    rows = [
        (f.level, f.rule, f"{f.resource_type.rsplit(':', 1)[-1]}/{f.resource_name}", f.message)
        for f in findings
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [
        f"policy pack {PACK_NAME}: {len(mandatory(findings))} mandatory, "
        f"{len(findings) - len(mandatory(findings))} advisory findings"
    ]
    for row in sorted(rows):
        lines.append(
            "  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths, strict=True))
            + "  "
            + row[3]
        )
    return "\n".join(lines)


def _options() -> PolicyResourceOptions:
    return PolicyResourceOptions(False, [], None, [], PolicyCustomTimeouts(0, 0, 0), [], None)


def _policy_resource(resource: Resource, urn: str) -> PolicyResource:
    return PolicyResource(
        resource.type,
        unknown_checking_proxy(resource.inputs),
        urn,
        resource.name,
        _options(),
        None,
        None,
        [],
        {},
    )
