"""Changes to a running instance that wait for its next start: memory, vCPUs, hypervisor parameters, and the
first CD-ROM of an instance that started without a drive (hostagent.master.cdrom).

A QEMU's memory, CPUs and most of its parameters are fixed while it runs (and a
live migration must start its destination exactly like its source), so
`instance modify` on a running instance records them apart, as `pending`; the
next cold start (start, reboot, failover, a restart after a crash) applies
them first. A stopped instance takes them at once. Pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

RESTART_FIELDS = ("memory_mib", "vcpus", "hvparams")


def effective(inst: Mapping[str, Any]) -> dict[str, Any]:
    """The instance as it will be at its next start."""
    return {**inst, **(inst.get("pending") or {})}


def split(inst: Mapping[str, Any], target: Mapping[str, Any], running: bool) -> dict[str, Any]:
    """The record to write for `target` (the instance as the operator wants it): a running instance keeps
    its current memory, CPUs and parameters, with what differs from them pending; a stopped one takes all."""
    new = dict(target)
    new.pop("pending", None)
    if not running:
        return new
    pending = {k: target[k] for k in RESTART_FIELDS if k in target and target[k] != inst.get(k)}
    if target.get("cdrom") is not None and inst.get("cdrom") is None:  # no drive in this QEMU (hostagent.master.cdrom)
        pending["cdrom"] = target["cdrom"]
        new["cdrom"] = inst.get("cdrom")
    for key in RESTART_FIELDS:
        if key in inst:
            new[key] = inst[key]
    if pending:
        new["pending"] = pending
    return new


def apply(inst: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the record with its pending changes made current, what changed: field -> (old, new))."""
    pending = dict(inst.get("pending") or {})
    new = {k: v for k, v in inst.items() if k != "pending"}
    changed = {k: (inst.get(k), v) for k, v in pending.items() if inst.get(k) != v}
    new.update(pending)
    return new, changed
