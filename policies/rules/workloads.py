"""Workload security: what every pod the platform runs must look like."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pulumi_policy import (
    EnforcementLevel,
    PolicyConfigSchema,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
)

from policies.rules.kube import K8S, containers, dig, items, labels_of, number, pod_template

# The pack reads the names the components write; tests/policies holds the two equal.
POOL_LABEL = "shop.platform/pool"  # every node pool's
DEDICATED_TAINT = "shop.platform/dedicated"  # the tainted pools' NoSchedule key
MIN_UID = 10000
# Env names that carry a secret when they hold a literal value (a *_FILE path is fine).
SECRET_NAME = re.compile(
    r"(PASSWORD|PASSWD|SECRET|TOKEN|API_?KEY|PRIVATE_?KEY|CREDENTIALS?)$", re.I
)
# `key = value` / `key: value` / `key value` lines that set a secret to a literal in a file.
SECRET_ASSIGNMENT = re.compile(
    r"^\s*(requirepass|masterauth|password|passwd|secret|api[_-]?key|auth[_-]?token|"
    r"access[_-]?key|private[_-]?key)\s*(=|:|\s)\s*(?P<value>\S.*)$",
    re.I | re.M,
)
EMPTY_VALUES = {"''", '""', "", "null", "none", "~"}
IMMUTABLE_TAG = re.compile(r"^v?\d+\.\d+\.\d+([.-][0-9A-Za-z.-]+)?$")


def _restricted(args: ResourceValidationArgs, report: ReportViolation) -> None:
    template = pod_template(args.resource_type, args.props)
    if template is None:
        return
    spec = dig(template, "spec") or {}
    pod_context = dig(spec, "securityContext") or {}
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if dig(spec, key) is True:
            report(f"pod uses the host's namespaces ({key}: true)", None)
    for volume in items(dig(spec, "volumes")):
        if dig(volume, "hostPath") is not None:
            report(f"volume {dig(volume, 'name')} mounts a hostPath", None)
    pod_seccomp = dig(pod_context, "seccompProfile", "type")
    for container in containers(spec):
        name = dig(container, "name")
        context = dig(container, "securityContext") or {}

        def setting(key: str, context: Mapping[str, Any] = context) -> Any:
            own = dig(context, key)
            return own if own is not None else dig(pod_context, key)

        if setting("runAsNonRoot") is not True:
            report(f"container {name}: runAsNonRoot must be true", None)
        uid = setting("runAsUser")
        if not isinstance(uid, int | float) or uid < MIN_UID:
            report(f"container {name}: runAsUser must be >= {MIN_UID}, got {number(uid)}", None)
        if dig(context, "readOnlyRootFilesystem") is not True:
            report(f"container {name}: readOnlyRootFilesystem must be true", None)
        if dig(context, "allowPrivilegeEscalation") is not False:
            report(f"container {name}: allowPrivilegeEscalation must be false", None)
        if dig(context, "privileged") is True:
            report(f"container {name}: must not be privileged", None)
        dropped = [str(c).upper() for c in items(dig(context, "capabilities", "drop"))]
        if "ALL" not in dropped:
            report(f"container {name}: capabilities must drop ALL", None)
        if items(dig(context, "capabilities", "add")):
            report(f"container {name}: must not add capabilities", None)
        seccomp = dig(context, "seccompProfile", "type") or pod_seccomp
        if seccomp not in ("RuntimeDefault", "Localhost"):
            report(f"container {name}: seccompProfile must be RuntimeDefault, got {seccomp}", None)


restricted_pod_security = ResourceValidationPolicy(
    name="restricted-pod-security",
    description="Every pod runs restricted: non-root UID >= 10000, read-only root filesystem, "
    "no privilege escalation, all capabilities dropped, seccomp RuntimeDefault, no host access.",
    enforcement_level=EnforcementLevel.MANDATORY,
    validate=_restricted,
)


def _resources(args: ResourceValidationArgs, report: ReportViolation) -> None:
    template = pod_template(args.resource_type, args.props)
    if template is None:
        return
    for container in containers(dig(template, "spec") or {}):
        for kind in ("requests", "limits"):
            values = dig(container, "resources", kind) or {}
            missing = [r for r in ("cpu", "memory") if dig(values, r) is None]
            if missing:
                report(
                    f"container {dig(container, 'name')}: no {kind} for {', '.join(missing)}", None
                )


resources_required = ResourceValidationPolicy(
    name="resources-required",
    description="Every container declares CPU and memory requests and limits.",
    enforcement_level=EnforcementLevel.MANDATORY,
    validate=_resources,
)


def pinned(image: str) -> bool:
    """Pinned by digest, or by a full version tag (never `latest`, never no tag)."""
    if "@sha256:" in image:
        return True
    last = image.rsplit("/", 1)[-1]
    if ":" not in last:
        return False
    return bool(IMMUTABLE_TAG.match(last.rsplit(":", 1)[1]))


def _images(args: ResourceValidationArgs, report: ReportViolation) -> None:
    template = pod_template(args.resource_type, args.props)
    if template is None:
        return
    for container in containers(dig(template, "spec") or {}):
        image = dig(container, "image")
        if not isinstance(image, str) or not pinned(image):
            report(
                f"container {dig(container, 'name')}: image {image!r} is not pinned "
                "(use repo@sha256:<digest> or a full version tag, never latest)",
                None,
            )


images_pinned = ResourceValidationPolicy(
    name="images-pinned",
    description="Images are pinned by digest or an immutable version tag, never `latest`.",
    enforcement_level=EnforcementLevel.MANDATORY,
    validate=_images,
)


def _plain_secrets(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type == "kubernetes:core/v1:ConfigMap":
        for key, text in (dig(args.props, "data") or {}).items():
            if SECRET_NAME.search(str(key).replace("-", "_").replace(".", "_")):
                report(f"ConfigMap key {key!r} looks like a secret: put it in a Secret", None)
                continue
            for match in SECRET_ASSIGNMENT.finditer(str(text)):
                if match.group("value").strip().lower() not in EMPTY_VALUES:
                    report(f"ConfigMap {key}: sets {match.group(1)} to a literal value", None)
        return
    template = pod_template(args.resource_type, args.props)
    if template is None:
        return
    for container in containers(dig(template, "spec") or {}):
        for env in items(dig(container, "env")):
            name = str(dig(env, "name"))
            if SECRET_NAME.search(name) and dig(env, "value") is not None:
                report(
                    f"container {dig(container, 'name')}: env {name} holds a literal secret "
                    "(mount a Secret as a file, or use secretKeyRef)",
                    None,
                )


no_plain_secrets = ResourceValidationPolicy(
    name="no-plain-secrets",
    description="No secret values in plain environment variables or ConfigMaps: Secrets only.",
    enforcement_level=EnforcementLevel.MANDATORY,
    validate=_plain_secrets,
)


def _dedicated(
    spec: Mapping[str, Any], pool: str
) -> list[str]:  # what keeps a pod off its dedicated pool, if anything
    problems = []
    if dig(spec, "nodeSelector", POOL_LABEL) != pool:
        problems.append(f"nodeSelector {POOL_LABEL}={pool} is missing")
    tolerated = any(
        dig(t, "key") == DEDICATED_TAINT
        and dig(t, "value") == pool
        and dig(t, "effect") in (None, "NoSchedule")
        for t in items(dig(spec, "tolerations"))
    )
    if not tolerated:
        problems.append(f"no toleration for the {DEDICATED_TAINT}={pool} taint")
    return problems


def _tier_placement(args: ResourceValidationArgs, report: ReportViolation) -> None:
    template = pod_template(args.resource_type, args.props)
    if template is None:
        return
    pools: Mapping[str, str] = args.get_config().get("tierPools", TIER_POOLS)
    tier = labels_of(template).get("tier")
    if tier in pools:
        for problem in _dedicated(dig(template, "spec") or {}, pools[tier]):
            report(f"{tier} pod must run only on the {pools[tier]} pool: {problem}", None)


TIER_POOLS = {"data": "databases", "cache": "caches"}

data_tier_on_tainted_pools = ResourceValidationPolicy(
    name="data-tier-on-tainted-pools",
    description="Database and cache pods run only on their tainted node pools.",
    enforcement_level=EnforcementLevel.MANDATORY,
    validate=_tier_placement,
    config_schema=PolicyConfigSchema(
        properties={"tierPools": {"type": "object", "additionalProperties": {"type": "string"}}}
    ),
)


def _payment_placement(args: ResourceValidationArgs, report: ReportViolation) -> None:
    template = pod_template(args.resource_type, args.props)
    if template is None:
        return
    config = args.get_config()
    if labels_of(template).get("app") == config.get("app", "payment"):
        for problem in _dedicated(dig(template, "spec") or {}, config.get("pool", "payments")):
            report(f"payment pods run only on their dedicated nodes: {problem}", None)


payment_on_dedicated_nodes = ResourceValidationPolicy(
    name="payment-on-dedicated-nodes",
    description="The payment service runs only on its dedicated, tainted nodes.",
    enforcement_level=EnforcementLevel.MANDATORY,
    validate=_payment_placement,
    config_schema=PolicyConfigSchema(
        properties={"app": {"type": "string"}, "pool": {"type": "string"}}
    ),
)


def _hpa_bounds(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type != "kubernetes:autoscaling/v2:HorizontalPodAutoscaler":
        return
    low = number(dig(args.props, "spec", "minReplicas"))
    high = number(dig(args.props, "spec", "maxReplicas"))
    low = 1 if low is None else low  # Kubernetes' default
    floor = number(args.get_config().get("minReplicasFloor", 1))
    if high is not None and low > high:
        report(f"minReplicas ({low}) is above maxReplicas ({high})", None)
    if low < floor:
        report(
            f"minReplicas must be >= {floor} in this stack (got {low}): one pod is no redundancy",
            None,
        )


hpa_bounds = ResourceValidationPolicy(
    name="hpa-bounds",
    description="Autoscalers have minReplicas <= maxReplicas, and at least the stack's floor "
    "(2 in prod).",
    enforcement_level=EnforcementLevel.MANDATORY,
    validate=_hpa_bounds,
    config_schema=PolicyConfigSchema(
        properties={"minReplicasFloor": {"type": "integer", "minimum": 1}}
    ),
)

POLICIES = [
    restricted_pod_security,
    resources_required,
    images_pinned,
    no_plain_secrets,
    data_tier_on_tainted_pools,
    payment_on_dedicated_nodes,
    hpa_bounds,
]

__all__ = ["K8S", "POLICIES"]
