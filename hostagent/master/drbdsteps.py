"""The master's steps that only the `drbd` template takes: dual-primary around a live migration's switchover,
a new secondary, activate-disks, a disk grown on both nodes. Everything else about drbd instances goes through the same jobs as
`mirror` (hostagent.master.moves, hostagent.master.diskops): one replica record, one failover decision."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from hostagent import model
from hostagent.errors import BadRequest, Conflict
from hostagent.master.jobs import JobContext, JobFailed
from hostagent.status import describe_mirrors
from hostagent.units import format_mib
from election.etcd import Op

from hostagent.master.store import Store



class Copies(Protocol):
    """What a new secondary needs of hostagent.master.moves.Moves (the replica record and protect)."""

    async def outdate(self, name: str, why: str, copy_on: str | None = None, gen: int | None = None) -> None: ...

    async def protect(self, ctx: JobContext | None, inst: dict[str, Any]) -> bool: ...


async def dual_primary(store: Store, ctx: JobContext, inst: dict[str, Any], target: str) -> None:
    """Both nodes Primary for the switchover only (as Ganeti does): the target's waiting QEMU opens the disks."""
    await ctx.log(f"DRBD of '{inst['name']}': both nodes Primary until the switchover")
    for node in (inst["primary_node"], target):
        await store.order(node, "drbd.dual-primary", {"instance": inst, "allow": True})
    await store.order(target, "drbd.activate", {"instance": inst})


async def single_primary(store: Store, ctx: JobContext, inst: dict[str, Any], release: str) -> None:
    """After a switchover (or its undoing): `release` Secondary again, dual-primary forbidden again."""
    steps = [(release, "drbd.release", {"name": inst["name"]})]
    steps += [(node, "drbd.dual-primary", {"instance": inst, "allow": False})
              for node in (inst["primary_node"], inst["secondary_node"])]
    for node, op, args in steps:
        try:
            await store.order(node, op, args)
        except JobFailed as exc:  # the mirror duty's next pass brings the resources back in line
            await ctx.log(f"DRBD of '{inst['name']}' on node '{node}': {exc}")


async def replace_secondary(store: Store, moves: Copies, ctx: JobContext, inst: dict[str, Any], new: str,
                            remove_disks: Callable[[JobContext, str, dict[str, Any]], Awaitable[None]]
                            ) -> dict[str, Any]:
    """The copy recorded out of date, the new node in the record, its resources up; the primary adjusted to
    the new peer (DRBD then copies every block to it, with progress), the old node's resources and LVs gone."""
    name, old = inst["name"], inst["secondary_node"]
    await moves.outdate(name, f"its secondary is being replaced: node '{old}' by node '{new}'")
    inst.update(secondary_node=new, mtime=store.clock.time())
    await store.write([Op.put(model.instance_key(name), model.dumps(inst))])
    if not await moves.protect(ctx, inst):
        raise JobFailed(f"DRBD of '{name}' could not be brought up on nodes '{inst['primary_node']}' and "
                        f"'{new}'; the master retries, and `corral instance info {name}` shows the sync")
    await remove_disks(ctx, old, inst)
    await ctx.log(f"node '{old}' no longer holds a copy of '{name}'; DRBD copies every block to node '{new}' "
                  f"(`corral instance info {name}` shows the progress)")
    return {"name": name, "secondary": new}


async def rewrite_disks(store: Store, moves: Copies, ctx: JobContext, inst: dict[str, Any], why: str,
                        rewrite: Callable[[], Awaitable[Any]]) -> None:
    """Around `rewrite` (the primary's order that writes its disks anew: a snapshot's revert, a backup's restore):
    a replicated instance's copy is recorded out of date first, so it never counts as in sync with the new disks
    wherever the job is cut short. A mirror's copy is made anew at its next start; a drbd secondary forgets its
    copy (fresh DRBD metadata) before the primary's data LVs are written underneath DRBD, so that when both are
    up again DRBD copies every block to it."""
    name, secondary = inst["name"], inst.get("secondary_node")
    if secondary:
        await moves.outdate(name, f"{why}; the copy is made anew")
    if inst["disk_template"] != "drbd":
        await rewrite()
        return
    await store.order(str(secondary), "drbd.forget", {"instance": inst})
    await ctx.log(f"the copy of '{name}' on node '{secondary}' is discarded; DRBD copies every block to it again")
    await rewrite()
    if not await moves.protect(ctx, inst):
        await ctx.log(f"DRBD of '{name}' is not up on both nodes yet: the master brings it up and the copy follows "
                      f"(`corral instance info {name}` shows the sync)")


async def activate(store: Store, ctx: JobContext, inst: dict[str, Any]) -> dict[str, Any]:
    """Ganeti's activate-disks: both nodes' resources up and connected, the primary's Primary, so its
    devices can be used for maintenance (they go back to Secondary when the instance next stops)."""
    name, primary = inst["name"], inst["primary_node"]
    await store.order(inst["secondary_node"], "drbd.prepare", {"instance": inst})
    devices = (await store.order(primary, "drbd.activate", {"instance": inst}))["devices"]
    for path in devices:
        await ctx.log(f"disk of '{name}' on node '{primary}': {path} (DRBD, Primary there)")
    return {"name": name, "node": primary, "paths": devices}


async def check_grow(store: Store, inst: dict[str, Any], index: int, size: int) -> None:
    """DRBD grows both copies at once: its metadata must hold the new size, and both nodes must be connected
    and in sync (what `drbdadm resize` needs; the new part then resyncs like any other)."""
    name = inst["name"]
    slot: dict[str, Any] = next((s for s in inst.get("drbd") or [] if int(s["index"]) == index), {})
    most = model.drbd_max_mib(int(slot.get("meta_mib") or 4))
    if size > most:
        raise BadRequest(f"disk {index} of '{name}' can grow to at most {format_mib(most)}: its DRBD metadata "
                         "volume was sized for that")
    report = await store.get(model.report_key(inst["primary_node"])) or {}
    states = report.get("mirrors", {}).get(name, [])
    if not states or any(s.get("status") != "in_sync" for s in states):
        raise Conflict(f"the disks of '{name}' are not in sync between nodes '{inst['primary_node']}' and "
                       f"'{inst['secondary_node']}' ({describe_mirrors(states)}); a DRBD disk grows on both "
                       "at once: wait until `corral instance info` says in sync")


async def grow_copy(store: Store, inst: dict[str, Any], index: int, size: int) -> None:
    """The secondary's data LV first: DRBD's resize on the primary needs room on both nodes."""
    await store.order(str(inst["secondary_node"]), "drbd.grow-copy",
                      {"instance": inst, "index": index, "size_mib": size})
