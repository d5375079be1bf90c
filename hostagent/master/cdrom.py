"""An instance's CD-ROM, the master's side: the path asked for, checked on the instance's nodes before a job
exists, and the medium of a running guest changed live.

The record's `cdrom`: absent (or None) - no drive; "" - a drive, empty; a path
- a drive holding that ISO. Once an instance has a drive it keeps it
(`modify --cdrom none` ejects), so every later medium goes in live. A running
instance that started without a drive cannot get one live (q35's AHCI has no
hot-plug): its path waits in `pending` (hostagent.master.pending) for the next start,
like memory. The node judges every path (hostagent.node.media).
"""

from __future__ import annotations

from typing import Any

from hostagent.errors import BadRequest, Conflict
from hostagent.master.jobs import JobContext, JobFailed
from hostagent.master.store import Store

CHECK_TIMEOUT_S = 10.0


def nodes_of(inst: dict[str, Any]) -> list[str]:
    return [inst["primary_node"], *([inst["secondary_node"]] if inst.get("secondary_node") else [])]


async def check_on(store: Store, path: str, nodes: list[str]) -> None:
    """BadRequest naming each node where `path` is not a CD-ROM image it would give a guest."""
    problems = []
    for node in nodes:
        try:
            answer = await store.order(node, "instance.cdrom-check", {"path": path}, timeout_s=CHECK_TIMEOUT_S)
        except JobFailed as exc:
            raise Conflict(f"cannot check the CD-ROM image on node '{node}': {exc}") from None
        if answer.get("problem"):
            problems.append(str(answer["problem"]))
    if problems:
        raise BadRequest("; ".join(problems))


async def check_target(store: Store, inst: dict[str, Any], target: str, verb: str) -> None:
    """Before a migration or failover: the target node must have the CD the guest holds."""
    path = inst.get("cdrom")
    if not path:
        return
    try:
        await check_on(store, path, [target])
    except BadRequest as exc:
        raise BadRequest(f"cannot {verb} instance '{inst['name']}' to node '{target}': its CD-ROM: {exc}; "
                         f"copy the image there, or eject it (`corral instance modify {inst['name']} "
                         "--cdrom none`)") from None


async def apply_live(store: Store, ctx: JobContext, inst: dict[str, Any]) -> None:
    """After `instance modify` wrote `inst`: a guest running with a drive gets its new medium now."""
    name = inst["name"]
    if "cdrom" in (inst.get("pending") or {}):
        await ctx.log(f"instance '{name}' runs without a CD-ROM drive: it gets one, with "
                      f"{inst['pending']['cdrom'] or 'no medium'}, at its next start")
        return
    if not await store.running(inst):
        return
    answer = await store.order(inst["primary_node"], "instance.cdrom-change", {"name": name, "path": inst["cdrom"]})
    if answer.get("live"):
        what = f"now holds {answer['medium']}" if answer.get("medium") else "is empty (ejected)"
        await ctx.log(f"instance '{name}': the CD-ROM drive of the running guest {what}")
