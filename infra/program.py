"""The Pulumi program: config first (fail before any resource exists), then the platform."""

from __future__ import annotations

import pulumi

from stacks.config import from_pulumi
from stacks.platform import Platform


def main() -> Platform:
    config, secrets = from_pulumi()
    platform = Platform(config, secrets)
    pulumi.export("cluster", platform.cluster.cluster.name)
    pulumi.export("gateway", platform.gateway_address)
    pulumi.export("images", platform.images.refs)
    return platform
