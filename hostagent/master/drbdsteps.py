"""The master's steps that only the `drbd` template takes: dual-primary around a live migration's switchover,
a new secondary, activate-disks. Everything else about drbd instances goes through the same jobs as
`mirror` (hostagent.master.moves, hostagent.master.diskops): one replica record, one failover decision."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from hostagent import model
from hostagent.master.jobs import JobContext, JobFailed
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


async def activate(store: Store, ctx: JobContext, inst: dict[str, Any]) -> dict[str, Any]:
    """Ganeti's activate-disks: both nodes' resources up and connected, the primary's Primary, so its
    devices can be used for maintenance (they go back to Secondary when the instance next stops)."""
    name, primary = inst["name"], inst["primary_node"]
    await store.order(inst["secondary_node"], "drbd.prepare", {"instance": inst})
    devices = (await store.order(primary, "drbd.activate", {"instance": inst}))["devices"]
    for path in devices:
        await ctx.log(f"disk of '{name}' on node '{primary}': {path} (DRBD, Primary there)")
    return {"name": name, "node": primary, "paths": devices}
