"""Small changes and queries as jobs, for Ganeti's RAPI, where every change and some reads answer a job id:
cluster settings, a node's flags, tags, and an instance's full details.

Corral's own API makes the first three at once (no job); these jobs make the same changes through the same
code, checked at submit as the direct ones are, so a refused request leaves no job behind.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from election.etcd import Compare, Op

from hostagent import model, views
from hostagent.errors import BadRequest, Conflict, NotFound
from hostagent.master import cluster_settings
from hostagent.master.decide import tags
from hostagent.master.jobs import Handler, JobContext, JobFailed
from hostagent.master.store import Store

log = logging.getLogger(__name__)

TAG_TRIES = 3
STORAGE_TYPES = ("file", "lvm-vg")  # where Corral keeps disks: file (and mirror) templates, plain and drbd
STORAGE_FIELDS = ("name", "size", "used", "free", "allocatable", "node", "type")
NODE_FLAGS = ("candidate", "drained", "offline")

NodeModify = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]
SubmitInstance = Callable[[str, str, dict[str, Any]], Awaitable[int]]


async def retag(store: Store, key: str, what: str, add: Any, remove: Any) -> list[str]:
    """Tags of the record at `key` changed, written only if the record did not change since it was read."""
    role = store.role
    for _attempt in range(TAG_TRIES):
        kv = await role.client.get(key)
        if kv is None:
            raise NotFound(f"no {what.split(' ')[0]} named {what.split(' ', 1)[-1]}")
        record = model.loads(kv.value)
        new = tags.changed(record.get("tags") or [], add, remove)
        token = role.token
        if token is None:
            raise Conflict("this node stopped being master; try again")
        result = await role.lease.guarded_txn(token, [Op.put(key, model.dumps({**record, "tags": new}))],
                                              extra_compares=[Compare.mod_revision(key, "=", kv.mod_revision)])
        if result.succeeded:
            log.info("tags of %s now: %s", what, ", ".join(new) or "none")
            return new
    raise Conflict(f"{what} kept changing while its tags were written; try again")


def tag_target(kind: str, name: str) -> tuple[str, str]:
    """The record key and the operator's words for a tagged object: cluster, node or instance."""
    if kind == "cluster":
        return model.CLUSTER_KEY, "the cluster"
    if kind == "node":
        return model.node_key(name), f"node '{name}'"
    if kind == "instance":
        return model.instance_key(name), f"instance '{name}'"
    raise BadRequest(f"tags belong to the cluster, a node or an instance, not {kind!r}")


def storage_units(node: str, report: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    """A node's storage of one kind as its last report says: the file storage directory's file system, or the
    volume group (sizes in MiB)."""
    if kind == "file" and report.get("disk_total_mib") is not None:
        name, size, free = report.get("file_storage_dir") or "", report["disk_total_mib"], report["disk_free_mib"]
    elif kind == "lvm-vg" and (report.get("lvm") or {}).get("size_mib") is not None:
        name, size, free = report["lvm"]["vg"], report["lvm"]["size_mib"], report["lvm"]["free_mib"]
    else:
        return []
    return [{"name": name, "size": int(size), "used": int(size) - int(free), "free": int(free),
             "allocatable": True, "node": node, "type": kind}]


def storage_request(kind: Any, fields: Any) -> tuple[str, list[str]]:
    """A storage query, checked: its kind and the fields of each row, in order."""
    if kind not in STORAGE_TYPES:
        raise BadRequest(f"storage type {kind!r}: Corral keeps disks in {' and '.join(STORAGE_TYPES)} storage")
    if not isinstance(fields, list) or not fields or not all(isinstance(f, str) for f in fields):
        raise BadRequest(f"give the fields to answer, from {', '.join(STORAGE_FIELDS)}")
    unknown = [f for f in fields if f not in STORAGE_FIELDS]
    if unknown:
        raise BadRequest(f"unknown storage field(s) {', '.join(unknown)}; known: {', '.join(STORAGE_FIELDS)}")
    return kind, fields


def node_changes(changes: Any) -> dict[str, bool]:
    """A node flags change, checked (the same words as `corral node modify`)."""
    if not isinstance(changes, dict) or not changes:
        raise BadRequest(f"give the node flags to change: {', '.join(NODE_FLAGS)}")
    unknown = sorted(set(changes) - set(NODE_FLAGS))
    if unknown:
        raise BadRequest(f"unknown node setting(s) {', '.join(unknown)}; use {', '.join(NODE_FLAGS)}")
    bad = [k for k, v in changes.items() if not isinstance(v, bool)]
    if bad:
        raise BadRequest(f"{', '.join(bad)} must be true or false")
    return dict(changes)


class ConfigJobs:
    """Submit and run the jobs; `node_modify` is the node operations' own change (flags, with its checks)."""

    def __init__(self, store: Store, node_modify: NodeModify, submit_instance: SubmitInstance | None) -> None:
        self.store = store
        self.node_modify = node_modify
        self.submit_instance = submit_instance

    def handlers(self) -> dict[str, Handler]:
        return {"cluster.modify": self._job_cluster_modify, "node.modify": self._job_node_modify,
                "tags.change": self._job_tags, "instance.query-data": self._job_query_data,
                "node.migrate": self._job_node_migrate, "node.query-storage": self._job_query_storage}

    # ---- submit ------------------------------------------------------------------------------------------
    async def submit_cluster_modify(self, changes: dict[str, Any]) -> int:
        problems = cluster_settings.check_changes(changes)
        if problems or not changes:
            raise BadRequest("; ".join(problems) or "nothing to change in the cluster's settings")
        said = ", ".join(sorted(changes))
        return await self.store.role.require().submit("cluster.modify", {"changes": changes},
                                                      f"change cluster settings: {said}")

    async def submit_node_modify(self, name: str, changes: Any) -> int:
        checked = node_changes(changes)
        if await self.store.get(model.node_key(name)) is None:
            raise NotFound(f"no node named '{name}'")
        if name == self.store.role.node and (checked.get("offline") or checked.get("candidate") is False):
            raise Conflict(f"node '{name}' is the master; hand over first with `corral cluster master-failover`")
        said = ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in checked.items())
        return await self.store.role.require().submit("node.modify", {"node": name, "changes": checked},
                                                      f"modify node '{name}': {said}",
                                                      must_exist=[model.node_key(name)])

    async def submit_tags(self, kind: str, name: str, add: list[str], remove: list[str]) -> int:
        key, what = tag_target(kind, name)
        record = await self.store.get(key)
        if record is None:
            raise NotFound(f"no {what.split(' ')[0]} named {what.split(' ', 1)[-1]}")
        tags.changed(record.get("tags") or [], add, remove)  # refused now, with the reason, not in the job
        verb = "add tags to" if add else "remove tags from"
        return await self.store.role.require().submit("tags.change", {"kind": kind, "target": name, "add": add,
                                                                      "remove": remove}, f"{verb} {what}")

    async def submit_node_migrate(self, name: str, failover: bool, target: str | None) -> int:
        """Ganeti's node migrate: one job that submits a migration (or failover) of each replicated instance
        the node runs as primary; its result lists them, as Ganeti's does."""
        if await self.store.get(model.node_key(name)) is None:
            raise NotFound(f"no node named '{name}'")
        if target is not None and await self.store.get(model.node_key(target)) is None:
            raise NotFound(f"no node named '{target}' to migrate to")
        verb = "fail over" if failover else "migrate"
        return await self.store.role.require().submit(
            "node.migrate", {"node": name, "failover": failover, "target": target},
            f"{verb} the instances of node '{name}'", must_exist=[model.node_key(name)])

    async def submit_query_storage(self, name: str, kind: Any, fields: Any) -> int:
        checked = storage_request(kind, fields)
        if await self.store.get(model.node_key(name)) is None:
            raise NotFound(f"no node named '{name}'")
        return await self.store.role.require().submit(
            "node.query-storage", {"node": name, "storage_type": checked[0], "fields": checked[1]},
            f"{checked[0]} storage of node '{name}'")

    async def submit_query_data(self, name: str) -> int:
        await self.store.instance(name)
        return await self.store.role.require().submit("instance.query-data", {"name": name},
                                                      f"details of instance '{name}'")

    # ---- jobs --------------------------------------------------------------------------------------------
    async def _job_cluster_modify(self, ctx: JobContext, args: dict[str, Any]) -> dict[str, Any]:
        result = await cluster_settings.modify(self.store, dict(args["changes"]))
        await ctx.log(f"cluster settings changed: {', '.join(sorted(args['changes']))}")
        return result

    async def _job_node_modify(self, ctx: JobContext, args: dict[str, Any]) -> dict[str, Any]:
        node = await self.node_modify(args["node"], dict(args["changes"]))
        await ctx.log(f"node '{args['node']}': " + ", ".join(f"{k} {'yes' if v else 'no'}"
                                                            for k, v in args["changes"].items()))
        return {"node": node["name"], **{k: bool(node.get("master_capable" if k == "candidate" else k))
                                         for k in NODE_FLAGS}}

    async def _job_tags(self, ctx: JobContext, args: dict[str, Any]) -> dict[str, Any]:
        key, what = tag_target(args["kind"], args["target"])
        new = await retag(self.store, key, what, args.get("add"), args.get("remove"))
        await ctx.log(f"tags of {what}: {', '.join(new) or 'none'}")
        return {"tags": new}

    async def _job_node_migrate(self, ctx: JobContext, args: dict[str, Any]) -> dict[str, Any]:
        """Each instance's job is submitted with its own checks; one refused does not stop the others."""
        assert self.submit_instance is not None
        name, op = args["node"], "instance.failover" if args["failover"] else "instance.migrate"
        params = {"ignore_consistency": False} if args["failover"] else (
            {"node": args["target"]} if args.get("target") else {})
        jobs: list[list[Any]] = []
        for inst in sorted(await self.store.prefix(model.INSTANCES), key=lambda i: i["name"]):
            if inst["primary_node"] != name:
                continue
            if not inst.get("secondary_node"):
                await ctx.log(f"instance '{inst['name']}' ({inst['disk_template']}) has no copy elsewhere: "
                              f"it stays on node '{name}'")
                continue
            try:
                job_id = await self.submit_instance(op, inst["name"], params)
            except (BadRequest, Conflict, NotFound) as exc:
                await ctx.log(f"instance '{inst['name']}': not moved: {exc}")
                jobs.append([False, str(exc)])
                continue
            await ctx.log(f"instance '{inst['name']}': job {job_id}")
            jobs.append([True, job_id])
        return {"jobs": jobs}

    async def _job_query_storage(self, ctx: JobContext, args: dict[str, Any]) -> dict[str, Any]:
        """Rows of the asked fields, as Ganeti's storage query answers (a list of lists)."""
        report = await self.store.get(model.report_key(args["node"]))
        if report is None:
            raise JobFailed(f"node '{args['node']}' has not reported yet: its storage is unknown")
        units = storage_units(args["node"], report, args["storage_type"])
        return {"rows": [[unit[f] for f in args["fields"]] for unit in units]}

    async def _job_query_data(self, ctx: JobContext, args: dict[str, Any]) -> dict[str, Any]:
        """The instance's record, its observed state and the cluster's hypervisor defaults, as of now."""
        inst = await self.store.instance(args["name"])
        reports = {r["node"]: r for r in await self.store.prefix(model.REPORTS)}
        cluster = await self.store.get(model.CLUSTER_KEY) or {}
        return {"instance": inst, "row": views.instance_row(inst, reports, self.store.clock.time()),
                "hv_defaults": cluster.get("hvparams") or {}, "cluster_uuid": str(cluster.get("uuid", ""))}
