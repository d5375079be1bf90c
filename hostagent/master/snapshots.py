"""The master's side of `corral instance snapshot NAME create|list|revert|remove [SNAP]`.

A snapshot is held by the instance's primary node, beside its disks (hostagent.node.snapshots); the node's
report lists them, so `instance info` and `node info` show them and the space they take without asking.
Every check that can fail on bad input runs at submit, before a job exists. A revert needs the instance
stopped and discards what its disks hold now (confirmed with --yes); a `mirror` instance's copy on its
secondary then no longer matches, so it is recorded out of date and made anew at the next start.
"""

from __future__ import annotations

from typing import Any

from storage.filesnap import SNAPSHOT_NAME_RE, SNAPSHOT_NAME_RULE

from hostagent import model
from hostagent.errors import BadRequest, Conflict, NotFound
from hostagent.master.following import CONSISTENCY_WORDS, follow
from hostagent.master.jobs import Handler, JobContext, job_errors
from hostagent.master.moves import Moves
from hostagent.master.store import Store
from hostagent.units import format_mib

SNAPSHOT_OPS = ("instance.snapshot-create", "instance.snapshot-revert", "instance.snapshot-remove")
TEMPLATES = ("file", "mirror")
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
        if inst["disk_template"] not in TEMPLATES:
            raise BadRequest(f"instance '{name}' has {inst['disk_template']} disks: snapshots are made of "
                             f"{' and '.join(TEMPLATES)} instances so far")
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

    def _order(self, inst: dict[str, Any], snap: str) -> dict[str, Any]:
        return {"name": inst["name"], "snapshot": snap, "disks": inst["disks"],
                "disk_template": inst["disk_template"]}

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
        if inst.get("secondary_node"):  # before the disks change: a copy never counts as in sync with them
            await self.moves.outdate(name, f"disks reverted to snapshot '{snap}'; the copy is made anew")
        await self.store.order(inst["primary_node"], "instance.snapshot-revert", self._order(inst, snap),
                               timeout_s=SNAPSHOT_TIMEOUT_S)
        await ctx.log(f"the disks of '{name}' on node '{inst['primary_node']}' hold snapshot '{snap}' again"
                      + (f"; its copy on node '{inst['secondary_node']}' is made anew when it next runs"
                         if inst.get("secondary_node") else ""))
        return {"name": name, "reverted": snap}

    async def _job_remove(self, ctx: JobContext, args: dict[str, Any]) -> dict[str, Any]:
        inst = await self.store.instance(args["name"])
        name, snap = inst["name"], args["snapshot"]
        done = await self.store.order(inst["primary_node"], "instance.snapshot-remove", self._order(inst, snap))
        await ctx.log(f"snapshot '{snap}' of '{name}' removed" if done["removed"] else
                      f"snapshot '{snap}' of '{name}' was already gone")
        return {"name": name, "removed": snap}
