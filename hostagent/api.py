"""The agent's HTTP API (/v1): a unix socket for the local CLI, TLS for nodes and users.

Reads are answered from the local SQLite replica (with its age, so a stale
answer says so). Changes run on the master: a non-master agent forwards them
over mutual TLS and answers once its own replica has the result
(read-your-writes). Errors are JSON {error, message}; the status code says
which kind.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import WSMsgType, web

from election.etcd import EtcdError, EtcdRequestFailed
from election.lease import FencingToken, NotMaster
from kvm.cmdline import run_paths
from kvm.hvparams import HvParamError, parse_hvparams
from storage.base import StorageError
from storage.osdef import OsDefinition

from hostagent import auth, clocks, cluster_settings, drill, joining, model, pki, users, views
from hostagent.agent import Agent, NotInitialized
from hostagent.errors import BadRequest, Conflict, NotFound
from hostagent.executor import OrderError
from hostagent.fencing import NotTheMaster, StaleToken
from hostagent.joining import JoinRefused
from hostagent.master import NoMaster
from hostagent.node_ops import NodeOperations
from hostagent.openapi import openapi_document
from hostagent.operations import Operations
from hostagent.orders import NodeClient, OrderFailed
from hostagent.repair import Repair
from hostagent.status import REPORT_STALE_AFTER_S, report_age_s
from hostagent.units import SizeError

log = logging.getLogger(__name__)

NO_QUORUM = ("no quorum: the cluster's etcd members cannot agree right now, so changes are refused "
             "until a majority of the master candidates is reachable again; reads still work from "
             "each node's replica. Detail: ")
_ERRORS: list[tuple[type[BaseException], int, str]] = [
    (BadRequest, 400, "bad-request"), (SizeError, 400, "bad-request"), (HvParamError, 400, "bad-request"),
    (NotFound, 404, "not-found"), (Conflict, 409, "conflict"), (FileExistsError, 409, "conflict"),
    (StaleToken, 409, "stale-token"), (NotTheMaster, 409, "not-the-master"), (JoinRefused, 403, "join-refused"),
    (NoMaster, 503, "no-master"), (NotInitialized, 503, "not-initialized"),
    (NotMaster, 503, "no-master"), (ConnectionError, 503, "master-unreachable"), (TimeoutError, 503, "timeout"),
    (OrderError, 422, "order-failed"), (StorageError, 422, "storage"),
]


# Cluster-wide numbers `cluster init` takes, and what each must be.
CLUSTER_SETTINGS = {
    "sync_rate_mib_s": "a number of MiB/s for background disk copies (0: no cap)",
    "restart_backoff_s": "a number of seconds before the second restart attempt (it doubles after)",
}


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": code, "message": message}, status=status)


@web.middleware
async def _errors(request: web.Request,
                  handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except EtcdError as exc:
        if isinstance(exc, EtcdRequestFailed) or "unhealthy cluster" in str(exc):
            return _error(503, "etcd-refused", f"etcd refused the change for now: {exc}; try again in a few seconds")
        return _error(503, "no-quorum", NO_QUORUM + str(exc))
    except Exception as exc:  # noqa: BLE001 - translated once, here
        for typ, status, code in _ERRORS:
            if isinstance(exc, typ):
                return _error(status, code, str(exc))
        if type(exc).__module__.startswith(("storage", "kvm")):
            return _error(422, "node-error", str(exc))
        log.exception("API %s %s failed; please report this bug", request.method, request.path)
        return _error(500, "internal", f"internal error: {exc!r} (please report this bug)")


def _job_id(raw: str) -> int:
    if not raw.isdigit():
        raise BadRequest(f"job id {raw!r} is not a number")
    return int(raw)


class Api:
    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    # ---- helpers -------------------------------------------------------------
    def _replica_info(self) -> dict[str, Any]:
        last = self.agent.replica.last_sync_unix()
        age = None if not last else max(0.0, time.time() - last)
        return {"revision": self.agent.replica.applied_revision(),
                "age_s": None if age is None else round(age, 1),
                "stale": age is None or age > REPORT_STALE_AFTER_S}

    def _ok(self, data: Any, status: int = 200) -> web.Response:
        return web.json_response({"data": data, "replica": self._replica_info()}, status=status)

    def _all(self, prefix: str) -> list[Any]:
        self._require_cluster()
        return [obj for _, obj in self.agent.replica.prefix_json(prefix)]

    def _instances(self) -> list[dict[str, Any]]:
        """Instance records with the master's restart track of each, for the status shown."""
        tracks = {t["name"]: t for t in self._all(model.RESTARTS)}
        return [{**i, "restart": tracks.get(i["name"])} for i in self._all(model.INSTANCES)]

    def _reports(self) -> dict[str, dict[str, Any]]:
        return {r["node"]: r for r in self._all(model.REPORTS)}

    def _master(self) -> str | None:
        master = self.agent.replica.get_json(model.MASTER_KEY)
        return master.get("node") if isinstance(master, dict) else None

    def _require_cluster(self) -> None:
        if self.agent.local_cluster() is None:
            raise NotInitialized(f"node '{self.agent.cfg.node_name}' is not part of a cluster yet; "
                                 "run `corral cluster init --name NAME` first")

    async def _body(self, request: web.Request) -> dict[str, Any]:
        if not request.can_read_body:
            return {}
        try:
            body = await request.json()
        except ValueError:
            raise BadRequest("the request body must be a JSON object") from None
        if not isinstance(body, dict):
            raise BadRequest("the request body must be a JSON object")
        return body

    async def _wait_replica(self, key: str) -> None:
        """Read-your-writes: return once this node's replica has `key` (bounded)."""
        for _ in range(500):
            if self.agent.replica.get(key) is not None:
                return
            await asyncio.sleep(0.01)

    async def _accepted(self, job_id: int) -> web.Response:
        await self._wait_replica(model.job_key(job_id))
        return self._ok({"job_id": job_id}, status=202)

    async def _on_master(self, request: web.Request,
                         run: Callable[[Operations, NodeOperations], Awaitable[web.Response]]) -> web.Response:
        """Run a change here if this node is master, else forward it to the master."""
        self._require_cluster()
        role, me = self.agent.role, self.agent.cfg.node_name
        deadline = time.monotonic() + self.agent.cfg.master_lease_ttl_s + 5
        # No master recorded, or this node: it may be (re)taking the role. Wait a moment rather
        # than fail, but stop as soon as the replica names another master.
        while (role is not None and not role.is_master and self._master() in (None, me)
               and time.monotonic() < deadline):
            try:
                await asyncio.wait_for(role.became_master.wait(), 0.1)
            except asyncio.TimeoutError:
                pass
        if self.agent.role is not None and self.agent.role.is_master:
            assert self.agent.ops is not None and self.agent.node_ops is not None
            return await run(self.agent.ops, self.agent.node_ops)
        quorum = await self._quorum()
        for _ in range(3):  # an etcd leader election takes about a second: not a lost quorum yet
            if quorum["ok"]:
                break
            await asyncio.sleep(0.5)
            quorum = await self._quorum()
        if not quorum["ok"]:  # say why at once instead of timing out on a master that cannot commit
            raise NoMaster(None, NO_QUORUM + quorum["reason"])
        master = self._master()
        node = self.agent.replica.get_json(model.node_key(master)) if master else None
        if node is None or self.agent.nodes is None:
            raise NoMaster(None, "no master is elected right now, so changes are refused; "
                                 "`corral cluster info` shows the quorum state")
        try:
            status, data = await self.agent.nodes.forward(node["address"], node["api_port"], request.method,
                                                          request.path_qs, await request.read())
        except ConnectionError:
            quorum = await self._quorum()  # a master that does not answer: is it the quorum?
            if not quorum["ok"]:
                raise NoMaster(master, NO_QUORUM + quorum["reason"]) from None
            raise
        job_id = (data.get("data") or {}).get("job_id") if isinstance(data.get("data"), dict) else None
        if status == 202 and job_id is not None:
            await self._wait_replica(model.job_key(job_id))
        elif status < 300 and self.agent.etcd is not None and self.agent.mirror is not None:
            # read-your-writes for direct changes too: catch up to etcd's revision now
            revision = (await self.agent.etcd.status())["revision"]
            await self.agent.mirror.wait_for_revision(revision, timeout_s=5)
        if "data" in data:
            data["replica"] = self._replica_info()
        return web.json_response(data, status=status)

    # ---- cluster -------------------------------------------------------------
    async def cluster_info(self, request: web.Request) -> web.Response:
        local = self.agent.local_cluster()
        if local is None:
            return self._ok({"name": None, "initialized": False, "master": None, "token": None,
                             "this_node": self.agent.cfg.node_name, "this_node_is_master": False,
                             "hvparams": {}, "candidates": [], "nodes": 0, "instances": 0, "quorum": None})
        cluster = self.agent.replica.get_json(model.CLUSTER_KEY) or {}
        master = self.agent.replica.get_json(model.MASTER_INFO_KEY) or {}
        role = self.agent.role
        mine = role.token if role is not None and role.is_master else None
        return self._ok({
            "name": cluster.get("name") or local["name"],
            "initialized": True,
            "master": self._master(),
            "token": mine.to_str() if mine else (master.get("token") if master.get("node") == self._master() else None),
            "this_node": self.agent.cfg.node_name,
            "this_node_is_master": mine is not None,
            "this_node_is_candidate": bool(local.get("etcd_member")),
            "hvparams": cluster.get("hvparams", {}),
            "candidates": sorted(n["name"] for n in self._all(model.NODES) if n.get("candidate")),
            "nodes": len(self._all(model.NODES)),
            "instances": len(self._all(model.INSTANCES)),
            "quorum": await self._quorum(),
            "fencing": cluster.get("fencing", "armed"), "fencing_since": cluster.get("fencing_since"),
            "alert": cluster.get("alert"),
            "auto_failover": bool(cluster.get("auto_failover", False)),
            "max_lost_nodes": cluster.get("max_lost_nodes"),
            "failback_after_s": cluster.get("failback_after_s") or 0,
        })

    async def cluster_fencing(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        if not isinstance(body.get("armed"), bool):
            raise BadRequest("say whether fencing is armed: {\"armed\": true} (arm) or {\"armed\": false} (disarm)")

        async def run(ops: Operations, _: NodeOperations) -> web.Response:
            return self._ok(await cluster_settings.set_fencing(ops, body["armed"]))
        return await self._on_master(request, run)

    async def cluster_alert_clear(self, request: web.Request) -> web.Response:
        async def run(ops: Operations, _: NodeOperations) -> web.Response:
            return self._ok(await cluster_settings.clear_alert(ops))
        return await self._on_master(request, run)

    async def cluster_modify(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        problems = cluster_settings.check_changes(body)
        if problems:
            raise BadRequest("; ".join(problems))

        async def run(ops: Operations, _: NodeOperations) -> web.Response:
            return self._ok(await cluster_settings.modify(ops, body))
        return await self._on_master(request, run)

    async def cluster_simulate(self, request: web.Request) -> web.Response:
        fail = [n for n in request.query.get("fail", "").split(",") if n]
        if not fail:
            raise BadRequest("name the node(s) to take away: ?fail=NODE[,NODE...] (`corral cluster simulate "
                             "--fail NODE`)")

        async def run(_: Operations, __: NodeOperations) -> web.Response:
            assert self.agent.autofailover is not None
            return self._ok(await self.agent.autofailover.simulate(fail))
        return await self._on_master(request, run)

    async def _quorum(self) -> dict[str, Any]:
        """Whether etcd can commit right now, as seen from this node."""
        etcd = self.agent.etcd
        if etcd is None:
            return {"ok": False, "reason": "this agent has no etcd client"}
        try:
            status = await asyncio.wait_for(etcd.status(), 3)
        except (EtcdError, TimeoutError) as exc:
            return {"ok": False, "reason": str(exc)}
        if not status.get("leader"):
            return {"ok": False, "reason": "the etcd member this node asked has no leader"}
        return {"ok": True, "reason": "", "leader_id": status["leader"], "revision": status["revision"]}

    async def cluster_init(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        name = str(body.get("name", ""))
        if not name or not name.replace("-", "").replace(".", "").isalnum() or len(name) > 63:
            raise BadRequest(f"cluster name {name!r} is not valid: use letters, digits, '-' and '.' (at most 63)")
        hv = body.get("hvparams", {})
        if not isinstance(hv, dict):
            raise BadRequest("hvparams must be an object of name: value")
        parse_hvparams(hv)  # refuse bad defaults before anything is created
        pool = body.get("candidate_pool_size", 3)
        if pool not in (1, 3, 5):
            raise BadRequest(f"candidate pool size {pool!r} must be 1, 3 or 5 (odd, so etcd keeps a majority)")
        settings = {}
        for key, what in CLUSTER_SETTINGS.items():
            value = body.get(key)
            if value is None:
                continue
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise BadRequest(f"{key}: {value!r} is not {what}")
            settings[key] = float(value)
        job_id = await self.agent.init_cluster(name, hv, pool, settings)
        return await self._accepted(job_id)

    async def cluster_join(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        address, token = str(body.get("address", "")), str(body.get("token", ""))
        if not address:
            raise BadRequest("the address of a cluster node is required, e.g. 192.0.2.11 or 192.0.2.11:7947")
        joining.parse_token(token)
        return self._ok(await self.agent.join_cluster(address, token))

    async def cluster_verify(self, request: web.Request) -> web.Response:
        self._require_cluster()
        nodes, reports, now = self._all(model.NODES), self._reports(), time.time()
        findings = views.verify(nodes, self._instances(), reports, self._all(model.JOBS), self._master(), now,
                                cluster=self.agent.replica.get_json(model.CLUSTER_KEY) or {},
                                leases={lease["node"]: lease for lease in self._all(model.LEASES)},
                                tracks=self._all(model.RESTARTS), clocks=await self._clocks(nodes, reports, now))
        if self._replica_info()["stale"]:
            findings.insert(0, views.Finding("warning", "this node's config replica is stale; "
                                                        "findings may be out of date"))
        return self._ok([{"severity": f.severity, "message": f.message, "code": f.code, "node": f.node,
                          "instance": f.instance} for f in findings])

    async def _clocks(self, nodes: list[dict[str, Any]], reports: dict[str, dict[str, Any]],
                      now: float) -> dict[str, clocks.ClockReading]:
        """The other nodes' clocks, of those that are up (a node that is down is a finding already)."""
        me = self.agent.cfg.node_name
        if self.agent.nodes is None:
            return {}
        up = [n for n in nodes if n["name"] != me and not n.get("offline")
              and (age := report_age_s(reports.get(n["name"]), now)) is not None and age <= REPORT_STALE_AFTER_S]
        return await clocks.measure(self.agent.nodes, me, up)

    async def cluster_repair(self, request: web.Request) -> web.Response:
        """`cluster verify --repair`: the master fixes what is safe (hostagent.repair) and says what it did."""
        async def run(ops: Operations, _: NodeOperations) -> web.Response:
            steps = await Repair(ops).run()
            if self.agent.etcd is not None and self.agent.mirror is not None:  # read-your-writes here too
                revision = (await self.agent.etcd.status())["revision"]
                await self.agent.mirror.wait_for_revision(revision, timeout_s=5)
            return self._ok(steps)
        return await self._on_master(request, run)

    async def node_clock(self, request: web.Request) -> web.Response:
        """Node-to-node: this node's wall clock, for the clock skew check of `cluster verify`."""
        return web.json_response({"node": self.agent.cfg.node_name, "time": time.time()})

    async def master_failover(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        to = body.get("to")

        async def run(ops: Operations, nodes: NodeOperations) -> web.Response:
            return self._ok(await nodes.master_failover(str(to) if to else None))
        return await self._on_master(request, run)

    async def replica_checksum(self, request: web.Request) -> web.Response:
        self._require_cluster()
        return self._ok({"node": self.agent.cfg.node_name, "revision": self.agent.replica.applied_revision(),
                         "checksum": self.agent.replica.checksum(exclude_prefixes=(model.REPORTS,)),
                         "checksum_all": self.agent.replica.checksum()})

    # ---- nodes ---------------------------------------------------------------
    async def _node_rows(self) -> list[dict[str, Any]]:
        gossip = await self.agent.gossip()
        reports, instances, master = self._reports(), self._all(model.INSTANCES), self._master()
        leases = {lease["node"] for lease in self._all(model.LEASES)}
        now = time.time()
        return [views.node_row(n, reports.get(n["name"]), master, gossip, instances, n["name"] in leases, now)
                for n in self._all(model.NODES)]

    async def node_list(self, request: web.Request) -> web.Response:
        return self._ok(await self._node_rows())

    async def node_info(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        for row in await self._node_rows():
            if row["name"] == name:
                report = self._reports().get(name, {})
                row["instances"] = sorted(report.get("instances", {}))
                row["os"] = report.get("os", {})
                row["volumes"] = report.get("volumes", [])
                row["fencing"] = report.get("fencing")
                return self._ok(row)
        raise NotFound(f"no node named '{name}'")

    async def node_add(self, request: web.Request) -> web.Response:
        body = await self._body(request)

        async def run(ops: Operations, nodes: NodeOperations) -> web.Response:
            ttl = body.get("ttl_s", joining.TOKEN_TTL_S)
            if not isinstance(ttl, (int, float)) or isinstance(ttl, bool):
                raise BadRequest(f"ttl_s {ttl!r} is not a number of seconds")
            return self._ok(await nodes.issue_token(str(body.get("name", "")), str(body.get("address", "")),
                                                    float(ttl)))
        return await self._on_master(request, run)

    async def node_remove(self, request: web.Request) -> web.Response:
        name, force = request.match_info["name"], request.query.get("force") == "1"

        async def run(ops: Operations, nodes: NodeOperations) -> web.Response:
            return self._ok(await nodes.remove(name, force))
        return await self._on_master(request, run)

    async def node_modify(self, request: web.Request) -> web.Response:
        name, body = request.match_info["name"], await self._body(request)

        async def run(ops: Operations, nodes: NodeOperations) -> web.Response:
            result = await nodes.modify(name, body)
            await self._wait_replica(model.node_key(name))
            return self._ok(result)
        return await self._on_master(request, run)

    async def node_drain(self, request: web.Request) -> web.Response:
        return await self._set_drained(request, True)

    async def node_undrain(self, request: web.Request) -> web.Response:
        return await self._set_drained(request, False)

    async def _set_drained(self, request: web.Request, drained: bool) -> web.Response:
        name = request.match_info["name"]

        async def run(ops: Operations, nodes: NodeOperations) -> web.Response:
            result = await nodes.set_drained(name, drained)
            await self._wait_replica(model.node_key(name))
            return self._ok(result)
        return await self._on_master(request, run)

    async def evacuate_node(self, request: web.Request) -> web.Response:
        """`node evacuate N`: one job that empties N, or with {"dry_run": true} only its plan."""
        name, body = request.match_info["name"], await self._body(request)
        dry_run = body.get("dry_run", False)
        if not isinstance(dry_run, bool):
            raise BadRequest(f"dry_run must be true or false, got {dry_run!r}")

        async def run(ops: Operations, nodes: NodeOperations) -> web.Response:
            if dry_run:
                return self._ok((await nodes.plan_evacuation(name)).to_dict())
            return await self._accepted(await nodes.submit_evacuation(name))
        return await self._on_master(request, run)

    async def node_evacuate(self, request: web.Request) -> web.Response:
        """`node migrate|failover N`: one job per replicated primary instance of N."""
        name, action = request.match_info["name"], request.match_info["action"]
        if action not in ("migrate", "failover"):
            raise NotFound(f"unknown node action '{action}' (migrate, failover)")
        body = await self._body(request)
        params = {"ignore_consistency": bool(body.get("ignore_consistency"))} if action == "failover" else {}

        async def run(ops: Operations, nodes: NodeOperations) -> web.Response:
            if await ops._get(model.node_key(name)) is None:
                raise NotFound(f"no node named '{name}'")
            job_ids, skipped = [], []
            for inst in await ops._prefix(model.INSTANCES):
                if inst["primary_node"] != name:
                    continue
                if not inst.get("secondary_node"):
                    skipped.append(f"{inst['name']} ({inst['disk_template']}: not replicated)")
                    continue
                job_ids.append(await ops.submit_simple(f"instance.{action}", inst["name"], params))
            for job_id in job_ids:
                await self._wait_replica(model.job_key(job_id))
            return self._ok({"node": name, "job_ids": job_ids, "skipped": skipped})
        return await self._on_master(request, run)

    async def join_ca(self, request: web.Request) -> web.Response:
        with open(self.agent.pki.ca_cert) as fh:
            return web.Response(text=fh.read(), content_type="application/x-pem-file")

    async def join(self, request: web.Request) -> web.Response:
        body = await self._body(request)

        async def run(ops: Operations, nodes: NodeOperations) -> web.Response:
            return self._ok(await nodes.accept_join(body))
        return await self._on_master(request, run)

    # ---- instances -----------------------------------------------------------
    async def instance_list(self, request: web.Request) -> web.Response:
        reports, now = self._reports(), time.time()
        return self._ok([views.instance_row(i, reports, now) for i in self._instances()])

    async def instance_info(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        self._require_cluster()
        inst = next((i for i in self._instances() if i["name"] == name), None)
        if inst is None:
            raise NotFound(f"no instance named '{name}'")
        row = views.instance_row(inst, self._reports(), time.time())
        if inst["primary_node"] == self.agent.cfg.node_name and not row["console_tail"]:
            lines = self.agent.qemu.console_log_tail(name, 30)
            row["console_tail"] = [line for line in lines if line.strip()][-10:]
        row["auto_failover_default"] = bool((self.agent.replica.get_json(model.CLUSTER_KEY) or {})
                                            .get("auto_failover", False))
        return self._ok(row)

    async def instance_add(self, request: web.Request) -> web.Response:
        body = await self._body(request)

        async def run(ops: Operations, nodes: NodeOperations) -> web.Response:
            return await self._accepted(await ops.submit_add(body))
        return await self._on_master(request, run)

    async def instance_modify(self, request: web.Request) -> web.Response:
        name, body = request.match_info["name"], await self._body(request)

        async def run(ops: Operations, nodes: NodeOperations) -> web.Response:
            return await self._accepted(await ops.submit_modify(name, body))
        return await self._on_master(request, run)

    async def instance_action(self, request: web.Request) -> web.Response:
        name, action = request.match_info["name"], request.match_info["action"]
        body = await self._body(request)
        if action == "stop":
            params = {"force": bool(body.get("force", False)), "timeout_s": body.get("timeout_s")}
        elif action == "reboot":
            params = {"type": body.get("type", "soft")}
        elif action == "start":
            params = {}
        elif action == "migrate":
            params = {"node": body.get("node"), "max_bandwidth_mib_s": float(body.get("max_bandwidth_mib_s", 1024))}
        elif action == "failover":
            params = {"ignore_consistency": bool(body.get("ignore_consistency", False))}
        elif action in ("move", "replace-secondary"):
            params = {"node": body.get("node")}
        elif action == "grow-disk":
            params = {"disk": body.get("disk"), "size": body.get("size")}
        elif action == "activate-disks":
            params = {}
        else:
            raise NotFound(f"unknown instance action '{action}' (start, stop, reboot, migrate, failover, move, "
                           "replace-secondary, activate-disks, grow-disk)")

        async def run(ops: Operations, nodes: NodeOperations) -> web.Response:
            return await self._accepted(await ops.submit_simple(f"instance.{action}", name, params))
        return await self._on_master(request, run)

    async def instance_remove(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]

        async def run(ops: Operations, nodes: NodeOperations) -> web.Response:
            return await self._accepted(await ops.submit_simple("instance.remove", name, {}))
        return await self._on_master(request, run)

    async def instance_console(self, request: web.Request) -> web.StreamResponse:
        """Bridge a websocket to the instance's serial console socket (instance on this node)."""
        name = request.match_info["name"]
        self._require_cluster()
        inst = self.agent.replica.get_json(model.instance_key(name))
        if inst is None:
            raise NotFound(f"no instance named '{name}'")
        if inst["primary_node"] != self.agent.cfg.node_name:
            raise BadRequest(f"instance '{name}' runs on node '{inst['primary_node']}': run "
                             "`corral instance console` there")
        path = run_paths(self.agent.cfg.run_dir, name).console_socket
        if self.agent.qemu.find(name) is None or not os.path.exists(path):
            raise Conflict(f"instance '{name}' is not running, so it has no console")
        try:
            reader, writer = await asyncio.open_unix_connection(path)
        except OSError as exc:
            raise Conflict(f"the console of instance '{name}' does not answer ({exc.strerror or exc})") from None
        ws = web.WebSocketResponse()
        await ws.prepare(request)

        async def pump_out() -> None:
            while data := await reader.read(4096):
                await ws.send_bytes(data)
            await ws.close()

        task = asyncio.create_task(pump_out())
        try:
            async for msg in ws:
                if msg.type == WSMsgType.BINARY:
                    writer.write(msg.data)
                    await writer.drain()
                elif msg.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
                    break
        finally:
            task.cancel()
            writer.close()
        return ws

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
        keys = ("id", "op", "summary", "status", "created", "started", "ended", "error")
        return self._ok([{k: j[k] for k in keys} for j in self._all(model.JOBS)])

    async def job_info(self, request: web.Request) -> web.Response:
        job_id = _job_id(request.match_info["id"])
        self._require_cluster()
        job = self.agent.replica.get_json(model.job_key(job_id))
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
            script = isinstance(entry, OsDefinition)
            rows.append({"name": name, "kind": "script" if script else "image", "path": entry.path,
                         "variants": list(entry.variants) if script else [],
                         "api_versions": list(entry.api_versions) if script else []})
        return self._ok({"node": self.agent.cfg.node_name, "os": rows, "problems": list(catalog.problems)})

    async def user_list(self, request: web.Request) -> web.Response:
        return self._ok([users.public(u) for u in self._all(model.USERS)])

    async def user_add(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        record, token = users.new_user(str(body.get("name", "")), str(body.get("role", "")))

        async def run(ops: Operations, nodes: NodeOperations) -> web.Response:
            await ops.put_new(model.user_key(record["name"]), record, f"user '{record['name']}' already exists")
            await self._wait_replica(model.user_key(record["name"]))
            return self._ok({**users.public(record), "token": token})
        return await self._on_master(request, run)

    async def user_remove(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]

        async def run(ops: Operations, nodes: NodeOperations) -> web.Response:
            await ops.delete_existing(model.user_key(name), f"no user named '{name}'")
            return self._ok({"name": name})
        return await self._on_master(request, run)

    # ---- node-to-node --------------------------------------------------------
    async def node_order(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        try:
            token = FencingToken.from_str(str(body.get("token", "")))
        except ValueError:
            raise BadRequest(f"order token {body.get('token')!r} is not a fencing token") from None
        sender = pki.peer_node_name(request.transport.get_extra_info("peercert") if request.transport else None)
        if sender is None:
            raise BadRequest("orders need a node certificate")
        await self.agent.tokens.admit(token, sender, self.agent.verify_token)
        op, args = str(body.get("op", "")), body.get("args", {})
        if self.agent.isolated():
            raise OrderError(f"node '{self.agent.cfg.node_name}' is cut off from the cluster by a drill")
        if op.startswith("instance."):
            result = await self.agent.executor.handle(op, args)
            self.agent.schedule_report()
        else:
            result = await self.agent.node_order(op, args)
        return web.json_response(result)

    # ---- drills ------------------------------------------------------------------
    async def drill_crash_self(self, request: web.Request) -> web.Response:
        """Node-to-node: crash or freeze this agent (a drill run from another node asked for it)."""
        if not self.agent.cfg.drills:
            raise Conflict(f"node '{self.agent.cfg.node_name}' does not take part in drills "
                           "(set drills = true in [agent] of its agent.toml, on test and demo clusters)")
        body = await self._body(request)
        mode, freeze_s = str(body.get("mode", "")), body.get("freeze_s", 15)
        if mode not in drill.MODES:
            raise BadRequest(f"drill mode {mode!r} is not one of {', '.join(drill.MODES)}")
        if not isinstance(freeze_s, (int, float)) or not 1 <= freeze_s <= drill.MAX_FREEZE_S:
            raise BadRequest(f"freeze_s {freeze_s!r} must be 1 to {drill.MAX_FREEZE_S:.0f} seconds")
        log.warning("drill requested by %s: %s this agent", request.get("caller", "?"), mode)
        if mode == "isolate":
            if self.agent.role is not None and self.agent.role.is_master:
                raise Conflict(f"node '{self.agent.cfg.node_name}' is the master; hand the role over first "
                               "(`corral cluster master-failover`)")
            self.agent.isolate(float(freeze_s))
        elif mode == "power-off":
            drill.power_off(self.agent.cfg.run_dir)
        else:
            drill.crash(mode, freeze_s, self.agent.child_pids())
        return web.json_response({"node": self.agent.cfg.node_name, "mode": mode, "pid": os.getpid()})

    async def drill_crash(self, request: web.Request) -> web.Response:
        """Local: ask node NAME's agent to crash or freeze (never this node's: the CLI needs it)."""
        body = await self._body(request)
        name = str(body.get("node", ""))
        if name == self.agent.cfg.node_name:
            raise Conflict(f"node '{name}' is the node this command runs on; run the drill from another node")
        node = self._node_record(name)
        status, data = await self._nodes_client().forward(node["address"], node["api_port"], "POST",
                                                          "/v1/node/drill", json.dumps(body).encode())
        if status != 200:
            raise Conflict(f"node '{name}' refused the drill: {data.get('message', status)}")
        return self._ok(data)

    async def qemus_self(self, request: web.Request) -> web.Response:
        """Node-to-node: the QEMUs running on this node right now (not from a report: the drill's witness)."""
        return web.json_response({"node": self.agent.cfg.node_name, "qemus": self.agent.qemu.discover()})

    async def drill_qemus(self, request: web.Request) -> web.Response:
        """Local: the QEMUs running on node ?node=NAME right now, asked of its agent directly."""
        node = self._node_record(request.query.get("node", ""))
        status, data = await self._nodes_client().forward(node["address"], node["api_port"], "GET",
                                                          "/v1/node/qemus", b"")
        if status != 200:
            raise Conflict(f"node '{node['name']}' did not answer: {data.get('message', status)}")
        return self._ok(data)

    async def drill_stale_order(self, request: web.Request) -> web.Response:
        """Local: send a harmless order with an old token to every node; each should refuse it."""
        body = await self._body(request)
        try:
            token = FencingToken.from_str(str(body.get("token", "")))
        except ValueError:
            raise BadRequest(f"{body.get('token')!r} is not a fencing token") from None

        async def one(node: dict[str, Any]) -> dict[str, Any]:
            try:
                await self._nodes_client().order(node["name"], node["address"], node["api_port"],
                                                 "node.hello", {}, token, timeout_s=5)
                return {"node": node["name"], "refused": False, "message": "accepted"}
            except OrderFailed as exc:
                return {"node": node["name"], "refused": "newer token" in exc.message, "message": exc.message}

        return self._ok(await asyncio.gather(*(one(n) for n in self._all(model.NODES))))

    async def replicas(self, request: web.Request) -> web.Response:
        """Every node's replica revision and checksum, asked over mutual TLS."""
        async def one(node: dict[str, Any]) -> dict[str, Any]:
            try:
                status, data = await self._nodes_client().forward(node["address"], node["api_port"], "GET",
                                                                  "/v1/cluster/replica", None, timeout_s=5)
            except ConnectionError as exc:
                return {"node": node["name"], "error": str(exc)}
            return data.get("data") if status == 200 else {"node": node["name"], "error": data.get("message")}

        return self._ok(await asyncio.gather(*(one(n) for n in self._all(model.NODES))))

    async def rotate_secrets(self, request: web.Request) -> web.Response:
        async def run(ops: Operations, nodes: NodeOperations) -> web.Response:
            job_id = await ops.role.require().submit("cluster.rotate-secrets", {},
                                                     "rotate the gossip key and the node certificates")
            return await self._accepted(job_id)
        return await self._on_master(request, run)

    async def cluster_probe(self, request: web.Request) -> web.Response:
        async def run(ops: Operations, nodes: NodeOperations) -> web.Response:
            return await self._accepted(await ops.submit_probe())
        return await self._on_master(request, run)

    def _node_record(self, name: str) -> dict[str, Any]:
        node = self.agent.replica.get_json(model.node_key(name)) if name else None
        if node is None:
            raise NotFound(f"no node named '{name}'")
        return node

    def _nodes_client(self) -> NodeClient:
        self._require_cluster()
        if self.agent.nodes is None:
            raise NotInitialized("this agent's cluster side is not running yet")
        return self.agent.nodes

    async def openapi(self, request: web.Request) -> web.Response:
        return web.json_response(openapi_document())


def build_app(agent: Agent, *, node_site: bool) -> web.Application:
    """The local app (unix socket) and the TLS app; only the TLS app takes orders and joins."""
    api = Api(agent)
    middlewares = [_errors] + ([auth.middleware(agent.replica)] if node_site and agent is not None else [])
    app = web.Application(middlewares=middlewares)
    r = app.router
    r.add_get("/v1/openapi.json", api.openapi)
    r.add_get("/v1/cluster", api.cluster_info)
    r.add_post("/v1/cluster/init", api.cluster_init)
    r.add_get("/v1/cluster/verify", api.cluster_verify)
    r.add_post("/v1/cluster/repair", api.cluster_repair)
    r.add_post("/v1/cluster/fencing", api.cluster_fencing)
    r.add_post("/v1/cluster/alert/clear", api.cluster_alert_clear)
    r.add_post("/v1/cluster/modify", api.cluster_modify)
    r.add_get("/v1/cluster/simulate", api.cluster_simulate)
    r.add_post("/v1/cluster/master-failover", api.master_failover)
    r.add_get("/v1/cluster/replica", api.replica_checksum)
    r.add_get("/v1/nodes", api.node_list)
    r.add_post("/v1/nodes", api.node_add)
    r.add_get("/v1/nodes/{name}", api.node_info)
    r.add_delete("/v1/nodes/{name}", api.node_remove)
    r.add_post("/v1/nodes/{name}/modify", api.node_modify)
    r.add_post("/v1/nodes/{name}/drain", api.node_drain)
    r.add_post("/v1/nodes/{name}/undrain", api.node_undrain)
    r.add_post("/v1/nodes/{name}/evacuate", api.evacuate_node)
    r.add_post("/v1/nodes/{name}/{action}", api.node_evacuate)
    r.add_get("/v1/instances", api.instance_list)
    r.add_post("/v1/instances", api.instance_add)
    r.add_get("/v1/instances/{name}", api.instance_info)
    r.add_delete("/v1/instances/{name}", api.instance_remove)
    r.add_post("/v1/instances/{name}/modify", api.instance_modify)
    r.add_post("/v1/instances/{name}/{action}", api.instance_action)
    r.add_get("/v1/instances/{name}/console", api.instance_console)
    r.add_get("/v1/events", api.event_list)
    r.add_get("/v1/jobs", api.job_list)
    r.add_get("/v1/jobs/{id}", api.job_info)
    r.add_post("/v1/jobs/{id}/cancel", api.job_cancel)
    r.add_get("/v1/os", api.os_list)
    r.add_get("/v1/users", api.user_list)
    r.add_post("/v1/users", api.user_add)
    r.add_delete("/v1/users/{name}", api.user_remove)
    r.add_post("/v1/cluster/probe", api.cluster_probe)
    r.add_post("/v1/cluster/rotate-secrets", api.rotate_secrets)
    if node_site:
        r.add_get("/v1/join/ca", api.join_ca)
        r.add_post("/v1/join", api.join)
        r.add_post("/v1/node/orders", api.node_order)
        r.add_post("/v1/node/drill", api.drill_crash_self)
        r.add_get("/v1/node/qemus", api.qemus_self)
        r.add_get(clocks.CLOCK_PATH, api.node_clock)
    else:
        r.add_post("/v1/cluster/join", api.cluster_join)
        r.add_get("/v1/cluster/replicas", api.replicas)
        r.add_post("/v1/drill/crash", api.drill_crash)
        r.add_post("/v1/drill/stale-order", api.drill_stale_order)
        r.add_get("/v1/drill/qemus", api.drill_qemus)
    return app
