"""Which node should join or leave the master-candidate pool (the etcd members).

Pure: the master calls it every pass with the config and reports, and carries
out at most one change, so etcd membership changes one member at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hostagent.status import report_fresh

DEFAULT_POOL_SIZE = 3
MAX_POOL_SIZE = 5


@dataclass(frozen=True)
class PoolChange:
    action: str  # "promote" | "demote"
    node: str
    reason: str


def wanted_size(target: int, eligible: int) -> int:
    """The largest odd number <= target and <= eligible nodes (at least 1)."""
    size = max(1, min(target, MAX_POOL_SIZE, eligible))
    return size if size % 2 else size - 1


def _healthy(node: dict[str, Any], reports: dict[str, dict[str, Any]], now: float) -> bool:
    return report_fresh(reports.get(node["name"]), now) and not node.get("offline")


def next_change(nodes: list[dict[str, Any]], reports: dict[str, dict[str, Any]], master: str,
                target: int, now: float) -> PoolChange | None:
    candidates = [n for n in nodes if n.get("candidate")]
    for node in candidates:  # a candidate that may no longer be one goes first
        if node["name"] == master:
            continue
        if not node.get("master_capable", True):
            return PoolChange("demote", node["name"], "marked --candidate no")
        if node.get("offline"):
            return PoolChange("demote", node["name"], "marked offline")
    # The size follows the nodes that may be candidates, not their health: a dead
    # member must not make the master shrink the pool around it.
    capable = [n for n in nodes if n.get("master_capable", True) and not n.get("offline")]
    size = wanted_size(target, len(capable))
    eligible = [n for n in capable if _healthy(n, reports, now)]
    if len(candidates) > size:
        victim = sorted((c for c in candidates if c["name"] != master), key=lambda c: -c.get("added", 0))
        if victim:
            return PoolChange("demote", victim[0]["name"], f"the pool wants {size} members, has {len(candidates)}")
    if len(candidates) < size:
        spare = sorted((n for n in eligible if not n.get("candidate")), key=lambda n: n.get("added", 0))
        # From an odd pool, grow only when two healthy spares exist: an even pool is
        # less safe than the odd one below it (either loss costs the quorum).
        if spare and (len(candidates) % 2 == 0 or len(spare) >= 2):
            return PoolChange("promote", spare[0]["name"], f"the pool wants {size} members, has {len(candidates)}")
        if len(candidates) % 2 == 0:
            victim = sorted((c for c in candidates if c["name"] != master), key=lambda c: -c.get("added", 0))
            if victim:
                return PoolChange("demote", victim[0]["name"],
                                  f"no healthy spare to make the pool odd again ({len(candidates)} members)")
    return None
