"""The master's disk operations: move, replace-secondary, activate-disks and deactivate-disks, grow-disk, add
and remove a disk.

Over 400 lines: these jobs share the placement rule for a disk's room and the copy between nodes, kept here once.

Each is checked before a job exists (`check_*`, so bad input changes
nothing) and then runs as a job that orders the nodes. Copies between nodes
reuse the mirror template's NBD export: the source node serves its disk to
the target's certificate, and the target pulls it with qemu-img.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from election.etcd import Op

from hostagent import model
from hostagent.master.decide import policy
from hostagent.master.decide.checks import DISK_FORMATS, MAX_DISKS, MAX_MIRROR_DISKS, REPLICATION_PORTS
from hostagent.errors import BadRequest, Conflict
from hostagent.master.jobs import JobContext, JobFailed
from hostagent.master.decide.placement import PlacementError, Request, check_manual, lvm_shortage
from hostagent.master import drbdsteps
from hostagent.master.moves import Moves
from hostagent.master.snapshots import refuse_with_lvm_snapshots
from hostagent.master.store import Store
from hostagent.units import SizeError, format_mib, parse_mib

COPY_POLL_S = 1.0

class DiskOps:
    def __init__(self, store: Store, moves: Moves) -> None:
        self.store = store
        self.moves = moves  # a mirrored instance's copy is outdated before its disks change, protected after

    def handlers(self) -> dict[str, Any]:
        return {"instance.move": self._job_move, "instance.replace-secondary": self._job_replace_secondary,
                "instance.activate-disks": self._job_activate, "instance.deactivate-disks": self._job_deactivate,
                "instance.grow-disk": self._job_grow,
                "instance.add-disk": self._job_add_disk, "instance.remove-disk": self._job_remove_disk}

    # ---- submit-time checks -------------------------------------------------------
    async def _room(self, inst: dict[str, Any], primary: str, secondary: str | None) -> None:
        """The same placement rules as `instance add`, with this instance left out of the count."""
        others = [i for i in await self.store.prefix(model.INSTANCES) if i["name"] != inst["name"]]
        nodes = {n["name"]: n for n in await self.store.prefix(model.NODES)}
        reports = {r["node"]: r for r in await self.store.prefix(model.REPORTS)}
        template = inst.get("disk_template")
        need = sum(d["size_mib"] + (model.drbd_meta_mib(d["size_mib"]) if template == "drbd" else 0)
                   for d in inst["disks"])
        want = Request(inst["memory_mib"], need, secondary is not None, template in model.ON_LVM, template == "drbd")
        try:
            check_manual(inst["name"], want, primary, secondary, nodes, reports, others, self.store.clock.time())
        except PlacementError as exc:
            raise BadRequest(str(exc)) from None

    async def check_move(self, name: str, params: dict[str, Any]) -> None:
        inst = await self.store.instance(name)
        target = str(params.get("node") or "")
        if not target:
            raise BadRequest("instance move needs --node NODE, the node to move the instance to")
        if target == inst["primary_node"]:
            raise BadRequest(f"instance '{name}' is already on node '{target}'")
        if inst.get("disk_template") == "drbd":
            raise BadRequest(f"instance '{name}' keeps its disks on DRBD; moving those to another node is not "
                             "supported yet")
        report = await self.store.get(model.report_key(inst["primary_node"])) or {}
        if inst["admin_state"] == "up" or name in report.get("instances", {}):
            raise Conflict(f"instance '{name}' is running; stop it first (`corral instance stop {name}`)"
                           + (", or use `corral instance migrate`" if inst.get("secondary_node") else ""))
        if target == inst.get("secondary_node"):
            raise BadRequest(f"node '{target}' is the secondary of '{name}': use `corral instance failover`")
        await self._room(inst, target, inst.get("secondary_node"))

    async def check_deactivate(self, name: str, params: dict[str, Any]) -> None:
        """Ganeti's deactivate-disks: only while nothing uses them."""
        inst = await self.store.instance(name)
        report = await self.store.get(model.report_key(inst["primary_node"])) or {}
        if name in report.get("instances", {}):
            raise Conflict(f"instance '{name}' is running on node '{inst['primary_node']}': its disks are in use; "
                           f"stop it first (`corral instance stop {name}`)")

    async def check_replace_secondary(self, name: str, params: dict[str, Any]) -> None:
        inst = await self.store.instance(name)
        target = str(params.get("node") or "")
        if not inst.get("secondary_node"):
            raise BadRequest(f"instance '{name}' ({inst['disk_template']}) has no secondary node to replace")
        if target in ("", inst["primary_node"], inst["secondary_node"]):
            raise BadRequest(f"the new secondary of '{name}' must be another node than its primary "
                             f"'{inst['primary_node']}' and its secondary '{inst['secondary_node']}'")
        await self._room(inst, inst["primary_node"], target)

    async def check_grow(self, name: str, params: dict[str, Any]) -> None:
        inst = await self.store.instance(name)
        index = params.get("disk")
        if not isinstance(index, int) or not 0 <= index < len(inst["disks"]):
            raise BadRequest(f"instance '{name}' has disks 0-{len(inst['disks']) - 1}, not {index!r}")
        try:
            size = parse_mib(params.get("size") or "", "disk size")
        except SizeError as exc:
            raise BadRequest(str(exc)) from None
        current = inst["disks"][index]["size_mib"]
        if size <= current:
            raise BadRequest(f"disk {index} of '{name}' is {format_mib(current)}; the new size must be larger "
                             "(disks only grow)")
        await refuse_with_lvm_snapshots(self.store, inst, "a disk grows")
        if inst.get("disk_template") == "drbd":
            await drbdsteps.check_grow(self.store, inst, index, size)
        if inst.get("disk_template") in model.QUORUM_MIRRORED:
            report = await self.store.get(model.report_key(inst["primary_node"])) or {}
            if name in report.get("instances", {}):
                raise BadRequest(f"instance '{name}' is running: a disk of the mirror template grows only while "
                                 f"it is stopped (its writes go to both copies through a quorum that cannot "
                                 f"change size); `corral instance stop {name}` first, then start it again")
        params["size_mib"] = size

    async def _stopped(self, inst: dict[str, Any], what: str, why: str) -> None:
        report = await self.store.get(model.report_key(inst["primary_node"])) or {}
        if inst["admin_state"] == "up" or inst["name"] in report.get("instances", {}):
            raise Conflict(f"instance '{inst['name']}' is running (or marked up); {what} while it is stopped "
                           f"(`corral instance stop {inst['name']}`): {why}")

    async def _hotpluggable(self, inst: dict[str, Any], what: str) -> None:
        """Virtio disks come and go while the instance runs (hot-plug; a replicated one's copy is then made
        or dropped by the running mirror); other disks only while it is stopped."""
        bus = (await self.store.hvparams(inst))["disk_bus"]
        if bus != "virtio":
            await self._stopped(inst, what, f"only virtio disks are hot-plugged (its disk_bus is {bus!r})")

    async def check_add_disk(self, name: str, params: dict[str, Any]) -> None:
        """A disk of a valid size and format that fits its nodes and the cluster's policy; the instance stopped."""
        inst = await self.store.instance(name)
        await self._hotpluggable(inst, "a disk is added")
        try:
            size = parse_mib(params.get("size") or "", "disk size")
        except SizeError as exc:
            raise BadRequest(str(exc)) from None
        fmt = params.get("format") or "raw"
        if fmt not in DISK_FORMATS:
            raise BadRequest(f"disk format {fmt!r} is not one of {', '.join(DISK_FORMATS)}")
        if inst.get("disk_template") in model.ON_LVM and fmt != "raw":
            raise BadRequest(f"a {inst['disk_template']} disk is a logical volume, which holds raw data only, "
                             f"not {fmt}")
        limit = MAX_MIRROR_DISKS if inst.get("disk_template") in model.QUORUM_MIRRORED else MAX_DISKS
        if len(inst["disks"]) >= limit:
            raise BadRequest(f"instance '{name}' has {len(inst['disks'])} disks, the most a "
                             f"{inst['disk_template']} instance can have")
        cluster = await self.store.get(model.CLUSTER_KEY) or {}
        broken = policy.violations(inst["memory_mib"], inst["vcpus"],
                                   [d["size_mib"] for d in inst["disks"]] + [size], cluster.get("policy") or {})
        if broken:
            raise BadRequest("; ".join(broken))
        # Room for the new disk alone on both nodes (the instance's memory is counted where it is already).
        reports = {r["node"]: r for r in await self.store.prefix(model.REPORTS)}
        nodes = list(filter(None, (inst["primary_node"], inst.get("secondary_node"))))
        if inst.get("disk_template") in model.ON_LVM:
            short = [f"node '{node}' {why}" for node in nodes for why in lvm_shortage(reports.get(node, {}), size)]
        else:
            short = [f"node '{node}' has only {format_mib(reports.get(node, {}).get('disk_free_mib', 0))} disk free"
                     for node in nodes if reports.get(node, {}).get("disk_free_mib", 0) < size]
        if short:
            raise BadRequest(f"a {format_mib(size)} disk for '{name}' does not fit: {'; '.join(short)}")
        params.update(size_mib=size, format=fmt)

    async def check_remove_disk(self, name: str, params: dict[str, Any]) -> None:
        inst = await self.store.instance(name)
        last = len(inst["disks"]) - 1
        if params.get("disk") != last or last < 1:
            raise BadRequest(f"only the last disk of '{name}' (disk {last}) can be removed, and not its only one: "
                             "the guest's other disks keep their place" if last >= 1 else
                             f"instance '{name}' has one disk; it cannot lose it (`corral instance remove`)")
        if params.get("destroy_data") is not True:
            raise BadRequest(f"removing disk {last} of '{name}' deletes its data on every node: confirm with "
                             "--destroy-data")
        await refuse_with_lvm_snapshots(self.store, inst, "a disk is removed")
        await self._hotpluggable(inst, "a disk is removed")

    async def _job_add_disk(self, ctx: JobContext, args: dict[str, Any]) -> dict[str, Any]:
        await self.check_add_disk(args["name"], args)
        inst = await self.store.instance(args["name"])
        disk = {"index": len(inst["disks"]), "size_mib": int(args["size_mib"]), "format": args["format"],
                "uuid": str(uuid.uuid4())}
        secondary = inst.get("secondary_node") if inst.get("disk_template") in model.QUORUM_MIRRORED else None
        if not secondary:
            return await self._hot_add(ctx, inst, disk)
        name = inst["name"]
        # The copy's blank file first; then the record out of date before the guest can write to the new disk
        # (a failover must not land on a copy that lacks it, nor on one of its writes).
        await self.store.order(secondary, "instance.replica-prepare", {"name": name, "disks": [disk]})
        await self.moves.outdate(name, f"disk {disk['index']} was added; its copy is being made")
        try:
            done = await self._hot_add(ctx, inst, disk)
        except Exception:
            await self._forget_copy(ctx, inst, secondary, disk["index"])
            raise
        if done["hotplugged"]:
            await self.moves.protect(ctx, {**inst, "disks": [*inst["disks"], disk]})
        else:
            await ctx.log(f"the copy of disk {disk['index']} on '{secondary}' is made at the next start")
        return done

    async def _forget_copy(self, ctx: JobContext, inst: dict[str, Any], secondary: str, index: int) -> None:
        """A disk that was not added: its copy's file deleted, and the others' copies recorded in sync again
        once the running mirror says so (a new copy generation, nothing to copy)."""
        try:
            await self.store.order(secondary, "instance.disk-remove", {"name": inst["name"], "index": index,
                                                                      "disk_template": inst["disk_template"]})
        except JobFailed as exc:
            await ctx.log(f"could not delete the copy of disk {index} on node '{secondary}' ({exc}); "
                          "`corral cluster verify` lists the file as an orphan once the node answers")
        if await self._running(inst):
            await self.moves.protect(ctx, inst)

    async def _running(self, inst: dict[str, Any]) -> bool:
        report = await self.store.get(model.report_key(inst["primary_node"])) or {}
        return inst["name"] in report.get("instances", {})

    async def remove_on(self, node: str, inst: dict[str, Any]) -> None:
        """Everything of `inst` on `node`: its QEMU, disk export and disks."""
        if inst.get("secondary_node"):
            await self.store.order(node, "instance.replica-unexport", {"name": inst["name"], "disks": inst["disks"]})
        await self.store.order(node, "instance.remove", {"name": inst["name"], "disks": inst["disks"],
                                                         "disk_template": inst["disk_template"],
                                                         "nic_count": len(inst["nics"])})

    async def _hot_add(self, ctx: JobContext, inst: dict[str, Any], disk: dict[str, Any]) -> dict[str, Any]:
        """The file made and, if the instance runs, plugged in (the node deletes it again if that fails);
        recorded only then, so the config never names a disk its QEMU lacks, nor the other way round."""
        name, node = inst["name"], inst["primary_node"]
        hv = await self.store.hvparams(inst)
        try:
            done = await self.store.order(node, "instance.disk-hotplug", {
                "name": name, "disk": disk, "hvparams": hv, "disk_template": inst["disk_template"],
                "replicated": inst.get("disk_template") in model.QUORUM_MIRRORED})
        except JobFailed as exc:
            raise JobFailed(f"no disk was added to '{name}': {exc}") from exc
        try:
            await self.store.write([Op.put(model.instance_key(name), model.dumps(
                {**inst, "disks": [*inst["disks"], disk], "mtime": self.store.clock.time()}))])
        except Exception:
            await self.store.order(node, "instance.disk-unplug", {"name": name, "index": disk["index"]})
            await self.store.order(node, "instance.disk-remove", {"name": name, "index": disk["index"],
                                                                "disk_template": inst["disk_template"]})
            raise
        await ctx.log(f"instance '{name}' has a new disk {disk['index']} of {format_mib(disk['size_mib'])} "
                      f"({disk['format']}) on node '{node}'"
                      + ("; hot-plugged: the guest sees it now" if done["plugged"] else ""))
        return {"name": name, "disk": disk, "hotplugged": done["plugged"]}

    async def _job_remove_disk(self, ctx: JobContext, args: dict[str, Any]) -> dict[str, Any]:
        await self.check_remove_disk(args["name"], args)
        inst = await self.store.instance(args["name"])
        name, index = inst["name"], int(args["disk"])
        disk = inst["disks"][index]
        rest = {**inst, "disks": [d for d in inst["disks"] if d["index"] != index], "mtime": self.store.clock.time()}
        secondary = inst.get("secondary_node")
        mirrored = bool(secondary) and await self._running(inst)
        if mirrored:  # its copy leaves the running mirror, recorded out of date first (the guest still writes)
            await self.moves.outdate(name, f"disk {index} is being removed")
            await self.store.order(inst["primary_node"], "instance.mirror-detach", {"name": name, "disks": [disk]})
        try:  # out of a running guest first (its QEMU, if any)
            unplugged = await self.store.order(inst["primary_node"], "instance.disk-unplug",
                                               {"name": name, "index": index})
        except JobFailed:
            if mirrored:  # the disk stays: its copy is made again
                await self.moves.protect(ctx, inst)
            raise
        if unplugged["unplugged"]:
            await ctx.log(f"disk {index} of '{name}' unplugged: the guest let it go")
        await self.store.write([Op.put(model.instance_key(name), model.dumps(rest))])  # first: no dangling disk
        kept = []
        for node in filter(None, (inst["primary_node"], secondary)):
            try:
                if node == secondary:  # its export holds the copy open
                    await self.store.order(node, "instance.replica-unexport", {"name": name, "disks": [disk]})
                await self.store.order(node, "instance.disk-remove", {"name": name, "index": index,
                                                                        "disk_template": inst["disk_template"]})
            except JobFailed as exc:
                kept.append(node)
                await ctx.log(f"could not delete disk {index} on node '{node}' ({exc}); `corral cluster verify` "
                              "lists the file as an orphan once the node answers")
        await ctx.log(f"disk {index} of '{name}' removed and its data deleted" if not kept else
                      f"disk {index} of '{name}' removed; its data is left on node(s) {', '.join(kept)} (above)")
        if mirrored:  # the other disks' copies, still joined, are recorded in sync again
            await self.moves.protect(ctx, rest)
        return {"name": name, "disk": index}

    # ---- jobs ---------------------------------------------------------------------------
    async def _copy(self, ctx: JobContext, inst: dict[str, Any], source: str, target: str) -> None:
        """Copy every disk of `inst` from `source` to `target`, with progress and ETA."""
        name, disks = inst["name"], inst["disks"]
        used = {int(i.get("port_base") or 0) for i in await self.store.prefix(model.INSTANCES)}
        base = inst.get("port_base") or next(b for b in REPLICATION_PORTS if b not in used)
        host = (await self.store.get(model.node_key(source)))["address"]
        template = inst.get("disk_template")
        await self.store.order(source, "instance.replica-export",
                               {"name": name, "disks": disks, "port_base": base, "client": target,
                                "disk_template": template})
        total = sum(d["size_mib"] for d in disks)
        done, started = 0.0, self.store.clock.monotonic()
        try:
            for disk in disks:
                fetch = asyncio.create_task(self.store.order(
                    target, "instance.disk-fetch", {"name": name, "disk": disk, "host": host,
                                                    "port": base + disk["index"], "disk_template": template},
                    timeout_s=6 * 3600))
                while not fetch.done():
                    await asyncio.wait({fetch}, timeout=COPY_POLL_S)
                    try:
                        status = await self.store.order(target, "instance.disk-fetch-status",
                                                        {"name": name, "index": disk["index"]}, timeout_s=5)
                    except JobFailed:
                        continue
                    await ctx.progress(done + disk["size_mib"] * status["percent"] / 100, total,
                                       f"copying disk {disk['index']} to node '{target}'", started, mib=True)
                await fetch
                done += disk["size_mib"]
                await ctx.progress(done, total, f"disk {disk['index']} copied", started)
        finally:
            await self.store.order(source, "instance.replica-unexport", {"name": name, "disks": disks})
        await ctx.log(f"copied {format_mib(total)} of disks of '{name}' from node '{source}' to node '{target}' "
                      f"in {self.store.clock.monotonic() - started:.1f} s")

    async def _job_move(self, ctx: JobContext, args: dict[str, Any]) -> dict[str, Any]:
        await self.check_move(args["name"], args)
        inst = await self.store.instance(args["name"])
        source, target = inst["primary_node"], args["node"]
        await ctx.log(f"moving stopped instance '{inst['name']}' from node '{source}' to node '{target}'")
        try:
            await self._copy(ctx, inst, source, target)
        except Exception:
            await self._remove_disks(ctx, target, inst)
            raise
        inst.update(primary_node=target, mtime=self.store.clock.time())
        await self.store.write([Op.put(model.instance_key(inst["name"]), model.dumps(inst))])
        await self._remove_disks(ctx, source, inst)
        await ctx.log(f"instance '{inst['name']}' now lives on node '{target}'")
        return {"name": inst["name"], "node": target}

    async def _remove_disks(self, ctx: JobContext, node: str, inst: dict[str, Any]) -> None:
        try:
            await self.remove_on(node, inst)
        except JobFailed as exc:
            await ctx.log(f"could not remove the disks of '{inst['name']}' from node '{node}' ({exc}); "
                          "`corral cluster verify` lists them as orphans")

    async def _job_replace_secondary(self, ctx: JobContext, args: dict[str, Any]) -> dict[str, Any]:
        await self.check_replace_secondary(args["name"], args)
        inst = await self.store.instance(args["name"])
        name, old, new = inst["name"], inst["secondary_node"], args["node"]
        await ctx.log(f"replacing the secondary of '{name}': node '{old}' by node '{new}'")
        if inst["disk_template"] == "drbd":
            return await drbdsteps.replace_secondary(self.store, self.moves, ctx, inst, new, self._remove_disks)
        await self.store.order(new, "instance.replica-prepare", {"name": name, "disks": inst["disks"]})
        await self.moves.outdate(name, f"its secondary is being replaced: node '{old}' by node '{new}'")
        await self.store.order(inst["primary_node"], "instance.mirror-detach", {"name": name, "disks": inst["disks"]})
        inst.update(secondary_node=new, mtime=self.store.clock.time())
        await self.store.write([Op.put(model.instance_key(name), model.dumps(inst))])
        await self.moves.protect(ctx, inst)
        await self._remove_disks(ctx, old, inst)
        await ctx.log(f"node '{old}' no longer holds a copy of '{name}'; node '{new}' is being synced "
                      "(`corral instance info` shows the progress)")
        return {"name": name, "secondary": new}

    async def _job_deactivate(self, ctx: JobContext, args: dict[str, Any]) -> dict[str, Any]:
        """What activate-disks opened, closed again: a drbd instance's devices Secondary on its primary (the
        other templates hold nothing open while the instance is stopped)."""
        inst = await self.store.instance(args["name"])
        name, primary = inst["name"], inst["primary_node"]
        await self.check_deactivate(name, {})
        if inst["disk_template"] == "drbd":
            await self.store.order(primary, "drbd.release", {"name": name})
            await ctx.log(f"disks of '{name}' on node '{primary}': DRBD Secondary (nothing may write them)")
        else:
            await ctx.log(f"disks of '{name}' ({inst['disk_template']}): nothing holds them open while it is "
                          "stopped; nothing to do")
        return {"name": name, "node": primary}

    async def _job_activate(self, ctx: JobContext, args: dict[str, Any]) -> dict[str, Any]:
        inst = await self.store.instance(args["name"])
        name = inst["name"]
        if inst["disk_template"] == "drbd":
            return await drbdsteps.activate(self.store, ctx, inst)
        if inst.get("secondary_node"):
            created = await self.store.order(inst["secondary_node"], "instance.replica-prepare",
                                             {"name": name, "disks": inst["disks"]})
            if created["created"]:
                await ctx.log(f"re-created missing disk copies {created['created']} on node "
                              f"'{inst['secondary_node']}'; they fill when the mirror runs")
                await self.moves.outdate(name, f"disk copies {created['created']} were missing on node "
                                                   f"'{inst['secondary_node']}'")
            report = await self.store.get(model.report_key(inst["primary_node"])) or {}
            if name in report.get("instances", {}):
                await self.moves.protect(ctx, inst)
        paths = await self.store.order(inst["primary_node"], "instance.disk-paths",
                                       {"name": name, "disks": inst["disks"], "disk_template": inst["disk_template"]})
        for path in paths["paths"]:
            await ctx.log(f"disk of '{name}' on node '{inst['primary_node']}': {path}")
        return {"name": name, "node": inst["primary_node"], "paths": paths["paths"]}

    async def _job_grow(self, ctx: JobContext, args: dict[str, Any]) -> dict[str, Any]:
        await self.check_grow(args["name"], args)
        inst = await self.store.instance(args["name"])
        name, index, size = inst["name"], int(args["disk"]), int(args["size_mib"])
        order = {"name": name, "index": index, "size_mib": size, "disk_template": inst["disk_template"]}
        secondary = inst.get("secondary_node")
        if inst["disk_template"] == "drbd":  # the secondary's LV first: DRBD's resize on the primary needs both
            await drbdsteps.grow_copy(self.store, inst, index, size)
            order["instance"] = inst
        elif secondary:  # the copy grows first: the primary's mirror must never outsize its target
            await self.moves.outdate(name, f"disk {index} grows; its copy is made anew")
            await self.store.order(inst["primary_node"], "instance.mirror-detach", {"name": name, "disks": inst["disks"]})
            await self.store.order(secondary, "instance.replica-unexport", {"name": name, "disks": inst["disks"]})
            await self.store.order(secondary, "instance.disk-grow", order)
        await self.store.order(inst["primary_node"], "instance.disk-grow", order)
        inst["disks"][index]["size_mib"] = size
        inst.update(mtime=self.store.clock.time())
        await self.store.write([Op.put(model.instance_key(name), model.dumps(inst))])
        await ctx.log(f"disk {index} of '{name}' is now {format_mib(size)}")
        report = await self.store.get(model.report_key(inst["primary_node"])) or {}
        if secondary and inst["disk_template"] != "drbd" and name in report.get("instances", {}):
            await self.moves.protect(ctx, inst)
        return {"name": name, "disk": index, "size_mib": size}
