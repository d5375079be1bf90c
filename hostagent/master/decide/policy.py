"""The cluster's instance policy (`cluster modify --policy ...`): bounds every instance must keep. Pure.

Ganeti's instance policy in small: a lab sets "no VM over 4G or 4 vCPUs, at
most 4 disks of 100G" once, and `instance add` and `instance modify` refuse
what goes beyond it, naming the bound.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from hostagent.units import SizeError, format_mib, parse_mib

# request field -> (stored field, is a size)
FIELDS = {"min_memory": ("min_memory_mib", True), "max_memory": ("max_memory_mib", True),
          "min_vcpus": ("min_vcpus", False), "max_vcpus": ("max_vcpus", False),
          "max_disks": ("max_disks", False), "max_disk_size": ("max_disk_mib", True)}
WORDS = "min_memory, max_memory, max_disk_size (sizes such as 4G); min_vcpus, max_vcpus, max_disks (whole numbers)"


def parse(request: Any, problems: list[str]) -> dict[str, int]:
    """The stored policy for a `--policy` request; an empty value (or null) lifts that bound."""
    if not isinstance(request, dict):
        problems.append(f"policy: {request!r} is not an object of bounds ({WORDS})")
        return {}
    policy: dict[str, int] = {}
    for key, value in request.items():
        if key not in FIELDS:
            problems.append(f"policy: unknown bound '{key}' ({WORDS})")
            continue
        stored, size = FIELDS[key]
        if value in (None, ""):
            continue
        try:
            number = parse_mib(value, f"policy {key}") if size else _whole(value, key)
        except (SizeError, ValueError) as exc:
            problems.append(str(exc))
            continue
        policy[stored] = number
    for low, high in (("min_memory_mib", "max_memory_mib"), ("min_vcpus", "max_vcpus")):
        if low in policy and high in policy and policy[low] > policy[high]:
            problems.append(f"policy: {low.replace('_mib', '')} is above {high.replace('_mib', '')}")
    return policy


def _whole(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"policy {key}: {value!r} is not a whole number of at least 1")
    return value


def violations(memory_mib: int, vcpus: int, disk_sizes_mib: Sequence[int],
               policy: Mapping[str, int]) -> list[str]:
    """What an instance of this shape breaks of the policy; empty when it fits."""
    out = []
    if memory_mib < policy.get("min_memory_mib", 0):
        out.append(f"memory {format_mib(memory_mib)} is below the cluster's policy minimum "
                   f"{format_mib(policy['min_memory_mib'])}")
    if "max_memory_mib" in policy and memory_mib > policy["max_memory_mib"]:
        out.append(f"memory {format_mib(memory_mib)} is above the cluster's policy maximum "
                   f"{format_mib(policy['max_memory_mib'])}")
    if vcpus < policy.get("min_vcpus", 0):
        out.append(f"{vcpus} vCPUs is below the cluster's policy minimum {policy['min_vcpus']}")
    if "max_vcpus" in policy and vcpus > policy["max_vcpus"]:
        out.append(f"{vcpus} vCPUs is above the cluster's policy maximum {policy['max_vcpus']}")
    if "max_disks" in policy and len(disk_sizes_mib) > policy["max_disks"]:
        out.append(f"{len(disk_sizes_mib)} disks is above the cluster's policy maximum {policy['max_disks']}")
    big = [s for s in disk_sizes_mib if s > policy.get("max_disk_mib", s)]
    if big:
        out.append(f"a disk of {format_mib(max(big))} is above the cluster's policy maximum disk size "
                   f"{format_mib(policy['max_disk_mib'])}")
    return [f"{v} (`corral cluster info` shows the policy)" for v in out]
