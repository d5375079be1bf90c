"""RAPI changes that Corral's own API makes without a job, and reads Ganeti answers with a job: instance modify
and details, node role, tags, cluster modify. Each answers a job id, as Ganeti's; the /v1 request it forwards
to a master elsewhere is the same change with `?job=1`.

Roles: Ganeti has read and write users; Corral's admin-only changes (a node's flags, the cluster's settings,
node and cluster tags) stay admin-only here, and reads that make a job (/info) need write, as in Ganeti.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, Protocol
from urllib.parse import quote

from aiohttp import web

from hostagent import model
from hostagent.api import auth, users
from hostagent.errors import BadRequest
from hostagent.master.node_ops import NodeOperations
from hostagent.master.operations import Operations
from hostagent.rapi.changes import cluster_changes, export_body, modify_body, query_tags, role_changes



class Rapi(Protocol):
    """What these routes use of hostagent.rapi.server.Rapi: its reads, and its submit on the master."""

    def _instance_shapes(self) -> list[dict[str, Any]]: ...

    def _record(self, name: str, prefix: str = ..., what: str = ...) -> dict[str, Any]: ...

    def _reports(self) -> dict[str, dict[str, Any]]: ...

    async def _info(self) -> dict[str, Any]: ...

    async def _ganeti_body(self, request: web.Request) -> dict[str, Any]: ...

    async def _change(self, request: web.Request, method: str, v1_path: str, v1_body: dict[str, Any],
                      run: Callable[[Operations, NodeOperations], Awaitable[int]]) -> web.Response: ...


def _refused(request: web.Request, role: str, what: str) -> web.Response | None:
    """Ganeti's 403 when the caller's role is below `role`, else None."""
    caller = request[auth.CALLER]
    if users.ROLES.index(caller.role) >= users.ROLES.index(role):
        return None
    return web.json_response({"code": 403, "message": "Forbidden", "explain": f"user '{caller.name}' has the "
                              f"{caller.role} role: {what} needs the {role} role"}, status=403)


def _no_dry_run(request: web.Request) -> None:
    if request.query.get("dry-run") not in (None, "0"):
        raise BadRequest("dry-run is not supported: Corral checks a request before any job exists, so a refused "
                         "one changes nothing")


def add_routes(app: web.Application, rapi: Rapi) -> None:
    """The routes, on `rapi`'s reads and its way of submitting on the master (Rapi._change)."""
    def shown(request: web.Request) -> tuple[str, dict[str, Any]]:
        """The instance the path names, as GET /2/instances/I shows it (NotFound naming it)."""
        _no_dry_run(request)
        name = request.match_info["name"]
        found = next((i for i in rapi._instance_shapes() if i["name"] == name), None)
        return name, found if found is not None else rapi._record(name)

    async def instance_modify(request: web.Request) -> web.Response:
        name, instance = shown(request)
        v1 = modify_body(await rapi._ganeti_body(request), instance)

        async def run(ops: Operations, nodes: NodeOperations) -> int:
            return await ops.modify.submit(name, v1)
        return await rapi._change(request, "POST", f"/v1/instances/{quote(name, safe='')}/modify", v1, run)

    async def instance_info(request: web.Request) -> web.Response:
        if (refused := _refused(request, "write", "an instance's details (a job)")) is not None:
            return refused
        name = rapi._record(request.match_info["name"])["name"]

        async def run(ops: Operations, nodes: NodeOperations) -> int:
            return await nodes.config.submit_query_data(name)
        return await rapi._change(request, "POST", f"/v1/instances/{quote(name, safe='')}/query-data", {}, run)

    async def node_role(request: web.Request) -> web.Response:
        if (refused := _refused(request, "admin", "changing a node's role")) is not None:
            return refused
        name = rapi._record(request.match_info["name"], model.NODES, "node")["name"]
        raw = await request.read()
        try:
            role = json.loads(raw) if raw.strip() else None
        except ValueError:
            raise BadRequest("the body is the role as a JSON string, e.g. \"drained\"") from None
        changes = role_changes(role)

        async def run(ops: Operations, nodes: NodeOperations) -> int:
            return await nodes.config.submit_node_modify(name, changes)
        return await rapi._change(request, "POST", f"/v1/nodes/{quote(name, safe='')}/modify?job=1", changes, run)

    def retag(kind: str) -> Any:
        async def handler(request: web.Request) -> web.Response:
            if kind != "instance" and (refused := _refused(request, "admin", f"changing {kind} tags")) is not None:
                return refused
            _no_dry_run(request)
            name = request.match_info.get("name", "")
            if kind != "cluster":
                name = rapi._record(name, model.NODES if kind == "node" else model.INSTANCES, kind)["name"]
            listed = query_tags(request.query.getall("tag", []))
            add, remove = (listed, []) if request.method == "PUT" else ([], listed)
            path = {"cluster": "/v1/cluster/tags", "node": f"/v1/nodes/{quote(name, safe='')}/tags",
                    "instance": f"/v1/instances/{quote(name, safe='')}/tags"}[kind]

            async def run(ops: Operations, nodes: NodeOperations) -> int:
                return await nodes.config.submit_tags(kind, name, add, remove)
            return await rapi._change(request, "POST", f"{path}?job=1", {"add": add, "remove": remove}, run)
        return handler

    async def node_migrate(request: web.Request) -> web.Response:
        """Ganeti's node migrate (body of node-migrate-reqv1, or the older query): one job that submits a live
        migration of each replicated primary instance (a failover with mode non-live)."""
        _no_dry_run(request)
        name = rapi._record(request.match_info["name"], model.NODES, "node")["name"]
        body = await rapi._ganeti_body(request)
        mode = body.get("mode") or request.query.get("mode")
        if mode not in (None, "live", "non-live"):
            raise BadRequest(f"mode {mode!r} is not one of live, non-live")
        failover = mode == "non-live" or body.get("live") is False or request.query.get("live") == "0"
        target = body.get("target_node") or None
        if target is not None:
            rapi._record(target, model.NODES, "node")
        v1 = {"node": target} if target else {}

        async def run(ops: Operations, nodes: NodeOperations) -> int:
            return await nodes.config.submit_node_migrate(name, failover, target)
        action = "failover" if failover else "migrate"
        return await rapi._change(request, "POST", f"/v1/nodes/{quote(name, safe='')}/{action}?job=1", v1, run)

    async def node_storage(request: web.Request) -> web.Response:
        if (refused := _refused(request, "write", "a node's storage (a job)")) is not None:
            return refused
        node = rapi._record(request.match_info["name"], model.NODES, "node")["name"]
        fields = request.query.get("output_fields")
        if not fields:
            raise BadRequest("Missing the required 'output_fields' parameter")
        report = rapi._reports().get(node) or {}
        kind = request.query.get("storage_type") or ("lvm-vg" if (report.get("lvm") or {}).get("size_mib")
                                                     is not None else "file")
        v1 = {"storage_type": kind, "fields": fields.split(",")}

        async def run(ops: Operations, nodes: NodeOperations) -> int:
            return await nodes.config.submit_query_storage(node, kind, v1["fields"])
        return await rapi._change(request, "POST", f"/v1/nodes/{quote(node, safe='')}/query-storage", v1, run)

    async def instance_export(request: web.Request) -> web.Response:
        name, instance = shown(request)
        v1 = export_body(name, await rapi._ganeti_body(request), bool(instance["oper_state"]))

        async def run(ops: Operations, nodes: NodeOperations) -> int:
            return await ops.backups.submit_export(ops.role.require().submit, v1)
        return await rapi._change(request, "POST", "/v1/backups", v1, run)

    async def cluster_modify(request: web.Request) -> web.Response:
        if (refused := _refused(request, "admin", "changing the cluster's settings")) is not None:
            return refused
        _no_dry_run(request)
        changes = cluster_changes(await rapi._ganeti_body(request), await rapi._info())

        async def run(ops: Operations, nodes: NodeOperations) -> int:
            return await nodes.config.submit_cluster_modify(changes)
        return await rapi._change(request, "POST", "/v1/cluster/modify?job=1", changes, run)

    app.router.add_put("/2/instances/{name}/modify", instance_modify)
    app.router.add_get("/2/instances/{name}/info", instance_info)
    app.router.add_put("/2/nodes/{name}/role", node_role)
    app.router.add_put("/2/modify", cluster_modify)
    app.router.add_post("/2/nodes/{name}/migrate", node_migrate)
    app.router.add_get("/2/nodes/{name}/storage", node_storage)
    app.router.add_put("/2/instances/{name}/export", instance_export)
    for method in ("PUT", "DELETE"):
        app.router.add_route(method, "/2/tags", retag("cluster"))
        app.router.add_route(method, "/2/nodes/{name}/tags", retag("node"))
        app.router.add_route(method, "/2/instances/{name}/tags", retag("instance"))
