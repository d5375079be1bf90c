"""`instance modify`: checked at submit, checked again in its job, then written in one guarded transaction.

Changes a running guest cannot take now wait in `pending` (hostagent.master.pending)
for its next start; NICs pinned to a running guest are hot-plugged before the
config says so, and unplugged again if the write does not happen.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Awaitable, Callable
from typing import Any

from election.etcd import Compare, Op

from hostagent import model
from hostagent.errors import BadRequest, Conflict, NotFound
from hostagent.master import cdrom, pending, vncpass
from hostagent.master.decide import backup_schedule, nics
from hostagent.master.decide.checks import check_kernel, check_modify, check_resources
from hostagent.master.jobs import Handler, JobContext, JobFailed, operator_errors
from hostagent.master.store import Store
from hostagent.master.submit import choosing_again, cluster_view, used_addresses
from hostagent.units import format_mib

MODIFY_TRIES = 3  # an `instance modify` whose instances changed while it checked them is checked again

Start = Callable[[JobContext, dict[str, Any], dict[str, Any]], Awaitable[dict[str, Any]]]
Stop = Callable[[JobContext, dict[str, Any], bool, float | None], Awaitable[str]]


class InstanceModify:
    """The submit and job of `instance modify`; `start` and `stop` are the instance jobs' own steps, for
    `--restart`."""

    def __init__(self, store: Store, start: Start, stop: Stop) -> None:
        self.store = store
        self.start = start
        self.stop = stop

    def handlers(self) -> dict[str, Handler]:
        return {"instance.modify": self._job_modify}

    async def submit(self, name: str, body: dict[str, Any]) -> int:
        return await choosing_again(lambda: self._submit(name, dict(body)))

    async def _submit(self, name: str, body: dict[str, Any]) -> int:
        """Checked now, so a refused change leaves no job behind; the job checks it again before writing.

        `restart`: restart the instance once written, so pending changes take effect now;
        `force`: write a memory increase its nodes cannot promise (N+1), with a warning in the log."""
        changes = {k: v for k, v in body.items() if k not in ("restart", "force")}
        restart, force = body.get("restart", False), body.get("force", False)
        for flag, value in (("restart", restart), ("force", force)):
            if not isinstance(value, bool):
                raise BadRequest(f"{flag} must be true or false, not {value!r}")
        inst = await self.store.instance(name)
        target = pending.effective(inst)
        new = check_modify(target, changes, tuple(await self.store.prefix(model.INSTANCES)),
                           await self.store.cluster_hv())
        if changes.get("cdrom") and new.get("cdrom"):
            await cdrom.check_on(self.store, new["cdrom"], cdrom.nodes_of(inst))
        if {"backup_schedule", "backup_keep", "backup_to"} & set(changes):
            await self._check_backups(new)
        reservations = []
        if "nics" in changes:
            new["nics"], _, changes["nics"] = await self._changed_nics(target, changes["nics"])
            await self.nic_live_plan(inst, changes["nics"], len(new["nics"]))
            reservations = [model.reservation_key("mac", mac) for mac in
                            {n["mac"] for n in new["nics"]} - {n["mac"] for n in target["nics"]}]
            reservations += [model.reservation_key("ip", key[len(model.ADDRESSES):]) for key in
                             set(model.held_addresses(new)) - set(model.held_addresses(target))]
        view = await cluster_view(self.store)
        check_kernel(target, new, view)
        short = check_resources(target, new, view, self.store.clock.time())
        if short and not force:
            raise Conflict("; ".join(short) + " (--force writes it anyway, with N+1 no longer certain)")
        return await self.store.role.require().submit(
            "instance.modify", {"name": name, "changes": changes, "restart": restart, "force": force},
            f"modify instance '{name}'", reservations=reservations, must_exist=[model.instance_key(name)])

    async def _check_backups(self, new: dict[str, Any]) -> None:
        """A schedule that could never run is refused now, not found out at its first export."""
        reports = {r["node"]: r for r in await self.store.prefix(model.REPORTS)}
        problem = backup_schedule.target_problem(
            new, await self.store.get(model.CLUSTER_KEY) or {},
            {n: (list(r["export_dirs"]) if "export_dirs" in r else None) for n, r in reports.items()})
        if problem:
            raise BadRequest(problem)

    async def nic_live_plan(self, inst: dict[str, Any], changes: list[dict[str, Any]],
                            after: int) -> nics.LivePlan | None:
        """How pinned NIC `changes` reach the guest now (hot-plug), or None when it is stopped (the config alone)."""
        if not await self.store.running(inst):
            return None
        return nics.live_plan(inst["name"], len(inst.get("nics") or []), changes, after)

    async def _nics_live(self, ctx: JobContext, inst: dict[str, Any], new: list[dict[str, Any]],
                         plan: nics.LivePlan, done: list[tuple[str, int]]) -> None:
        """Unplug, then plug, on the primary before the config says so, each step recorded in `done` (the
        caller undoes them with `_nics_undo` unless the config is then written)."""
        name, node = inst["name"], inst["primary_node"]
        hv = await self.store.hvparams(inst)
        for index in plan.unplug:
            await self.store.order(node, "instance.nic-unplug", {"name": name, "index": index})
            done.append(("unplug", index))
            await ctx.log(f"nic {index} of '{name}' unplugged from the running guest on node '{node}'")
        for index in plan.plug:
            answer = await self.store.order(node, "instance.nic-hotplug",
                                            {"name": name, "index": index, "nic": new[index], "hvparams": hv})
            done.append(("plug", index))
            await ctx.log(f"nic {index} of '{name}' " + ("hot-plugged into the running guest on node "
                                                          f"'{node}'" if answer.get("plugged") else
                                                          "added (its QEMU is not running: at its next start)"))

    async def _nics_undo(self, ctx: JobContext, inst: dict[str, Any], done: list[tuple[str, int]]) -> None:
        """Best effort, last step first: the guest's NICs as the (unchanged) config has them."""
        name, node, old = inst["name"], inst["primary_node"], inst.get("nics") or []
        hv = await self.store.hvparams(inst)
        for step, index in reversed(done):
            try:
                if step == "plug":
                    await self.store.order(node, "instance.nic-unplug", {"name": name, "index": index})
                else:
                    await self.store.order(node, "instance.nic-hotplug",
                                           {"name": name, "index": index, "nic": old[index], "hvparams": hv})
                await ctx.log(f"nic {index} of '{name}': {step} undone (the config did not change)")
            except JobFailed as exc:
                await ctx.log(f"WARNING: could not undo the {step} of nic {index} of '{name}' ({exc}); "
                              f"`corral instance reboot {name}` makes the guest's NICs the config's again")

    async def _changed_nics(self, inst: dict[str, Any], changes: Any,
                            job_id: int | None = None) -> tuple[list[dict[str, Any]], list[str], list[dict[str, Any]]]:
        """hostagent.master.decide.nics.changed against the cluster's networks and what every other instance holds."""
        if not isinstance(changes, list):
            raise BadRequest(f"nics: {changes!r} is not a list of NIC changes")
        instances = await self.store.prefix(model.INSTANCES)
        taken = nics.taken_by_others(instances, inst["name"], {})
        taken.ips = await used_addresses(self.store, instances, job_id, but=inst["name"])
        nets = {n["name"]: n for n in await self.store.prefix(model.NETWORKS)}
        return nics.changed(inst.get("nics") or [], changes, nets, taken, random.SystemRandom())

    @operator_errors
    async def _job_modify(self, ctx: JobContext, args: dict[str, Any]) -> dict[str, Any]:
        """Written only if the instance and those its `after` chain reaches are as checked: two modifies
        at once cannot close a cycle between them."""
        live: list[tuple[str, int]] = []  # NIC hot-plug steps done: once, undone unless the config says so
        inst = await self.store.instance(args["name"])
        try:
            return await self._modify_tries(ctx, args, live)
        except BaseException:
            with contextlib.suppress(Exception):  # best effort: the job's own error is the one to report
                await self._nics_undo(ctx, inst, live)
            raise

    async def _modify_tries(self, ctx: JobContext, args: dict[str, Any], live: list[tuple[str, int]]) -> dict[str, Any]:
        name, changes = args["name"], args["changes"]
        plugged = False
        for _ in range(MODIFY_TRIES):
            kvs, _ = await self.store.role.client.get_prefix(model.INSTANCES)
            records = {str(rec["name"]): (kv, rec) for kv in kvs for rec in [model.loads(kv.value)]}
            if name not in records:
                raise NotFound(f"instance '{name}' was removed before it could be modified")
            inst = records[name][1]
            target = pending.effective(inst)
            wanted = check_modify(target, changes, tuple(rec for _, rec in records.values()),
                                  await self.store.cluster_hv())
            nic_lines: list[str] = []
            if "nics" in changes:
                wanted["nics"], nic_lines, _ = await self._changed_nics(target, changes["nics"], ctx.job["id"])
                plan = await self.nic_live_plan(inst, changes["nics"], len(wanted["nics"]))
                if plan is not None and not plugged:
                    await self._nics_live(ctx, inst, wanted["nics"], plan, live)
                    plugged = True
            view = await cluster_view(self.store)
            check_kernel(target, wanted, view)
            short = check_resources(target, wanted, view, self.store.clock.time())
            if short and not args.get("force"):
                raise JobFailed("; ".join(short))
            running = await self.store.running(inst)
            new = pending.split(inst, wanted, running)
            new["mtime"] = self.store.clock.time()
            if new.get("backup_schedule", "") != inst.get("backup_schedule", ""):  # for cluster verify's overdue
                new["backup_since"] = new["mtime"] if new.get("backup_schedule") else 0.0
            kept = [records[n][0] for n in _reached(name, new["after"], records)]
            token = self.store.role.token
            if token is None or not self.store.role.lease_ok():
                raise JobFailed("this node is no longer certainly master (lease not renewed in time); stopped")
            addresses, free = self.store.address_writes(inst, new)
            result = await self.store.role.lease.guarded_txn(
                token, [Op.put(model.instance_key(name), model.dumps(new)), *addresses],
                extra_compares=[*(Compare.mod_revision(kv.key, "=", kv.mod_revision) for kv in kept), *free])
            if result.succeeded:
                live.clear()  # written: nothing to undo
                for line in nic_lines:
                    await ctx.log(f"instance '{name}': {line}")
                if nic_lines and not plugged:
                    await ctx.log(f"the NICs of '{name}' take effect at its next start")
                for key in (k for k in changes if k != "nics"):
                    field = {"memory": "memory_mib"}.get(key, key)
                    await ctx.log(f"instance '{name}': {key} {_change(field, target.get(field), wanted.get(field))}")
                for line in short:
                    await ctx.log(f"WARNING (--force): {line}")
                if {"boot_pattern", "boot_timeout_s"} & set(changes):
                    await ctx.log("the boot check applies from the next start of the instance")
                if {"backup_schedule", "backup_keep", "backup_to"} & set(changes):
                    await ctx.log(_backup_words(new, await self.store.get(model.CLUSTER_KEY) or {}))
                await vncpass.ensure(self.store, new)
                if "cdrom" in changes:
                    await cdrom.apply_live(self.store, ctx, new)
                if new.get("pending"):
                    await ctx.log(f"pending: {_pending_words(new['pending'])} take(s) effect at the next restart "
                                  f"of '{name}'" + (" (restarting it now, as asked)" if args.get("restart") else
                                                    " (`corral instance reboot`, or modify --restart)"))
                    if args.get("restart"):
                        await self.stop(ctx, pending.effective(new), False, None)  # its new shutdown timeout too
                        await self.start(ctx, new, await self.store.hvparams(new))
                return {"name": name, "pending": new.get("pending") or {},
                        **{key: wanted.get({"memory": "memory_mib"}.get(key, key)) for key in changes}}
            await ctx.log("the instances changed while this modify checked them; checking again")
        raise JobFailed(f"instance '{name}' or the instances it starts after kept changing during "
                        f"{MODIFY_TRIES} tries; try again")


def _reached(name: str, after: list[str], records: dict[str, tuple[Any, dict[str, Any]]]) -> list[str]:
    """`name` and every instance its new `after` links reach, directly or through others."""
    order, todo = [name], list(after)
    while todo:
        current = todo.pop()
        if current in order or current not in records:
            continue
        order.append(current)
        todo += records[current][1].get("after", [])
    return order


def _change(field: str, was: Any, now: Any) -> str:
    shown = (lambda v: format_mib(int(v or 0))) if field == "memory_mib" else _shown
    return f"{shown(was)} -> {shown(now)}" + (" (unchanged)" if was == now else "")


def _backup_words(inst: dict[str, Any], cluster: dict[str, Any]) -> str:
    schedule = inst.get("backup_schedule") or ""
    if not schedule:
        return f"instance '{inst['name']}' has no backup schedule: the master makes no backups of it by itself"
    target = backup_schedule.target_of(inst, cluster)
    return (f"the master backs up '{inst['name']}' {backup_schedule.schedule_words(schedule)} (live while it runs), "
            f"into {target or 'the first export directory of its node'}, keeping the newest "
            f"{backup_schedule.keep_of(inst, cluster)} there")


def _pending_words(changes: dict[str, Any]) -> str:
    words = {"memory_mib": lambda v: f"memory {format_mib(v)}", "vcpus": lambda v: f"{v} vCPUs",
             "hvparams": lambda v: "hypervisor parameters " + (",".join(f"{k}={x}" for k, x in sorted(v.items()))
                                                                or "(cluster defaults)"),
             "cdrom": lambda v: f"a CD-ROM drive with {v}" if v else "an empty CD-ROM drive"}
    return ", ".join(words[k](v) for k, v in changes.items() if k in words)


def _shown(value: Any) -> str:
    if value is None:
        return "default"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(value) or "(none)"
    return repr(value)
