"""Ganeti's Remote API v2 on every agent (its own port, Ganeti's 5080 by default), for the tools operators bring
from Ganeti: provisioning scripts on `python3-ganeti-rapi`, monitoring checks, htools.

- HTTPS with the node's certificate (the cluster CA's), as the node API.
- HTTP Basic authentication with Corral's API users, as Ganeti's users file: the user's name and the secret of
  its token (`NAME.SECRET`; the whole token is accepted as the password too). Role read may read, write and
  admin may also change, as Ganeti's `write` option. No credentials: 401 with Ganeti's challenge; a read user
  changing something: 403. Every resource needs a user: Corral does not serve its state anonymously.
- Changes are Corral jobs, answered with the bare job id (those Corral's own API makes at once:
  hostagent.rapi.edits).
- Answers in Ganeti's shapes (hostagent.rapi.shapes), read from this node's replica of the config; errors as
  Ganeti's JSON {code, message, explain}; a resource Ganeti has and Corral does not serve answers 501 (Ganeti's
  answer for what it does not implement), anything else 404.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any
from urllib.parse import quote

from aiohttp import web

from hostagent import model, views
from hostagent.api import auth, users
from hostagent.api.base import error_middleware, parse_body
from hostagent.api.instances import action_params
from hostagent.api.nodes import NodeRoutes
from hostagent.callers import Caller
from hostagent.errors import BadRequest, NotFound
from hostagent.master.node_ops import NodeOperations
from hostagent.master.operations import Operations
from hostagent.rapi import edits, shapes
from hostagent.rapi.actions import ACTIONS, v1_body
from hostagent.rapi.changes import instance_info
from hostagent.rapi.create import create_request
from hostagent.rapi.htoolsview import to_htools
from hostagent.master.decide.htools import HtoolsCluster, write_text
from hostagent.status import REPORT_STALE_AFTER_S, report_age_s

log = logging.getLogger(__name__)

REALM = 'Basic realm="Ganeti Remote API"'
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
WAIT_S = 10.0  # a job wait answers at the latest after this (Ganeti's client then asks again)
WAIT_POLL_S = 0.2


def ganeti_error(code: int, message: str, explain: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"code": code, "message": message, "explain": explain}, status=code, headers=headers)


def caller(replica: Any, header: str) -> dict[str, Any] | None:
    """The Corral user a Basic header names, or None."""
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        name, _, password = base64.b64decode(encoded.strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    secret = password.removeprefix(f"{name}.")
    record = users.authenticate(replica, f"Bearer {name}.{secret}")
    return record if record is not None and hmac.compare_digest(record["name"], name) else None


class Rapi(NodeRoutes):
    """The RAPI v2 resources, over the same replica reads as /v1 (hostagent.api)."""

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=1 << 20)
        get = [("/version", self.version), ("/2", self.root), ("/2/info", self.info), ("/2/features", self.features),
               ("/2/os", self.os_list), ("/2/tags", self.tags), ("/2/nodes", self.nodes),
               ("/2/nodes/{name}", self.node), ("/2/groups", self.groups), ("/2/groups/{name}", self.group),
               ("/2/instances", self.instances), ("/2/instances/{name}", self.instance),
               ("/2/jobs", self.jobs), ("/2/jobs/{id}", self.job)]
        for path, handler in get:
            app.router.add_get(path, handler)
        app.router.add_get("/2/jobs/{id}/wait", self.job_wait)
        for (method, ganeti), corral in ACTIONS.items():
            app.router.add_route(method, f"/2/instances/{{name}}/{ganeti}", self._action(corral))
        app.router.add_get("/2/instances/{name}/console", self.console)
        app.router.add_get("/2/instances/{name}/tags", self.instance_tags)
        app.router.add_get("/2/nodes/{name}/tags", self.node_tags)
        app.router.add_get("/2/nodes/{name}/role", self.node_role)
        app.router.add_post("/2/nodes/{name}/evacuate", self.node_evacuate)
        app.router.add_delete("/2/jobs/{id}", self.job_cancel)
        app.router.add_delete("/2/instances/{name}", self.instance_remove)
        app.router.add_post("/2/instances", self.instance_create)
        edits.add_routes(app, self)
        app.router.add_route("*", "/{tail:.*}", self.unknown)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        user = caller(self.agent.replica, request.headers.get("Authorization", ""))
        if user is None:
            return ganeti_error(401, "Unauthorized", "Basic authentication with a Corral API user (its name, and "
                                "its token's secret as the password) is required", {"WWW-Authenticate": REALM})
        if request.method not in ("GET", "HEAD") and users.ROLES.index(user["role"]) < users.ROLES.index("write"):
            return ganeti_error(403, "Forbidden", f"user '{user['name']}' has the {user['role']} role: only write "
                                "and admin users change the cluster")
        request[auth.CALLER] = Caller.user(user["name"], user["role"], self.agent.cfg.node_name)  # jobs name them
        answer = await error_middleware(request, handler)  # /v1's translation of every refusal, then Ganeti's shape
        return answer if answer.status < 400 or not isinstance(answer, web.Response) else _ganeti_shaped(answer)

    # ---- helpers ---------------------------------------------------------------------------------------------
    @staticmethod
    def _json(data: Any) -> web.Response:
        return web.Response(text=json.dumps(data), content_type="application/json")

    def _cluster(self) -> dict[str, Any]:
        self._require_cluster()
        return self.agent.replica.get_json(model.CLUSTER_KEY) or {}

    def _up(self, node: str, reports: dict[str, dict[str, Any]]) -> bool:
        age = report_age_s(reports.get(node), self.agent.clock.time())
        return age is not None and age <= REPORT_STALE_AFTER_S

    def _instance_shapes(self) -> list[dict[str, Any]]:
        reports, now, cluster = self._reports(), self.agent.clock.time(), self._cluster()
        defaults = cluster.get("hvparams") or {}
        return [shapes.instance(views.instance_row(i, reports, now), {**defaults, **(i.get("hvparams") or {})},
                                self._up(i["primary_node"], reports))
                for i in sorted(self._instances(), key=lambda i: i["name"])]

    async def _node_shapes(self) -> list[dict[str, Any]]:
        records = {n["name"]: n for n in self._all(model.NODES)}
        instances, cluster_uuid = self._all(model.INSTANCES), str(self._cluster().get("uuid", ""))
        return [shapes.node(row, records.get(row["name"], {}), instances, cluster_uuid)
                for row in sorted(await self._node_rows(), key=lambda r: r["name"])]

    @staticmethod
    def _listing(request: web.Request, rows: list[dict[str, Any]], kind: str, key: str = "id") -> web.Response:
        """Ganeti's two answers for a collection: [{id, uri}] or, with ?bulk=1, the objects."""
        if request.query.get("bulk") in ("1", "true"):
            return Rapi._json(rows)
        name = "name" if kind == "groups" else "id"
        return Rapi._json([{name: r[key], "uri": f"/2/{kind}/{r[key]}"} for r in rows])

    def _templates(self) -> list[str]:
        return sorted({str(i["disk_template"]) for i in self._all(model.INSTANCES)} | {"file"})

    # ---- resources -------------------------------------------------------------------------------------------
    async def version(self, request: web.Request) -> web.Response:
        return self._json(2)

    async def root(self, request: web.Request) -> web.Response:
        return self._json(None)

    async def _info(self) -> dict[str, Any]:
        cluster = self._cluster()
        return shapes.info(cluster, self._master(), cluster.get("hvparams") or {}, self._templates(),
                           self._largest(await self._node_shapes()))

    async def info(self, request: web.Request) -> web.Response:
        return self._json(await self._info())

    async def features(self, request: web.Request) -> web.Response:
        return self._json(shapes.FEATURES)

    async def os_list(self, request: web.Request) -> web.Response:
        names = {name for report in self._reports().values() for name in report.get("os") or {}}
        return self._json(sorted(names))

    async def tags(self, request: web.Request) -> web.Response:
        return self._json(list(self._cluster().get("tags") or []))

    async def nodes(self, request: web.Request) -> web.Response:
        return self._listing(request, await self._node_shapes(), "nodes", "name")

    async def node(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        found = next((n for n in await self._node_shapes() if n["name"] == name), None)
        if found is None:
            raise NotFound(f"node '{name}' is unknown")
        return self._json(found)

    @staticmethod
    def _largest(nodes: list[dict[str, Any]]) -> tuple[int, int, int] | None:
        """The largest node's memory, disk (MiB) and cores, as reported; None before any report."""
        sizes = [(int(n["mtotal"]), int(n["dtotal"] or 0), int(n["ctotal"])) for n in nodes if n["mtotal"] and n["ctotal"]]
        return (max(s[0] for s in sizes), max(s[1] for s in sizes), max(s[2] for s in sizes)) if sizes else None

    def _group(self, nodes: list[dict[str, Any]]) -> dict[str, Any]:
        cluster = self._cluster()
        return shapes.group([n["name"] for n in self._all(model.NODES)], str(cluster.get("uuid", "")),
                            shapes.ipolicy(self._templates(), self._largest(nodes)))

    async def groups(self, request: web.Request) -> web.Response:
        return self._listing(request, [self._group(await self._node_shapes())], "groups", "name")

    async def group(self, request: web.Request) -> web.Response:
        found = self._group(await self._node_shapes())
        if request.match_info["name"] not in (shapes.GROUP, found["uuid"]):
            raise NotFound(f"node group '{request.match_info['name']}' is unknown (Corral has one: default)")
        return self._json(found)

    async def instances(self, request: web.Request) -> web.Response:
        return self._listing(request, self._instance_shapes(), "instances", "name")

    async def instance(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        found = next((i for i in self._instance_shapes() if i["name"] == name), None)
        if found is None:
            raise NotFound(f"instance '{name}' is unknown")
        return self._json(found)

    async def jobs(self, request: web.Request) -> web.Response:
        found = sorted(self._all(model.JOBS) + self._all(model.JOBS_ARCHIVE), key=lambda j: int(j["id"]))
        return self._listing(request, [_job(j) for j in found], "jobs")

    async def job(self, request: web.Request) -> web.Response:
        raw = request.match_info["id"]
        if not raw.isdigit():
            raise NotFound(f"job id {raw!r} is not a number")
        record = self.agent.replica.get_json(model.job_key(int(raw))) or \
            self.agent.replica.get_json(model.archived_job_key(int(raw)))
        if record is None:
            raise NotFound(f"job {raw} is unknown")
        return self._json(_job(record))

    # ---- changes: Corral jobs, answered with the bare job id as Ganeti does ----------------------------------------
    async def _change(self, request: web.Request, method: str, v1_path: str, v1_body: dict[str, Any],
                      run: Callable[[Operations, NodeOperations], Awaitable[int]]) -> web.Response:
        """Submit on the master (here, or forwarded as the /v1 request it amounts to); the bare job id."""
        async def local(ops: Operations, nodes: NodeOperations) -> web.Response:
            return await self._accepted(await run(ops, nodes))
        answer = await self._on_master(request, local, (method, v1_path, json.dumps(v1_body).encode()))
        data = json.loads(answer.body) if isinstance(answer.body, bytes) else {}
        if answer.status >= 400:
            return web.json_response(data, status=answer.status)  # shaped as Ganeti's by the middleware
        return self._json(int(data["data"]["job_id"]))

    def _action(self, corral: str) -> Handler:
        """An instance action in Ganeti's terms (hostagent.rapi.actions), as the /v1 action of the same meaning,
        checked as /v1 checks it before any job exists."""
        async def handler(request: web.Request) -> web.Response:
            name = request.match_info["name"]
            v1 = v1_body(corral, request.query, await self._ganeti_body(request), self._record(name),
                         request.match_info.get("disk", ""))
            params = action_params(corral, v1)

            async def run(ops: Operations, nodes: NodeOperations) -> int:
                if corral == "rename":
                    return await ops.submit_rename(name, params["new_name"])
                return await ops.submit_simple(f"instance.{corral}", name, params)
            return await self._change(request, "POST", f"/v1/instances/{quote(name, safe='')}/{corral}", v1, run)
        return handler

    def _record(self, name: str, prefix: str = model.INSTANCES, what: str = "instance") -> dict[str, Any]:
        found = next((r for r in self._all(prefix) if r["name"] == name), None)
        if found is None:
            raise NotFound(f"{what} '{name}' is unknown")
        return dict(found)

    async def console(self, request: web.Request) -> web.Response:
        """Ganeti's console answer of kind `message`: Corral's console goes through its own CLI (over TLS)."""
        name = self._record(request.match_info["name"])["name"]
        return self._json({"instance": name, "kind": "message",
                           "message": f"connect with `corral instance console {name}` (serial) or "
                                      f"`corral instance console {name} --vnc`, from any machine with the CLI"})

    async def instance_tags(self, request: web.Request) -> web.Response:
        return self._json(list(self._record(request.match_info["name"]).get("tags") or []))

    async def node_tags(self, request: web.Request) -> web.Response:
        return self._json(list(self._record(request.match_info["name"], model.NODES, "node").get("tags") or []))

    async def node_role(self, request: web.Request) -> web.Response:
        """Ganeti's node role word: master, master-candidate, regular, drained or offline."""
        node = self._record(request.match_info["name"], model.NODES, "node")
        role = ("master" if node["name"] == self._master() else "offline" if node.get("offline") else
                "drained" if node.get("drained") else "master-candidate" if node.get("candidate") else "regular")
        return self._json(role)

    async def node_evacuate(self, request: web.Request) -> web.Response:
        """Ganeti's node evacuation, mode all: Corral's `node evacuate` (one job that empties the node)."""
        name, body = request.match_info["name"], await self._ganeti_body(request)
        self._record(name, model.NODES, "node")
        if body.get("mode", "all") != "all" or body.get("remote_node"):
            raise BadRequest(f"evacuation mode {body.get('mode')!r}" + (" to a chosen node" if body.get("remote_node")
                                                                          else "") + ": Corral empties a node as a "
                             "whole, choosing where each instance goes (mode all, no remote_node)")

        async def run(ops: Operations, nodes: NodeOperations) -> int:
            return await nodes.submit_evacuation(name)
        return await self._change(request, "POST", f"/v1/nodes/{quote(name, safe='')}/evacuate", {}, run)

    async def job_cancel(self, request: web.Request) -> web.Response:
        """Ganeti's job cancel: [true, message] once asked (a job already ended stays as it ended)."""
        raw = request.match_info["id"]
        if not raw.isdigit():
            raise NotFound(f"job id {raw!r} is not a number")

        async def run(ops: Operations, nodes: NodeOperations) -> web.Response:
            await ops.role.require().cancel(int(raw))
            return self._ok({"job_id": int(raw), "status": "canceled"})
        answer = await self._on_master(request, run, ("POST", f"/v1/jobs/{raw}/cancel", b"{}"))
        if answer.status >= 400:
            return answer
        return self._json([True, f"job {raw} canceled"])

    async def instance_remove(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]

        async def run(ops: Operations, nodes: NodeOperations) -> int:
            return await ops.submit_simple("instance.remove", name, {})
        return await self._change(request, "DELETE", f"/v1/instances/{quote(name, safe='')}", {}, run)

    async def instance_create(self, request: web.Request) -> web.Response:
        """Ganeti's create request (hostagent.rapi.create), as `corral instance add`."""
        if request.query.get("dry-run") not in (None, "0"):
            raise BadRequest("dry-run is not supported: Corral checks a create request before any job exists, so "
                             "a refused one changes nothing")
        add = create_request(await self._ganeti_body(request))

        async def run(ops: Operations, nodes: NodeOperations) -> int:
            return await ops.submit_add(dict(add))
        return await self._change(request, "POST", "/v1/instances", add, run)

    async def _ganeti_body(self, request: web.Request) -> dict[str, Any]:
        raw = await request.read()
        return parse_body(raw) if raw.strip() else {}

    async def job_wait(self, request: web.Request) -> web.Response:
        """Ganeti's long poll: the job's asked fields once they differ from what the client last saw, or null
        after WAIT_S (the client asks again)."""
        raw, body = request.match_info["id"], await self._ganeti_body(request)
        fields = body.get("fields") or ["status"]
        if not raw.isdigit() or not isinstance(fields, list):
            raise BadRequest("GET /2/jobs/ID/wait: ID is a number and the body's fields a list")
        previous = body.get("previous_job_info")
        for _ in range(int(WAIT_S / WAIT_POLL_S)):
            record = self.agent.replica.get_json(model.job_key(int(raw))) or \
                self.agent.replica.get_json(model.archived_job_key(int(raw)))
            if record is None:
                raise NotFound(f"job {raw} is unknown")
            shaped = _job(record)
            info = [shaped.get(f) for f in fields]
            if info != previous or shaped["status"] in ("success", "error", "canceled"):
                return self._json({"job_info": info, "log_entries": []})
            await asyncio.sleep(WAIT_POLL_S)
        return self._json(None)

    async def htools_cluster(self) -> HtoolsCluster:
        """The cluster in htools' model (hostagent.rapi.htoolsview), from the same shapes `-m` reads."""
        cluster = self._cluster()
        nodes = await self._node_shapes()
        info = shapes.info(cluster, self._master(), cluster.get("hvparams") or {}, self._templates(),
                           self._largest(nodes))
        return to_htools(info, [self._group(nodes)], nodes, self._instance_shapes())

    async def htools_text(self) -> str:
        """The cluster in htools' text format: what `hscan` would write for it."""
        return write_text(await self.htools_cluster())

    async def unknown(self, request: web.Request) -> web.Response:
        if request.path.startswith("/2/"):
            return ganeti_error(501, "Not Implemented", f"{request.method} {request.path} is not served by Corral "
                                "yet")
        return ganeti_error(404, "Not Found", "Nothing matches the given URI")


def _job(record: dict[str, Any]) -> dict[str, Any]:
    """A job in Ganeti's shape; an instance-details job's result as Ganeti's OP_INSTANCE_QUERY_DATA gives it."""
    shaped = shapes.job(record)
    if record.get("op") == "instance.query-data" and shaped["status"] == "success":
        shaped["opresult"] = [instance_info(record["result"], True)]
    if record.get("op") == "node.query-storage" and shaped["status"] == "success":
        shaped["opresult"] = [record["result"]["rows"]]
    return shaped


def _ganeti_shaped(answer: web.Response) -> web.Response:
    """A /v1 refusal ({error, message}) as Ganeti's {code, message, explain}, same status."""
    try:
        said = json.loads(answer.body) if isinstance(answer.body, bytes) else {}
    except ValueError:
        said = {}
    phrase = HTTPStatus(answer.status).phrase if answer.status in HTTPStatus._value2member_map_ else "Error"
    return ganeti_error(answer.status, phrase, str(said.get("message") or said.get("explain") or phrase))


def build_rapi(agent: Any) -> web.Application:
    return Rapi(agent).app()

