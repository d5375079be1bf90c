"""The master's side of `corral instance snapshot NAME create|list|revert|remove [SNAP]`.

A snapshot is held by the instance's primary node, beside its disks (hostagent.node.snapshots); the node's
report lists them, so `instance info` and `node info` show them and the space they take without asking.
Every check that can fail on bad input runs at submit, before a job exists. A revert needs the instance
stopped and discards what its disks hold now (confirmed with --yes); a `mirror` instance's copy on its
secondary then no longer matches, so it is recorded out of date and made anew at the next start. A `drbd`
instance's secondary is told to forget its copy first (fresh DRBD metadata), so that when both are up again
DRBD copies every block to it: a copy that no longer matches never counts as in sync, even if the job is cut
short anywhere.

`plain` and `drbd` snapshots are LVM snapshots (storage.lvmsnap): checked here against the volume group the
primary reports (the LVs' names must fit LVM, their space must be free).
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

from storage.errors import InvalidName
from storage.filesnap import SNAPSHOT_NAME_RE, SNAPSHOT_NAME_RULE
from storage.lvmsnap import cow_mib, snapshot_lv_name

from hostagent import model
from hostagent.errors import BadRequest, Conflict, NotFound
from hostagent.master import drbdsteps
from hostagent.master.following import CONSISTENCY_WORDS, follow
from hostagent.master.jobs import Handler, JobContext, job_errors
from hostagent.master.moves import Moves
from hostagent.master.store import Store
from hostagent.units import format_mib

SNAPSHOT_OPS = ("instance.snapshot-create", "instance.snapshot-revert", "instance.snapshot-remove")
SNAPSHOT_TIMEOUT_S = 6 * 3600.0


class Snapshots:
    """Submit checks and jobs of instance snapshots."""

    def __init__(self, store: Store, moves: Moves) -> None:
        self.store, self.moves = store, moves

    def handlers(self) -> dict[str, Handler]:
        return {"instance.snapshot-create": job_errors(self._job_create),
                "instance.snapshot-revert": job_errors(self._job_revert),
                "instance.snapshot-remove": job_errors(self._job_remove)}

    async def check(self, op: str, name: str, params: dict[str, Any]) -> None:
        """BadRequest/Conflict/NotFound before a job exists."""
        inst = await self.store.instance(name)
        snap = params.get("snapshot")
        if not isinstance(snap, str) or not SNAPSHOT_NAME_RE.fullmatch(snap):
            raise BadRequest(f"snapshot name {snap!r} is not valid: use {SNAPSHOT_NAME_RULE}")
        report = await self.store.get(model.report_key(inst["primary_node"])) or {}
        held = {s["name"] for s in (report.get("snapshots") or {}).get(name, [])}
        secondary = inst.get("secondary_node")
        elsewhere = {s["name"] for s in ((await self.store.get(model.report_key(secondary)) or {})
                                         .get("snapshots") or {}).get(name, [])} if secondary else set()
        if op == "instance.snapshot-create":
            if snap in held | elsewhere:
                raise Conflict(f"instance '{name}' already has a snapshot named '{snap}'")
            if inst["disk_template"] in model.ON_LVM:
                check_lvm_room(inst, snap, report)
            return
        if snap in elsewhere - held:
            raise Conflict(f"snapshot '{snap}' of '{name}' is held by node '{secondary}', where the instance ran "
                           f"when it was made: migrate or fail it over back there first (`corral instance migrate "
                           f"{name}`)")
        if snap not in held:
            where = f"node '{inst['primary_node']}'"
            raise NotFound(f"instance '{name}' has no snapshot named '{snap}' on {where}, its primary"
                           + (f" (it has: {', '.join(sorted(held))})" if held else " (it has none)"))
        if op == "instance.snapshot-revert":
            if not params.get("yes"):
                raise BadRequest(f"reverting '{name}' to snapshot '{snap}' discards what its disks hold now: "
                                 "confirm with --yes")
            if inst["admin_state"] == "up" or name in (report.get("instances") or {}):
                raise Conflict(f"instance '{name}' is running (or marked up): a snapshot is reverted only while "
                               f"it is stopped (`corral instance stop {name}`)")
            if inst["disk_template"] == "drbd" and not await self.moves.alive(str(secondary)):
                raise Conflict(f"node '{secondary}', the secondary of '{name}', does not report: a revert makes its "
                               "copy start afresh, which needs it up (or replace it: `corral instance "
                               f"replace-secondary {name}`)")

    def _order(self, inst: dict[str, Any], snap: str) -> dict[str, Any]:
        return {"name": inst["name"], "snapshot": snap, "disks": inst["disks"],
                "disk_template": inst["disk_template"], "instance": inst}

    async def _job_create(self, ctx: JobContext, args: dict[str, Any]) -> dict[str, Any]:
        inst = await self.store.instance(args["name"])
        name, snap, node = inst["name"], args["snapshot"], inst["primary_node"]
        started = self.store.clock.monotonic()
        made = await follow(self.store, ctx, node, "instance.snapshot-status", name, self.store.order(
            node, "instance.snapshot-create", self._order(inst, snap), timeout_s=SNAPSHOT_TIMEOUT_S),
            f"copying the disks of '{name}'")
        await ctx.log(f"snapshot '{snap}' of '{name}' made on node '{node}' in "
                      f"{self.store.clock.monotonic() - started:.1f} s: "
                      + CONSISTENCY_WORDS.get(made["consistency"], made["consistency"])
                      + f"; {format_mib(int(made['used_bytes']) >> 20)} on disk")
        return {"name": name, "snapshot": made}

    async def _job_revert(self, ctx: JobContext, args: dict[str, Any]) -> dict[str, Any]:
        await self.check("instance.snapshot-revert", args["name"], dict(args))  # still stopped, still there
        inst = await self.store.instance(args["name"])
        name, snap = inst["name"], args["snapshot"]

        def revert() -> Awaitable[Any]:
            return self.store.order(inst["primary_node"], "instance.snapshot-revert", self._order(inst, snap),
                                    timeout_s=SNAPSHOT_TIMEOUT_S)

        await drbdsteps.rewrite_disks(self.store, self.moves, ctx, inst, f"disks reverted to snapshot '{snap}'", revert)
        await ctx.log(f"the disks of '{name}' on node '{inst['primary_node']}' hold snapshot '{snap}' again"
                      + (f"; its copy on node '{inst['secondary_node']}' is made anew when it next runs"
                         if inst.get("secondary_node") and inst["disk_template"] != "drbd" else ""))
        return {"name": name, "reverted": snap}

    async def _job_remove(self, ctx: JobContext, args: dict[str, Any]) -> dict[str, Any]:
        inst = await self.store.instance(args["name"])
        name, snap = inst["name"], args["snapshot"]
        done = await self.store.order(inst["primary_node"], "instance.snapshot-remove", self._order(inst, snap))
        await ctx.log(f"snapshot '{snap}' of '{name}' removed" if done["removed"] else
                      f"snapshot '{snap}' of '{name}' was already gone")
        return {"name": name, "removed": snap}


def check_lvm_room(inst: dict[str, Any], snap: str, report: dict[str, Any]) -> None:
    """An LVM snapshot's names fit LVM and its space is free in the primary's volume group (as last reported;
    the node checks again)."""
    lvm = report.get("lvm") or {}
    if "vg" not in lvm:
        return  # no report of it yet: the node's own check says what is wrong
    try:
        for disk in inst["disks"]:
            snapshot_lv_name(str(lvm["vg"]), inst["name"], int(disk["index"]), snap)
    except InvalidName as exc:
        raise BadRequest(str(exc)) from None
    needed = sum(cow_mib(int(d["size_mib"])) for d in inst["disks"])
    free = lvm.get("free_mib")
    if isinstance(free, int) and needed > free:
        raise Conflict(f"snapshot '{snap}' of '{inst['name']}' needs {format_mib(needed)} free in volume group "
                       f"{lvm['vg']} on node '{inst['primary_node']}' (its disks' size, so it can never fill up), "
                       f"which has {format_mib(free)} free: remove a snapshot or grow the volume group")


async def refuse_with_lvm_snapshots(store: Store, inst: dict[str, Any], what: str) -> None:
    """Conflict when the instance's disks are LVs with snapshots on either node: LVM grows no active origin,
    a removed LV takes its snapshots along, and a renamed one leaves them under the old name."""
    if inst.get("disk_template") not in model.ON_LVM:
        return
    held = sorted({s["name"] for node in filter(None, (inst["primary_node"], inst.get("secondary_node")))
                   for s in (((await store.get(model.report_key(node)) or {}).get("snapshots") or {})
                             .get(inst["name"]) or [])})
    if held:
        raise Conflict(f"instance '{inst['name']}' has LVM snapshots ({', '.join(held)}): {what} only without "
                       f"them; `corral instance snapshot {inst['name']} remove SNAP` first")
