"""The master's instance and cluster operations: submit and job handlers.

Checks that can fail on bad input run before a job exists (hostagent.master.decide.checks),
so bad input is refused with nothing recorded. The job handlers then order
the nodes, and undo their own partial work when a step fails. `instance
modify` (hostagent.master.modify), the moves of replicated instances, the disk
jobs, the mirror and restart duties are built here, all on one store
(hostagent.master.store); none of them imports this module.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from election.etcd import Op
from kvm.hvparams import hvparams_to_dict, parse_hvparams

from hostagent import model
from hostagent.master import cdrom, vncpass
from hostagent.master.decide.checks import adopted, check_add, check_reinstall
from hostagent.errors import BadRequest, Conflict
from hostagent.master.jobs import Handler, JobContext, JobFailed, job_errors, operator_errors
from hostagent.master.role import MasterRole
from hostagent.master.diskops import DiskOps
from hostagent.master.modify import InstanceModify
from hostagent.master.renames import Renames
from hostagent.master.snapshots import SNAPSHOT_OPS, Snapshots
from hostagent.master.backups import Backups
from hostagent.master.moves import Moves
from hostagent.master.duties.mirrors import Mirrors
from hostagent.master.duties.restarter import Restarter
from hostagent.master.store import Store
from hostagent.master.submit import choosing_again, cluster_view
from hostagent.master.view import Views
from hostagent.orders import NodeClient
from hostagent.status import instance_status
from hostagent.units import format_mib

log = logging.getLogger(__name__)

# The master waits longer for an OS install than any node may take for it.
INSTALL_TIMEOUT_S = 1800.0
ADOPT_CHECK_TIMEOUT_S = 15.0  # an `lvs` on the node, before a job exists


class Operations:
    """The instance and cluster jobs and their submit checks; builds the one store their handlers share."""

    def __init__(self, role: MasterRole, nodes: NodeClient) -> None:
        self.role = role
        self.store = Store(role, nodes)
        self.moves = Moves(self.store)
        self.disks = DiskOps(self.store, self.moves)
        self.views = Views(self.store)  # the cluster as this tick's duties see it
        self.restarter = Restarter(self.store, self.views, self.moves)
        self.mirrors = Mirrors(self.store, self.views, self.moves, self.restarter.starting)
        self.modify = InstanceModify(self.store, self._start, self._stop)
        self.renames = Renames(self.store)
        self.snapshots = Snapshots(self.store, self.moves)
        self.backups = Backups(self.store, self.moves, self._start, self._stop)
        self.submit_rename = self.renames.submit

    # ---- submit ---------------------------------------------------------------
    async def submit_cluster_init(self, name: str, node: dict[str, Any], hvparams: dict[str, Any],
                                  pool_size: int, settings: dict[str, float]) -> int:
        return await self.role.require().submit(
            "cluster.init", {"name": name, "node": node, "hvparams": hvparams_to_dict(parse_hvparams(hvparams)),
                             "candidate_pool_size": pool_size, "settings": settings},
            f"initialize cluster '{name}'", must_not_exist=[model.CLUSTER_KEY])

    async def submit_probe(self) -> int:
        """A job that changes nothing: proves the master runs jobs (used by the failover drill)."""
        return await self.role.require().submit("cluster.probe", {}, "probe the master's job runner")

    async def submit_add(self, req: dict[str, Any]) -> int:
        return await choosing_again(lambda: self._submit_add(req))

    async def submit_import(self, params: dict[str, Any]) -> int:
        """`backup import`: an instance add whose disks come from a backup."""
        req, extra = await self.backups.import_add(params)
        return await choosing_again(lambda: self._submit_add(req, extra))

    async def _submit_add(self, req: dict[str, Any], extra: dict[str, Any] | None = None) -> int:
        view = await cluster_view(self.store)
        adopt = adopted(req)
        if adopt:
            view = replace(view, adoptable=await self._adoptable(req, list(adopt.values()), view.nodes))
        inst = check_add(req, view, self.store.clock.time())
        if inst.cdrom:
            await cdrom.check_on(self.store, inst.cdrom, [inst.primary_node, *filter(None, [inst.secondary_node])])
        # Reserving the name and each MAC makes concurrent adds collide at submit,
        # not half-way through; the instance key itself must still be absent.
        reservations = [model.reservation_key("instance", inst.name)]
        reservations += [model.reservation_key("mac", nic.mac) for nic in inst.nics]
        reservations += [model.reservation_key("ip", f"{nic.network}/{nic.ip}") for nic in inst.nics if nic.ip]
        return await self.role.require().submit(
            "instance.add", {"instance": inst.to_dict(), "start": bool(req.get("start", True)),
                             **({"adopt": {str(i): lv for i, lv in adopt.items()}} if adopt else {}), **(extra or {})},
            f"add instance '{inst.name}'", reservations=reservations,
            must_not_exist=[model.instance_key(inst.name)])

    async def _adoptable(self, req: dict[str, Any], names: list[str], nodes: dict[str, Any]) -> dict[str, Any]:
        """What the named primary says of the LVs to adopt (checks.ClusterView.adoptable); {} when there is no
        single known node to ask (check_add says so)."""
        node = str(req.get("node") or "")
        if node not in nodes or req.get("disk_template") != "plain":
            return {}
        try:
            answer = await self.store.order(node, "instance.adopt-check", {"names": names},
                                            timeout_s=ADOPT_CHECK_TIMEOUT_S)
        except JobFailed as exc:
            raise Conflict(f"cannot check the LVs to adopt on node '{node}': {exc}") from None
        return dict(answer["lvs"])

    async def submit_simple(self, op: str, name: str, params: dict[str, Any]) -> int:
        inst = await self.store.instance(name)
        runner = self.role.require()
        if inst.get("disk_template") == "drbd" and op in DRBD_NOT_YET:
            raise BadRequest(f"instance '{name}' has drbd disks: {DRBD_NOT_YET[op]} is not supported for them yet "
                             "(they are created, started, stopped, rebooted, reinstalled, live-migrated, failed "
                             "over, grown, given a new secondary and removed)")
        if op == "instance.reboot" and params.get("type", "soft") not in ("soft", "hard"):
            raise BadRequest(f"reboot type {params.get('type')!r} is not one of soft, hard")
        if not runner.busy(f"instance/{name}"):
            # With no job pending on it, the node's report is the truth to check against.
            report = await self.store.get(model.report_key(inst["primary_node"]))
            observed = instance_status(inst, report, self.store.clock.time())
            where = f"on node '{inst['primary_node']}'"
            if op == "instance.start" and observed.pid is not None:
                raise Conflict(f"instance '{name}' is already running {where} (pid {observed.pid}); "
                               "use `corral instance reboot` to restart it")
            if op == "instance.reboot" and observed.pid is None:
                raise Conflict(f"instance '{name}' is not running {where}; use `corral instance start`")
        checks: dict[str, Callable[[str, dict[str, Any]], Awaitable[Any]]] = {
                  "instance.move": self.disks.check_move, "instance.replace-secondary":
                  self.disks.check_replace_secondary, "instance.grow-disk": self.disks.check_grow,
                  "instance.migrate": lambda n, _: self.moves.check(n, "live-migrate"),
                  "instance.failover": lambda n, _: self.moves.check(n, "fail over"),
                  "instance.deactivate-disks": self.disks.check_deactivate,
                  "instance.reinstall": self._check_reinstall, "instance.add-disk": self.disks.check_add_disk,
                  "instance.remove-disk": self.disks.check_remove_disk, "instance.restore": self.backups.check_restore,
                  **{op: functools.partial(self.snapshots.check, op) for op in SNAPSHOT_OPS}}
        if op in checks:
            await checks[op](name, params)
        verb = op.split(".", 1)[1].replace("-", " ")
        return await runner.submit(op, {"name": name, **params}, f"{verb} instance '{name}'",
                                   must_exist=[model.instance_key(name)])

    # ---- job handlers -----------------------------------------------------------
    def handlers(self) -> dict[str, Handler]:
        return {"cluster.init": self._job_cluster_init, "cluster.probe": self._job_probe,
                "instance.add": self._job_add,
                "instance.start": self._job_start, "instance.stop": self._job_stop,
                "instance.reboot": self._job_reboot, "instance.remove": self._job_remove,
                **self.modify.handlers(), "instance.reinstall": self._job_reinstall,
                "instance.rename": self.renames.job, **self.snapshots.handlers(), **self.backups.handlers(),
                **{op: job_errors(h) for op, h in {**self.moves.handlers(), **self.disks.handlers()}.items()}}

    @operator_errors
    async def _job_cluster_init(self, ctx: JobContext, args: dict[str, Any]) -> dict[str, Any]:
        cluster = {"name": args["name"], "created": self.store.clock.time(), "hvparams": args["hvparams"],
                   "init_node": args["node"]["name"], "candidate_pool_size": args.get("candidate_pool_size", 3),
                   **args.get("settings", {})}
        await self.store.write([Op.put(model.CLUSTER_KEY, model.dumps(cluster)),
                                Op.put(model.node_key(args["node"]["name"]), model.dumps(args["node"]))])
        await ctx.log(f"cluster '{args['name']}' created with node '{args['node']['name']}' as master")
        return {"name": args["name"]}

    async def _job_probe(self, ctx: JobContext, args: dict[str, Any]) -> dict[str, Any]:
        await ctx.log(f"master '{self.role.node}' is running jobs")
        return {"master": self.role.node}

    @operator_errors
    async def _job_add(self, ctx: JobContext, args: dict[str, Any]) -> dict[str, Any]:
        inst = args["instance"]
        name, node = inst["name"], inst["primary_node"]
        hv = await self.store.hvparams(inst)
        disks = ", ".join(f"disk {d['index']} {format_mib(d['size_mib'])} {d['format']}" for d in inst["disks"])
        await ctx.log(f"creating instance '{name}' on node '{node}': {disks}, OS '{inst['os']}'")
        started = self.store.clock.monotonic()
        steps = 2 if args["start"] else 1
        await ctx.progress(0, steps, "creating disks and installing the OS", started)
        await vncpass.ensure(self.store, inst)
        try:
            secondary: Awaitable[Any] | None = None
            if inst.get("secondary_node"):
                await ctx.log(f"creating the disk copies of '{name}' on secondary node '{inst['secondary_node']}'")
                if inst["disk_template"] == "drbd":  # alongside the primary's, which waits for it to connect
                    secondary = self.store.order(inst["secondary_node"], "drbd.prepare", {"instance": inst})
                else:
                    await self.store.order(inst["secondary_node"], "instance.replica-prepare",
                                           {"name": name, "disks": inst["disks"]})
            if args.get("adopt"):
                await ctx.log(f"adopting LV(s) {', '.join(f'{lv} as disk {i}' for i, lv in args['adopt'].items())} "
                              f"on node '{node}': their data is kept, no OS is installed")
                if secondary is not None:
                    await secondary
                result = await self.store.order(node, "instance.adopt", {"instance": inst, "adopt": args["adopt"]})
                await ctx.log(f"disks of '{name}' adopted")
            elif args.get("from_backup") or args.get("from_ganeti"):  # drbd: the secondary comes up alongside
                made = self.backups.import_disks(ctx, inst, args)
                result = await both(secondary, made) if secondary is not None else await made
            else:
                create = self.store.order(node, "instance.create",
                                          {"instance": inst, "hvparams": hv, "timeout_s": INSTALL_TIMEOUT_S,
                                           "networks": await self.store.nic_networks(inst)},
                                          timeout_s=INSTALL_TIMEOUT_S + 60)
                result = await both(secondary, create) if secondary is not None else await create
                await ctx.log(f"disks of '{name}' created and OS installed in "
                              f"{self.store.clock.monotonic() - started:.1f} s")
            await ctx.progress(1, steps, "disks ready", started)
            inst["admin_state"] = "up" if args["start"] else "down"
            addresses, compares = self.store.address_writes(None, inst)
            await self.store.write([Op.put(model.instance_key(name), model.dumps(inst)), *addresses], compares,
                                   f"a network of '{name}' was removed, or one of its addresses taken, while it was "
                                   "created; `corral network info` shows what is free")
        except Exception as exc:
            await self._undo_add(ctx, inst, exc, bool(args.get("adopt")))
            raise
        if not args["start"]:
            if inst["disk_template"] == "drbd":  # the install made it Primary; nothing runs on it now
                await self.store.order(node, "drbd.release", {"name": name})
            return {"name": name, "node": node, "created": result.get("created")}
        return await self._start(ctx, inst, hv)

    async def _undo_add(self, ctx: JobContext, inst: dict[str, Any], cause: Exception, adoption: bool) -> None:
        """Best effort: remove what a failed add created; the original error stays the job's error. Adopted LVs
        are given back under their old names first, and never deleted."""
        name = inst["name"]
        for node in [inst["primary_node"], *([inst["secondary_node"]] if inst.get("secondary_node") else [])]:
            try:
                await ctx.log(f"removing what was created for '{name}' on node '{node}'")
                if adoption:
                    back = await self.store.order(node, "instance.adopt-release",
                                                  {"name": name, "disks": inst["disks"]})
                    await ctx.log(f"adopted LVs given back on node '{node}': {back['released'] or 'none'}")
                await self.disks.remove_on(node, {**inst, "disks": []} if adoption else inst)
            except Exception as exc:  # noqa: BLE001 - reported; the cause is re-raised by the caller
                log.warning("could not clean up after the failed add of '%s' on node '%s' (%s): %s; "
                            "`corral cluster verify` will list the leftovers", name, node, cause, exc)

    async def _start(self, ctx: JobContext, inst: dict[str, Any], hv: dict[str, Any]) -> dict[str, Any]:
        await ctx.log(f"starting instance '{inst['name']}' on node '{inst['primary_node']}'")
        result = await self.moves.start_order(inst["primary_node"], inst, hv)
        await ctx.log(f"instance '{inst['name']}' is running on node '{inst['primary_node']}' (pid {result['pid']})")
        if inst.get("boot_pattern"):
            timeout = inst.get("boot_timeout_s") or model.DEFAULT_BOOT_TIMEOUT_S
            await ctx.log(f"node '{inst['primary_node']}' now waits up to {timeout:.0f} s for a console line "
                          f"matching '{inst['boot_pattern']}' (`corral instance info {inst['name']}` shows it)")
        if inst.get("secondary_node"):
            await self.moves.protect(ctx, inst)
        return {"name": inst["name"], "node": inst["primary_node"], "pid": result["pid"]}

    async def _set_admin(self, inst: dict[str, Any], state: str) -> None:
        """The operator's word: also ends the restart duty's count (a given-up instance is tried again)."""
        ops = [Op.delete(model.restart_key(inst["name"]))]
        if inst["admin_state"] != state:
            inst["admin_state"] = state
            inst["mtime"] = self.store.clock.time()
            ops.append(Op.put(model.instance_key(inst["name"]), model.dumps(inst)))
        await self.store.write(ops)

    @operator_errors
    async def _job_start(self, ctx: JobContext, args: dict[str, Any]) -> dict[str, Any]:
        inst = await self.store.instance(args["name"])
        before = inst["admin_state"]
        # Marked up first, so that a master dying during the start leaves the restart duty to finish it.
        await self._set_admin(inst, "up")
        try:
            return await self._start(ctx, inst, await self.store.hvparams(inst))
        except Exception:
            if before != "up":  # refused (or failed): no restart duty retrying what the operator saw fail
                await self._set_admin(await self.store.instance(args["name"]), before)
                await ctx.log(f"instance '{inst['name']}' is marked {before} again: the start failed")
            raise

    async def _stop(self, ctx: JobContext, inst: dict[str, Any], force: bool, timeout_s: float | None) -> str:
        hv = await self.store.hvparams(inst)
        timeout = float(timeout_s if timeout_s is not None else hv["shutdown_timeout_s"])
        how_asked = "stopping it now (--force)" if force else f"ACPI power-down, hard stop after {timeout:.0f} s"
        await ctx.log(f"stopping instance '{inst['name']}' on node '{inst['primary_node']}': {how_asked}")
        result = await self.store.order(inst["primary_node"], "instance.stop",
                                        {"name": inst["name"], "timeout_s": timeout, "force": force,
                                         "nic_count": len(inst["nics"])}, timeout_s=timeout + 60)
        words = {"acpi": "shut down cleanly (ACPI)", "hard": "hard-stopped",
                 "not-running": "was not running"}
        await ctx.log(f"instance '{inst['name']}' {words.get(result['how'], result['how'])}")
        return str(result["how"])

    @operator_errors
    async def _job_stop(self, ctx: JobContext, args: dict[str, Any]) -> dict[str, Any]:
        inst = await self.store.instance(args["name"])
        before = inst["admin_state"]
        await self._set_admin(inst, "down")  # first: the restart duty must not start it while it shuts down
        try:
            how = await self._stop(ctx, inst, bool(args.get("force")), args.get("timeout_s"))
        except Exception:
            if before != "down":  # the stop did not happen: the instance stays marked as it was
                await self._set_admin(await self.store.instance(args["name"]), before)
                await ctx.log(f"instance '{inst['name']}' is marked {before} again: the stop failed")
            raise
        return {"name": inst["name"], "how": how}

    @operator_errors
    async def _job_reboot(self, ctx: JobContext, args: dict[str, Any]) -> dict[str, Any]:
        inst = await self.store.instance(args["name"])
        await self._set_admin(inst, "up")
        if args.get("type", "soft") == "hard":
            await ctx.log(f"hard-resetting instance '{inst['name']}' on node '{inst['primary_node']}'")
            await self.store.order(inst["primary_node"], "instance.reset", {"name": inst["name"]})
            return {"name": inst["name"], "type": "hard"}
        await self._stop(ctx, inst, False, None)
        result = await self._start(ctx, inst, await self.store.hvparams(inst))
        return {**result, "type": "soft"}

    async def _check_reinstall(self, name: str, params: dict[str, Any]) -> None:
        check_reinstall(await self.store.instance(name), params, await cluster_view(self.store))

    @operator_errors
    async def _job_reinstall(self, ctx: JobContext, args: dict[str, Any]) -> dict[str, Any]:
        """Stop, make the disks again with the OS installed anew, start again if it ran."""
        inst = await self.store.instance(args["name"])
        new = check_reinstall(inst, args, await cluster_view(self.store))
        name, node = inst["name"], inst["primary_node"]
        if await self.store.running(inst):
            await self._stop(ctx, inst, False, None)
        if inst.get("secondary_node"):  # the copy holds what is about to be destroyed: never fail over to it
            await self.moves.outdate(name, "the instance was reinstalled; its copy holds the old content")
        hv = await self.store.hvparams(new)
        await ctx.log(f"reinstalling instance '{name}' on node '{node}' with OS '{new['os']}': "
                      "the content of its disks is destroyed")
        order = {"instance": new, "hvparams": hv, "install_id": f"{ctx.job['id']}-{name}",
                 "networks": await self.store.nic_networks(new)}
        drbd = inst["disk_template"] == "drbd"
        if drbd:  # new metadata on both nodes (DRBD connects no disks of unrelated histories); a full resync
            await ctx.log(f"the DRBD copies of '{name}' on node '{inst['secondary_node']}' are made anew")
            await self.disks.remove_on(inst["secondary_node"], inst)
            await both(self.store.order(inst["secondary_node"], "drbd.prepare", {"instance": new}),
                       self.store.order(node, "instance.reinstall", order, timeout_s=3600))
        else:
            await self.store.order(node, "instance.reinstall", order, timeout_s=3600)
        new["mtime"] = self.store.clock.time()
        await self.store.write([Op.put(model.instance_key(name), model.dumps(new))])
        await ctx.log(f"instance '{name}' reinstalled with OS '{new['os']}'")
        if new["admin_state"] == "up":
            await self._start(ctx, new, hv)
        elif drbd:  # the install made it Primary; nothing runs on it now
            await self.store.order(node, "drbd.release", {"name": name})
        return {"name": name, "os": new["os"]}

    @operator_errors
    async def _job_remove(self, ctx: JobContext, args: dict[str, Any]) -> dict[str, Any]:
        inst = await self.store.instance(args["name"])
        nodes = [inst["primary_node"], *([inst["secondary_node"]] if inst.get("secondary_node") else [])]
        await ctx.log(f"removing instance '{inst['name']}' from node(s) {', '.join(nodes)}: "
                      "stopping it and deleting its disks")
        await self.disks.remove_on(inst["primary_node"], inst)
        for node in nodes[1:]:  # a lost secondary must not keep the instance: its copy becomes an orphan
            try:
                await self.disks.remove_on(node, inst)
            except JobFailed as exc:
                await ctx.log(f"could not delete the copy on secondary node '{node}' ({exc}); "
                              "`corral cluster verify` lists it as an orphan once that node is back")
        addresses, _ = self.store.address_writes(inst, None)
        await self.store.write([Op.delete(model.instance_key(inst["name"])), *addresses, vncpass.forget(inst["uuid"])])
        await ctx.log(f"instance '{inst['name']}' removed" + (f" (addresses released: {_addresses(inst)})"
                                                              if addresses else ""))
        return {"name": inst["name"]}


# What drbd instances cannot do yet, in the operator's words.
DRBD_NOT_YET = {"instance.move": "moving them to another node", "instance.add-disk": "adding a disk",
                "instance.remove-disk": "removing a disk"}


def _addresses(inst: dict[str, Any]) -> str:
    return ", ".join(f"{n['ip']} of '{n['network']}'" for n in inst["nics"] if n.get("network") and n.get("ip"))


async def both(first: Awaitable[Any], second: Awaitable[Any]) -> Any:
    """Run two orders at once and wait for both; the second's result. `first`'s error wins: the primary of a
    drbd disk fails only for want of the peer that `first` was bringing up."""
    done = await asyncio.gather(first, second, return_exceptions=True)
    for outcome in done:
        if isinstance(outcome, BaseException):
            raise outcome
    return done[1]
