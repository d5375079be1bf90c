"""Instance routes of the API and what users track beside them: instances, events, jobs, OS, users.

These are what `corral instance|job|os|user ...` and `corral events` call.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from storage.osdef import OsDefinition

from hostagent import model, views
from hostagent.api import users
from hostagent.api.base import ApiBase
from hostagent.errors import BadRequest, NotFound
from hostagent.master.decide import backup_schedule
from hostagent.master.node_ops import NodeOperations
from hostagent.master.operations import Operations


def _job_id(raw: str) -> int:
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:  # '¹' is a digit to str.isdigit, not to int()
        raise BadRequest(f"job id {raw!r} is not a number (a job id is a whole number, e.g. 42)")
    return int(raw)


ACTIONS = ("start", "stop", "reboot", "migrate", "failover", "move", "replace-secondary", "activate-disks",
           "deactivate-disks",
           "grow-disk", "reinstall", "rename", "add-disk", "remove-disk", "snapshot-create", "snapshot-revert",
           "snapshot-remove", "restore")


def action_params(action: str, body: dict[str, Any]) -> dict[str, Any]:
    """The parameters of an instance action, checked before any job exists; BadRequest names the field."""
    def flag(field: str) -> bool:
        value = body.get(field, False)
        if not isinstance(value, bool):
            raise BadRequest(f"{field} must be true or false, not {value!r}")
        return value

    def number(field: str, what: str, low: float, high: float, default: float | None) -> float | None:
        value = body.get(field, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            raise BadRequest(f"{field} must be {what} from {low:g} to {high:g}, not {value!r}")
        return float(value)

    def node(required: bool) -> str | None:
        value = body.get("node")
        if value is None and not required:
            return None
        if not isinstance(value, str) or not value:
            raise BadRequest(f"node must be a node name, not {value!r}")
        return value

    if action == "stop":
        return {"force": flag("force"), "timeout_s": number("timeout_s", "a number of seconds", 0, 3600, None)}
    if action == "reboot":
        kind = body.get("type", "soft")
        if kind not in ("soft", "hard"):
            raise BadRequest(f"type must be soft or hard, not {kind!r}")
        return {"type": kind}
    if action == "migrate":
        return {"node": node(False),
                "max_bandwidth_mib_s": number("max_bandwidth_mib_s", "a number of MiB/s", 1, 100_000, 1024)}
    if action == "failover":
        return {"ignore_consistency": flag("ignore_consistency")}
    if action in ("move", "replace-secondary"):
        return {"node": node(True)}
    if action == "grow-disk":
        return {"disk": body.get("disk"), "size": body.get("size")}
    if action == "add-disk":
        return {"size": body.get("size"), "format": body.get("format") or "raw"}
    if action == "remove-disk":
        return {"disk": body.get("disk"), "destroy_data": flag("destroy_data")}
    if action == "rename":
        value = body.get("new_name")
        if not isinstance(value, str) or not value:
            raise BadRequest(f"new_name must be the instance's new name, not {value!r}")
        return {"new_name": value}
    if action.startswith("snapshot-"):  # the name is checked with the instance (hostagent.master.snapshots)
        return {"snapshot": body.get("snapshot"), **({"yes": flag("yes")} if action == "snapshot-revert" else {})}
    if action == "restore":  # the backup is checked with the instance (hostagent.master.backups)
        return {"backup": body.get("backup"), "yes": flag("yes")}
    if action == "reinstall":  # the OS and its parameters are checked against the node at submit
        return {"yes": flag("yes"), "os": body.get("os"), "osparams": body.get("osparams")}
    return {}


class InstanceRoutes(ApiBase):
    """Handlers for /v1/instances/..., /v1/events, /v1/jobs/..., /v1/os and /v1/users/...."""

    async def instance_list(self, request: web.Request) -> web.Response:
        """Every instance, or those matching all of ?tag=, ?node= (primary or secondary), ?status=, ?owner=."""
        reports, now, q = self._reports(), self.agent.clock.time(), request.query
        rows = [views.instance_row(i, reports, now) for i in self._instances()]
        return self._ok([r for r in rows
                         if ("tag" not in q or q["tag"] in r["tags"])
                         and ("node" not in q or q["node"] in (r["primary_node"], r["secondary_node"]))
                         and ("status" not in q or r["status"] == q["status"])
                         and ("owner" not in q or r["owner"] == q["owner"])])

    async def instance_info(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        self._require_cluster()
        inst = next((i for i in self._instances() if i["name"] == name), None)
        if inst is None:
            raise NotFound(f"no instance named '{name}'")
        row = views.instance_row(inst, self._reports(), self.agent.clock.time())
        if inst["primary_node"] == self.agent.cfg.node_name and not row["console_tail"]:
            lines = self.agent.qemu.console_log_tail(name, 30)
            row["console_tail"] = [line for line in lines if line.strip()][-10:]
        cluster = self.agent.replica.get_json(model.CLUSTER_KEY) or {}
        row["auto_failover_default"] = bool(cluster.get("auto_failover", False))
        row["backup"] = backup_schedule.describe(inst, self._reports(), cluster,
                                                 self.agent.replica.get_json(model.backup_run_key(name)),
                                                 self.agent.clock.time())
        return self._ok(row)

    async def instance_add(self, request: web.Request) -> web.Response:
        body = await self._body(request)

        async def run(ops: Operations, nodes: NodeOperations) -> web.Response:
            return await self._accepted(await ops.submit_add(body))
        return await self._on_master(request, run)

    async def instance_modify(self, request: web.Request) -> web.Response:
        name, body = request.match_info["name"], await self._body(request)

        async def run(ops: Operations, nodes: NodeOperations) -> web.Response:
            return await self._accepted(await ops.modify.submit(name, body))
        return await self._on_master(request, run)

    async def instance_moves(self, request: web.Request) -> web.Response:
        """Several moves of one instance as one job: {"steps": [{"action": "migrate"|"failover"|
        "replace-secondary", "node": NODE}]} (hbal -X's jobs, through LUXI)."""
        name, body = request.match_info["name"], await self._body(request)

        async def run(ops: Operations, nodes: NodeOperations) -> web.Response:
            return await self._accepted(await nodes.balancing.submit_moves(name, body.get("steps")))
        return await self._on_master(request, run)

    async def instance_query_data(self, request: web.Request) -> web.Response:
        """A job whose result is the instance's details (Ganeti's RAPI asks for them so: /info)."""
        name = request.match_info["name"]

        async def run(ops: Operations, nodes: NodeOperations) -> web.Response:
            return await self._accepted(await nodes.config.submit_query_data(name))
        return await self._on_master(request, run)

    async def instance_action(self, request: web.Request) -> web.Response:
        name, action = request.match_info["name"], request.match_info["action"]
        body = await self._body(request)
        if action not in ACTIONS:
            raise NotFound(f"unknown instance action '{action}' ({', '.join(ACTIONS)})")
        params = action_params(action, body)

        async def run(ops: Operations, nodes: NodeOperations) -> web.Response:
            if action == "rename":
                return await self._accepted(await ops.submit_rename(name, params["new_name"]))
            return await self._accepted(await ops.submit_simple(f"instance.{action}", name, params))
        return await self._on_master(request, run)

    async def instance_remove(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]

        async def run(ops: Operations, nodes: NodeOperations) -> web.Response:
            return await self._accepted(await ops.submit_simple("instance.remove", name, {}))
        return await self._on_master(request, run)

    # ---- jobs, OS, users -----------------------------------------------------
    async def event_list(self, request: web.Request) -> web.Response:
        """The master's automatic decisions, newest last; ?instance= and ?node= narrow them."""
        self._require_cluster()
        instance, node = request.query.get("instance"), request.query.get("node")
        try:
            limit = int(request.query.get("limit", "50"))
        except ValueError:
            raise BadRequest(f"limit {request.query.get('limit')!r} is not a number of events") from None
        events = [e for e in self._all(model.EVENTS)
                  if (instance is None or e["instance"] == instance) and (node is None or e["node"] == node)]
        return self._ok(events[-limit:] if limit > 0 else events)

    async def job_list(self, request: web.Request) -> web.Response:
        """Live jobs, or ?archived=1 the archived ones; ?status=running|queued|success|error|canceled."""
        keys = ("id", "op", "summary", "status", "created", "started", "ended", "error")
        archived, status = request.query.get("archived") in ("1", "true", "yes"), request.query.get("status")
        jobs = self._all(model.JOBS_ARCHIVE if archived else model.JOBS)
        return self._ok([{k: j.get(k) for k in keys} for j in jobs if status is None or j.get("status") == status])

    async def job_info(self, request: web.Request) -> web.Response:
        job_id = _job_id(request.match_info["id"])
        self._require_cluster()
        job = self.agent.replica.get_json(model.job_key(job_id)) or \
            self.agent.replica.get_json(model.archived_job_key(job_id))
        if job is None:
            raise NotFound(f"no job {job_id}")
        return self._ok(job)

    async def job_cancel(self, request: web.Request) -> web.Response:
        job_id = _job_id(request.match_info["id"])

        async def run(ops: Operations, nodes: NodeOperations) -> web.Response:
            await ops.role.require().cancel(job_id)
            await asyncio.sleep(0)  # let the cancel's write reach etcd before answering
            return self._ok({"job_id": job_id, "status": "canceled"})
        return await self._on_master(request, run)

    async def os_list(self, request: web.Request) -> web.Response:
        catalog = self.agent.refresh_catalog()
        rows = []
        for name, entry in sorted(catalog.entries.items()):
            script = entry if isinstance(entry, OsDefinition) else None
            rows.append({"name": name, "kind": "script" if script else "image", "path": entry.path,
                         "variants": list(script.variants) if script else [],
                         "api_versions": list(script.api_versions) if script else []})
        return self._ok({"node": self.agent.cfg.node_name, "os": rows, "problems": list(catalog.problems)})

    async def user_list(self, request: web.Request) -> web.Response:
        return self._ok([users.public(u) for u in self._all(model.USERS)])

    async def user_add(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        record, token = users.new_user(str(body.get("name", "")), str(body.get("role", "")), self.agent.clock.time())

        async def run(ops: Operations, nodes: NodeOperations) -> web.Response:
            await ops.store.put_new(model.user_key(record["name"]), record, f"user '{record['name']}' already exists")
            await self._wait_replica(model.user_key(record["name"]))
            return self._ok({**users.public(record), "token": token, "api_port": self.agent.cfg.api_port})
        return await self._on_master(request, run)

    async def user_remove(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]

        async def run(ops: Operations, nodes: NodeOperations) -> web.Response:
            await ops.store.delete_existing(model.user_key(name), f"no user named '{name}'")
            return self._ok({"name": name})
        return await self._on_master(request, run)
