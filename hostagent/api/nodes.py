"""Node routes of the API: list and inspect nodes, add, remove, modify, drain and empty them, and joining.

These are what `corral node ...` calls, plus the two endpoints a joining node
uses on the TLS site (the CA certificate, then the join itself).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from hostagent import model, views
from hostagent.node import joining
from hostagent.api.base import ApiBase
from hostagent.errors import BadRequest, NotFound
from hostagent.master.node_ops import NodeOperations
from hostagent.master.operations import Operations


class NodeRoutes(ApiBase):
    """Handlers for /v1/nodes/... and /v1/join...: the nodes of the cluster."""

    async def _node_rows(self) -> list[dict[str, Any]]:
        gossip = await self.agent.gossip.view()
        reports, instances, master = self._reports(), self._all(model.INSTANCES), self._master()
        leases = {lease["node"] for lease in self._all(model.LEASES)}
        now = self.agent.clock.time()
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
            return self._ok(await nodes.tokens.issue_token(str(body.get("name", "")), str(body.get("address", "")),
                                                           float(ttl)))
        return await self._on_master(request, run)

    async def join_token_list(self, request: web.Request) -> web.Response:
        """`node tokens`: the join tokens that can still be used (the secrets are never stored)."""
        records = self._all(model.JOIN_TOKENS)
        return self._ok(joining.token_rows([r for r in records if isinstance(r, dict)], self.agent.clock.time()))

    async def join_token_revoke(self, request: web.Request) -> web.Response:
        node = request.match_info["node"]

        async def run(ops: Operations, nodes: NodeOperations) -> web.Response:
            result = await nodes.tokens.revoke_tokens(node)
            if self.agent.etcd is not None and self.agent.mirror is not None:  # read-your-writes: gone here too
                revision = (await self.agent.etcd.status())["revision"]
                await self.agent.mirror.wait_for_revision(revision, timeout_s=5)
            return self._ok(result)
        return await self._on_master(request, run)

    async def node_remove(self, request: web.Request) -> web.Response:
        name, force = request.match_info["name"], request.query.get("force") == "1"

        async def run(ops: Operations, nodes: NodeOperations) -> web.Response:
            return self._ok(await nodes.remove(name, force))
        return await self._on_master(request, run)

    async def node_modify(self, request: web.Request) -> web.Response:
        name, body = request.match_info["name"], await self._body(request)
        if request.query.get("job") == "1":  # the same change as a job (Ganeti's RAPI answers a job id)
            async def as_job(ops: Operations, nodes: NodeOperations) -> web.Response:
                return await self._accepted(await nodes.config.submit_node_modify(name, body))
            return await self._on_master(request, as_job)

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

    async def node_query_storage(self, request: web.Request) -> web.Response:
        """A job whose result is the node's storage, row by row (Ganeti's RAPI asks for it so)."""
        name, body = request.match_info["name"], await self._body(request)

        async def run(ops: Operations, nodes: NodeOperations) -> web.Response:
            return await self._accepted(await nodes.config.submit_query_storage(name, body.get("storage_type"),
                                                                                body.get("fields")))
        return await self._on_master(request, run)

    async def node_evacuate(self, request: web.Request) -> web.Response:
        """`node migrate|failover N`: one job per replicated primary instance of N."""
        name, action = request.match_info["name"], request.match_info["action"]
        if action not in ("migrate", "failover"):
            raise NotFound(f"unknown node action '{action}' (migrate, failover)")
        body = await self._body(request)
        params = {"ignore_consistency": bool(body.get("ignore_consistency"))} if action == "failover" else {}
        if request.query.get("job") == "1":  # one job that submits them (Ganeti's RAPI answers one job id)
            target = body.get("node")
            if target is not None and (not isinstance(target, str) or not target):
                raise BadRequest(f"node must be a node name, not {target!r}")

            async def as_job(ops: Operations, nodes: NodeOperations) -> web.Response:
                return await self._accepted(await nodes.config.submit_node_migrate(name, action == "failover",
                                                                                  target))
            return await self._on_master(request, as_job)

        async def run(ops: Operations, nodes: NodeOperations) -> web.Response:
            if await ops.store.get(model.node_key(name)) is None:
                raise NotFound(f"no node named '{name}'")
            job_ids, skipped = [], []
            for inst in await ops.store.prefix(model.INSTANCES):
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
            return self._ok(await nodes.tokens.accept_join(body))
        return await self._on_master(request, run)
