"""`instance rename`: the name checked and reserved at submit, the instance stopped; its files renamed on its
nodes (the OS definition's rename script on the primary), then one transaction for every config reference."""

from __future__ import annotations

from typing import Any

from election.etcd import Op

from hostagent import model
from hostagent.errors import BadRequest, Conflict
from hostagent.master.decide.checks import check_new_name
from hostagent.master.jobs import JobContext, operator_errors
from hostagent.master.snapshots import refuse_with_lvm_snapshots
from hostagent.master.store import Store
from hostagent.status import instance_status


class Renames:
    """The rename job and its submit check, on the master's store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def submit(self, name: str, new_name: str) -> int:
        """Checked now: a valid free name, the instance stopped; the new name is reserved with the job."""
        inst = await self.store.instance(name)
        if inst.get("disk_template") == "drbd":
            raise BadRequest(f"instance '{name}' keeps its disks on DRBD; renaming its resources is not supported "
                             "yet")
        await self._check_stopped(inst, "renamed")
        await refuse_with_lvm_snapshots(self.store, inst, "it is renamed")
        instances = {i["name"] for i in await self.store.prefix(model.INSTANCES)}
        check_new_name(new_name, instances)
        return await self.store.role.require().submit(
            "instance.rename", {"name": name, "new_name": new_name}, f"rename instance '{name}' to '{new_name}'",
            reservations=[model.reservation_key("instance", new_name)],
            must_exist=[model.instance_key(name)], must_not_exist=[model.instance_key(new_name)])

    async def _check_stopped(self, inst: dict[str, Any], what: str) -> None:
        report = await self.store.get(model.report_key(inst["primary_node"]))
        if inst["admin_state"] == "up" or instance_status(inst, report, self.store.clock.time()).pid is not None:
            raise Conflict(f"instance '{inst['name']}' is running (or marked up); it is {what} only stopped: "
                           f"`corral instance stop {inst['name']}` first")

    @operator_errors
    async def job(self, ctx: JobContext, args: dict[str, Any]) -> dict[str, Any]:
        """Files on its nodes first (idempotent), then one transaction for every config reference."""
        old, new_name = args["name"], args["new_name"]
        inst = await self.store.instance(old)
        await self._check_stopped(inst, "renamed")
        new = {**inst, "name": new_name, "mtime": self.store.clock.time()}
        hv = await self.store.hvparams(inst)
        if inst.get("secondary_node"):
            await self.store.order(inst["secondary_node"], "instance.replica-unexport",
                                   {"name": old, "disks": inst["disks"]})
            await self.store.order(inst["secondary_node"], "instance.rename",
                                   {"old_name": old, "instance": new, "hvparams": hv, "run_script": False})
            await ctx.log(f"the copy of '{old}' on node '{inst['secondary_node']}' is now '{new_name}''s")
        result = await self.store.order(inst["primary_node"], "instance.rename",
                                        {"old_name": old, "instance": new, "hvparams": hv, "run_script": True,
                                         "networks": await self.store.nic_networks(inst)}, timeout_s=3600)
        if result.get("script_log"):
            await ctx.log(f"the OS rename script ran on node '{inst['primary_node']}' (log {result['script_log']})")
        writes = [Op.put(model.instance_key(new_name), model.dumps(new)), Op.delete(model.instance_key(old)),
                  Op.delete(model.restart_key(old))]
        replica = await self.store.get(model.replica_key(old))
        if replica is not None:
            writes += [Op.put(model.replica_key(new_name), model.dumps({**replica, "name": new_name})),
                       Op.delete(model.replica_key(old))]
        for other in await self.store.prefix(model.INSTANCES):
            if old in (other.get("after") or []):
                other["after"] = [new_name if a == old else a for a in other["after"]]
                writes.append(Op.put(model.instance_key(other["name"]), model.dumps(other)))
                await ctx.log(f"instance '{other['name']}' now starts after '{new_name}'")
        await self.store.write(writes)
        await ctx.log(f"instance '{old}' is now '{new_name}' (same UUID, MACs and disks; past events keep "
                      f"the name '{old}')")
        return {"name": new_name, "old_name": old}
