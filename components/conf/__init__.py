"""Pure renderers of the configuration files the platform deploys.

Shared by the GKE stack and the local platform.
"""

from collections.abc import Sequence


def zone_of(index: int, zones: Sequence[str]) -> str:
    """Where member ``index`` of a replicated server group lives: zone i mod n, so the
    first n members are one per zone and the rest share zones in turn (4 PostgreSQL members
    in 3 zones: pg-3 with pg-0; 6 Redis nodes: masters 0-2 and replicas 3-5 one per zone)."""
    return zones[index % len(zones)]
