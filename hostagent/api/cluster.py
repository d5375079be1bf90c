"""Cluster-wide routes of the API: init and join, info, verify and repair, settings, master failover, probes.

These are what `corral cluster ...` calls; changes go through ApiBase._on_master.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from typing import Any, TypeVar

from aiohttp import web

from kvm.hvparams import kernel_path_problems, parse_hvparams

from hostagent import model, views
from hostagent.api import auth
from hostagent.master import cluster_settings
from hostagent.master.decide import backup_schedule, balance, capacity
from hostagent.node import clocks, joining
from hostagent.api.base import ApiBase
from hostagent.errors import BadRequest, Conflict
from hostagent.master.node_ops import NodeOperations
from hostagent.master.operations import Operations
from hostagent.master.repair import Repair
from hostagent.status import report_fresh

# Cluster-wide numbers `cluster init` takes, and what each must be.
CLUSTER_SETTINGS = {
    "sync_rate_mib_s": "a number of MiB/s for background disk copies and each DRBD resync (0: no cap; DRBD at 60)",
    "restart_backoff_s": "a number of seconds before the second restart attempt (it doubles after)",
}
T = TypeVar("T")
DEFAULT_MAX_MOVES = 1000  # hbal's --max-length default is unbounded; this ends any plan
MAX_SPEC = {"memory": 1 << 24, "disk": 1 << 30, "vcpus": 4096}
MAX_NEW_INSTANCES = 10000  # a count past any cluster Corral is for; it bounds the planning time
CAPACITY_TEMPLATES = {"drbd": "drbd", "mirror": "drbd", "plain": "plain", "file": "file"}


class ClusterRoutes(ApiBase):
    """Handlers for /v1/cluster/...: the cluster as a whole."""

    _planning: asyncio.Lock | None = None

    async def _plan(self, planner: Callable[..., T], *args: Any) -> T:
        """Run a CPU-bound planner (balance, capacity) in a thread, so this agent keeps answering, and one at a
        time: a second is refused rather than queued, so such requests cannot pile up on an agent."""
        if self._planning is None:
            self._planning = asyncio.Lock()
        if self._planning.locked():
            raise Conflict("a balance or capacity plan is already being computed on this node; ask again once it "
                           "has answered")
        async with self._planning:
            return await asyncio.to_thread(planner, *args)

    async def cluster_info(self, request: web.Request) -> web.Response:
        local = self.agent.cluster_file.read()
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
            "tags": cluster.get("tags") or [], "require_owner": bool(cluster.get("require_owner")),
            "policy": cluster.get("policy") or {}, "enabled_disk_templates": cluster.get("enabled_disk_templates"),
            "sync_rate_mib_s": cluster.get("sync_rate_mib_s", 0.0), "restart_backoff_s": cluster.get("restart_backoff_s"),
            "candidate_pool_size": cluster.get("candidate_pool_size", 3),
            "default_memory_mib": cluster.get("default_memory_mib", 512), "default_vcpus": cluster.get("default_vcpus", 1),
            "backup_keep": cluster.get("backup_keep") or backup_schedule.DEFAULT_KEEP,
            "backup_to": cluster.get("backup_to") or "",
            "backup_max_per_node": cluster.get("backup_max_per_node") or backup_schedule.DEFAULT_MAX_PER_NODE,
            "redundancy": views.redundancy(self._instances(), self._reports(), self.agent.clock.time()),
        })

    async def cluster_fencing(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        if not isinstance(body.get("armed"), bool):
            raise BadRequest("say whether fencing is armed: {\"armed\": true} (arm) or {\"armed\": false} (disarm)")

        async def run(ops: Operations, _: NodeOperations) -> web.Response:
            return self._ok(await cluster_settings.set_fencing(ops.store, body["armed"]))
        return await self._on_master(request, run)

    async def cluster_alert_clear(self, request: web.Request) -> web.Response:
        async def run(ops: Operations, _: NodeOperations) -> web.Response:
            return self._ok(await cluster_settings.clear_alert(ops.store))
        return await self._on_master(request, run)

    async def cluster_modify(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        if request.query.get("job") == "1":  # the same change as a job (Ganeti's RAPI answers a job id)
            async def as_job(ops: Operations, nodes: NodeOperations) -> web.Response:
                return await self._accepted(await nodes.config.submit_cluster_modify(body))
            return await self._on_master(request, as_job)
        problems = cluster_settings.check_changes(body)
        if problems:
            raise BadRequest("; ".join(problems))

        async def run(ops: Operations, _: NodeOperations) -> web.Response:
            return self._ok(await cluster_settings.modify(ops.store, body))
        return await self._on_master(request, run)

    async def cluster_htools(self, request: web.Request) -> web.Response:
        """`corral cluster export-htools`: the cluster in htools' text format, as hbal -m reads it live."""
        from hostagent.rapi.server import Rapi  # the RAPI's shapes: a file that hbal -t reads as hbal -m does
        self._require_cluster()
        return self._ok({"text": await Rapi(self.agent).htools_text()})

    async def cluster_balance(self, request: web.Request) -> web.Response:
        """`corral cluster balance`: hbal's moves planned on the live cluster, carried out as one job, or with
        {"dry_run": true} only the plan (with its scores, before and after)."""
        body = await self._body(request)
        max_moves, dry_run = int(body.get("max_moves", DEFAULT_MAX_MOVES)), bool(body.get("dry_run"))
        ignore_soft_errors = bool(body.get("ignore_soft_errors"))  # hbal's --ignore-soft-errors

        async def run(_: Operations, nodes: NodeOperations) -> web.Response:
            from hostagent.rapi.server import Rapi  # htools' view of the cluster, as hbal -m reads it
            cluster = await Rapi(self.agent).htools_cluster()
            made = await self._plan(balance.plan, cluster, None, max_moves, ignore_soft_errors)
            running = frozenset(i.name for i in cluster.instances if i.status == "running")
            steps = balance.steps_of(made.moves, running)
            answer = {**balance.summary(made), "steps": [{**s.to_dict(), "description": s.describe()} for s in steps]}
            if dry_run or not steps:
                return self._ok(answer)
            job_id = await nodes.balancing.submit(steps, answer)
            await self._wait_replica(model.job_key(job_id))
            return self._ok({"job_id": job_id, **answer}, status=202)
        return await self._on_master(request, run)

    async def cluster_capacity(self, request: web.Request) -> web.Response:
        """`corral cluster capacity`: how many more instances of one size fit (hspace's standard allocation) on
        the cluster as hbal and hspace read it live."""
        from hostagent.rapi.server import Rapi  # htools' view of the cluster, as hspace -m reads it
        self._require_cluster()
        wanted: dict[str, int] = {}
        for key in ("memory", "disk", "vcpus"):
            raw = request.query.get(key)
            if raw is None:
                continue
            if not raw.isdigit() or not 0 < int(raw) <= MAX_SPEC[key]:
                raise BadRequest(f"{key} must be a whole number from 1 to {MAX_SPEC[key]} ({'MiB' if key != 'vcpus' else 'vCPUs'}), "
                                 f"not {raw!r}")
            wanted[key] = int(raw)
        template = CAPACITY_TEMPLATES.get(request.query.get("disk_template", "drbd"))
        if template is None:
            raise BadRequest(f"disk_template {request.query.get('disk_template')!r}: one of "
                             f"{', '.join(CAPACITY_TEMPLATES)}")
        cluster = await Rapi(self.agent).htools_cluster()
        # Corral can make an instance of any of its templates: the RAPI's policy lists those in use.
        cluster = replace(cluster, ipolicies=tuple(replace(p, disk_templates=(*p.disk_templates, template))
                                                   if template not in p.disk_templates else p
                                                   for p in cluster.ipolicies))
        std = capacity.standard_spec(cluster)
        spec = replace(std, memory_mib=wanted.get("memory", std.memory_mib), disk_mib=wanted.get("disk", std.disk_mib),
                       cpus=wanted.get("vcpus", std.cpus))
        found = await self._plan(capacity.capacity, cluster, spec, template, MAX_NEW_INSTANCES)
        return self._ok(capacity.summary(found, spec))

    async def cluster_simulate(self, request: web.Request) -> web.Response:
        fail = [n for n in request.query.get("fail", "").split(",") if n]
        if not fail:
            raise BadRequest("name the node(s) to take away: ?fail=NODE[,NODE...] (`corral cluster simulate "
                             "--fail NODE`)")

        async def run(_: Operations, __: NodeOperations) -> web.Response:
            assert self.agent.autofailover is not None
            return self._ok(await self.agent.autofailover.simulate(fail))
        return await self._on_master(request, run)

    async def cluster_init(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        name = str(body.get("name", ""))
        if not name or not name.replace("-", "").replace(".", "").isalnum() or len(name) > 63:
            raise BadRequest(f"cluster name {name!r} is not valid: use letters, digits, '-' and '.' (at most 63)")
        hv = body.get("hvparams", {})
        if not isinstance(hv, dict):
            raise BadRequest("hvparams must be an object of name: value")
        # refuse bad defaults before anything is created; this node is the first master and primary
        problems = kernel_path_problems(parse_hvparams(hv), self.agent.cfg.kernel_dirs, " of this node")
        if problems:
            raise BadRequest("; ".join(problems))
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
        job_id = await self.agent.init_cluster(name, hv, pool, settings, caller=request.get(auth.CALLER))
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
        nodes, reports, now = self._all(model.NODES), self._reports(), self.agent.clock.time()
        findings = views.verify(nodes, self._instances(), reports, self._all(model.JOBS), self._master(), now,
                                cluster=self.agent.replica.get_json(model.CLUSTER_KEY) or {},
                                leases={lease["node"]: lease for lease in self._all(model.LEASES)},
                                tracks=self._all(model.RESTARTS), clocks=await self._clocks(nodes, reports, now),
                                addresses=([n["name"] for n in self._all(model.NETWORKS)], {
                                    key[len(model.ADDRESSES):]: str(value.get("instance"))
                                    for key, value in self.agent.replica.prefix_json(model.ADDRESSES)}))
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
              and report_fresh(reports.get(n["name"]), now)]
        return await clocks.measure(self.agent.nodes, me, up, self.agent.clock)

    async def cluster_repair(self, request: web.Request) -> web.Response:
        """`cluster verify --repair`: the master fixes what is safe (hostagent.master.repair) and says what it did."""
        async def run(ops: Operations, _: NodeOperations) -> web.Response:
            steps = await Repair(ops.store, ops.restarter.starting).run()
            if self.agent.etcd is not None and self.agent.mirror is not None:  # read-your-writes here too
                revision = (await self.agent.etcd.status())["revision"]
                await self.agent.mirror.wait_for_revision(revision, timeout_s=5)
            return self._ok(steps)
        return await self._on_master(request, run)

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

    async def rotate_secrets(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        new_ca = body.get("new_ca", False)
        if not isinstance(new_ca, bool):
            raise BadRequest(f"new_ca must be true or false, got {new_ca!r}")

        async def run(ops: Operations, nodes: NodeOperations) -> web.Response:
            what = "the cluster CA, " if new_ca else ""
            job_id = await ops.role.require().submit("cluster.rotate-secrets", {"new_ca": new_ca},
                                                     f"rotate {what}the gossip key and the node certificates")
            return await self._accepted(job_id)
        return await self._on_master(request, run)

    async def cluster_probe(self, request: web.Request) -> web.Response:
        async def run(ops: Operations, nodes: NodeOperations) -> web.Response:
            return await self._accepted(await ops.submit_probe())
        return await self._on_master(request, run)
