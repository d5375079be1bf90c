"""Ganeti's Remote API v2 on every agent (its own port, Ganeti's 5080 by default), for the tools operators bring
from Ganeti: provisioning scripts on `python3-ganeti-rapi`, monitoring checks, htools.

- HTTPS with the node's certificate (the cluster CA's), as the node API.
- HTTP Basic authentication with Corral's API users, as Ganeti's users file: the user's name and the secret of
  its token (`NAME.SECRET`; the whole token is accepted as the password too). Role read may read, write and
  admin may also change, as Ganeti's `write` option. No credentials: 401 with Ganeti's challenge; a read user
  changing something: 403. Every resource needs a user: Corral does not serve its state anonymously.
- Answers in Ganeti's shapes (hostagent.rapi.shapes), read from this node's replica of the config; errors as
  Ganeti's JSON {code, message, explain}; a resource Ganeti has and Corral does not serve answers 501 (Ganeti's
  answer for what it does not implement), anything else 404.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from hostagent import model, views
from hostagent.api import users
from hostagent.api.nodes import NodeRoutes
from hostagent.errors import NotFound
from hostagent.rapi import shapes
from hostagent.status import REPORT_STALE_AFTER_S, report_age_s

log = logging.getLogger(__name__)

REALM = 'Basic realm="Ganeti Remote API"'
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


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
        try:
            return await handler(request)
        except NotFound as exc:
            return ganeti_error(404, "Not Found", str(exc))
        except web.HTTPException:
            raise
        except Exception:  # the RAPI answers in Ganeti's shape, never with a traceback
            log.exception("RAPI %s %s failed", request.method, request.path)
            return ganeti_error(500, "Internal Server Error", "the agent's log says what failed")

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

    async def info(self, request: web.Request) -> web.Response:
        cluster = self._cluster()
        return self._json(shapes.info(cluster, self._master(), cluster.get("hvparams") or {}, self._templates()))

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

    def _group(self) -> dict[str, Any]:
        cluster = self._cluster()
        return shapes.group([n["name"] for n in self._all(model.NODES)], str(cluster.get("uuid", "")),
                            shapes.ipolicy(self._templates()))

    async def groups(self, request: web.Request) -> web.Response:
        return self._listing(request, [self._group()], "groups", "name")

    async def group(self, request: web.Request) -> web.Response:
        if request.match_info["name"] not in (shapes.GROUP, self._group()["uuid"]):
            raise NotFound(f"node group '{request.match_info['name']}' is unknown (Corral has one: default)")
        return self._json(self._group())

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
        return self._listing(request, [shapes.job(j) for j in found], "jobs")

    async def job(self, request: web.Request) -> web.Response:
        raw = request.match_info["id"]
        if not raw.isdigit():
            raise NotFound(f"job id {raw!r} is not a number")
        record = self.agent.replica.get_json(model.job_key(int(raw))) or \
            self.agent.replica.get_json(model.archived_job_key(int(raw)))
        if record is None:
            raise NotFound(f"job {raw} is unknown")
        return self._json(shapes.job(record))

    async def unknown(self, request: web.Request) -> web.Response:
        if request.path.startswith("/2/"):
            return ganeti_error(501, "Not Implemented", f"{request.method} {request.path} is not served by Corral "
                                "yet")
        return ganeti_error(404, "Not Found", "Nothing matches the given URI")


def build_rapi(agent: Any) -> web.Application:
    return Rapi(agent).app()

