"""Reading Kubernetes objects as the policy engine hands them over (camelCase inputs).

Values may be unknown during a preview; the engine's proxy raises `UnknownValueError` when a
rule touches one, and the engine reports that the rule could not run. So these helpers never
catch it, and never guess a default for a value that exists but is unknown.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

K8S = "kubernetes:"
# Workload kinds and where their pod template sits.
POD_PATHS: dict[str, tuple[str, ...]] = {
    "kubernetes:apps/v1:Deployment": ("spec", "template"),
    "kubernetes:apps/v1:StatefulSet": ("spec", "template"),
    "kubernetes:apps/v1:DaemonSet": ("spec", "template"),
    "kubernetes:apps/v1:ReplicaSet": ("spec", "template"),
    "kubernetes:batch/v1:Job": ("spec", "template"),
    "kubernetes:batch/v1:CronJob": ("spec", "jobTemplate", "spec", "template"),
    "kubernetes:core/v1:Pod": (),
}


def dig(value: Any, *path: str) -> Any:
    """`value[path0][path1]...`, or None where a key is absent (absent, not unknown)."""
    for key in path:
        if not isinstance(value, Mapping) or key not in value:
            return None
        value = value[key]
    return value


def items(value: Any) -> Sequence[Any]:
    """A list property, or an empty one when it is absent."""
    return value if isinstance(value, Sequence) and not isinstance(value, str) else ()


def pod_template(resource_type: str, props: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The pod template ({metadata, spec}) of a workload, or None for other kinds."""
    if resource_type not in POD_PATHS:
        return None
    template = dig(props, *POD_PATHS[resource_type]) if POD_PATHS[resource_type] else props
    return template if isinstance(template, Mapping) else {}


def containers(pod_spec: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    for key in ("initContainers", "containers", "ephemeralContainers"):
        yield from items(dig(pod_spec, key))


def number(value: Any) -> Any:
    """The engine passes every number as a float: show whole ones as integers."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def name_of(props: Mapping[str, Any], fallback: str) -> str:
    name = dig(props, "metadata", "name")
    return str(name) if name else fallback


def labels_of(props: Mapping[str, Any]) -> Mapping[str, Any]:
    labels = dig(props, "metadata", "labels")
    return labels if isinstance(labels, Mapping) else {}
