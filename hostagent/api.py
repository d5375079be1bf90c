"""The agent's HTTP API (/v1): a unix socket for the local CLI, TLS for other nodes.

Reads are answered from the local SQLite replica (with its age, so a stale
answer says so); writes become jobs on the master. Errors are JSON
{error, message} with the status code saying which kind.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import WSMsgType, web

from election.etcd import EtcdError
from election.lease import FencingToken, NotMaster
from kvm.cmdline import run_paths
from kvm.hvparams import HvParamError, parse_hvparams
from storage.base import StorageError
from storage.osdef import OsDefinition

from hostagent import model, views
from hostagent.agent import Agent, NotInitialized
from hostagent.errors import BadRequest, Conflict, NotFound
from hostagent.executor import OrderError
from hostagent.fencing import StaleToken
from hostagent.master import NoMaster
from hostagent.openapi import openapi_document
from hostagent.operations import Operations
from hostagent.status import REPORT_STALE_AFTER_S
from hostagent.units import SizeError

log = logging.getLogger(__name__)

_ERRORS: list[tuple[type[BaseException], int, str]] = [
    (BadRequest, 400, "bad-request"), (SizeError, 400, "bad-request"), (HvParamError, 400, "bad-request"),
    (NotFound, 404, "not-found"), (Conflict, 409, "conflict"), (FileExistsError, 409, "conflict"),
    (StaleToken, 409, "stale-token"), (NoMaster, 503, "no-master"), (NotInitialized, 503, "not-initialized"),
    (NotMaster, 503, "no-master"), (EtcdError, 503, "no-quorum"), (TimeoutError, 503, "timeout"),
    (OrderError, 422, "order-failed"), (StorageError, 422, "storage"),
]


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": code, "message": message}, status=status)


@web.middleware
async def _errors(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except Exception as exc:  # noqa: BLE001 - translated once, here
        for typ, status, code in _ERRORS:
            if isinstance(exc, typ):
                return _error(status, code, str(exc))
        if type(exc).__module__.startswith(("storage", "kvm")):
            return _error(422, "node-error", str(exc))
        log.exception("API %s %s failed; please report this bug", request.method, request.path)
        return _error(500, "internal", f"internal error: {exc!r} (please report this bug)")


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

    def _reports(self) -> dict[str, dict[str, Any]]:
        return {r["node"]: r for r in self._all(model.REPORTS)}

    def _master(self) -> str | None:
        master = self.agent.replica.get_json(model.MASTER_KEY)
        if isinstance(master, dict):
            return master.get("node")
        return master

    def _require_cluster(self) -> None:
        if self.agent.local_cluster() is None:
            raise NotInitialized(f"node '{self.agent.cfg.node_name}' is not part of a cluster yet; "
                                 "run `corral cluster init --name NAME` first")

    async def _body(self, request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError:
            raise BadRequest("the request body must be a JSON object") from None
        if not isinstance(body, dict):
            raise BadRequest("the request body must be a JSON object")
        return body

    async def _accepted(self, job_id: int) -> web.Response:
        """Answer only once the local replica has the job: the CLI then reads its own write."""
        key = model.job_key(job_id)
        for _ in range(100):
            if self.agent.replica.get(key) is not None:
                break
            await asyncio.sleep(0.05)
        return self._ok({"job_id": job_id}, status=202)

    async def _ops(self) -> Operations:
        """The master's operations; waits briefly while this node is (re)taking the master role."""
        self._require_cluster()
        role = self.agent.role
        if role is not None and not role.is_master and self._master() in (None, self.agent.cfg.node_name):
            try:
                await asyncio.wait_for(role.became_master.wait(), self.agent.cfg.master_lease_ttl_s + 5)
            except asyncio.TimeoutError:
                pass
        if self.agent.ops is None or role is None or not role.is_master:
            raise NoMaster(self._master(), f"node '{self.agent.cfg.node_name}' is not the master "
                                           f"(master: {self._master() or 'none elected'}); "
                                           "forwarding comes with multi-node clusters")
        return self.agent.ops

    # ---- cluster -------------------------------------------------------------
    async def cluster_info(self, request: web.Request) -> web.Response:
        local = self.agent.local_cluster()
        if local is None:
            return self._ok({"name": None, "initialized": False, "master": None, "token": None,
                             "this_node": self.agent.cfg.node_name, "this_node_is_master": False,
                             "hvparams": {}, "candidates": [], "nodes": 0, "instances": 0})
        cluster = self.agent.replica.get_json(model.CLUSTER_KEY) or {}
        role = self.agent.role
        token = role.token if role is not None and role.is_master else None
        return self._ok({
            "name": cluster.get("name") or local["name"],
            "initialized": True,
            "master": self._master(),
            "token": token.to_str() if token else None,
            "this_node": self.agent.cfg.node_name,
            "this_node_is_master": token is not None,
            "hvparams": cluster.get("hvparams", {}),
            "candidates": [n["name"] for n in self._all(model.NODES) if n.get("candidate")],
            "nodes": len(self._all(model.NODES)),
            "instances": len(self._all(model.INSTANCES)),
        })

    async def cluster_init(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        name = str(body.get("name", ""))
        if not name or not name.replace("-", "").replace(".", "").isalnum() or len(name) > 63:
            raise BadRequest(f"cluster name {name!r} is not valid: use letters, digits, '-' and '.' (at most 63)")
        hv = body.get("hvparams", {})
        if not isinstance(hv, dict):
            raise BadRequest("hvparams must be an object of name: value")
        parse_hvparams(hv)  # refuse bad defaults before anything is created
        job_id = await self.agent.init_cluster(name, hv)
        return await self._accepted(job_id)

    async def cluster_verify(self, request: web.Request) -> web.Response:
        self._require_cluster()
        findings = views.verify(self._all(model.NODES), self._all(model.INSTANCES), self._reports(),
                                self._all(model.JOBS), self._master(), time.time())
        if self._replica_info()["stale"]:
            findings.insert(0, views.Finding("warning", "this node's config replica is stale; "
                                                        "findings may be out of date"))
        return self._ok([{"severity": f.severity, "message": f.message} for f in findings])

    # ---- nodes ---------------------------------------------------------------
    async def _node_rows(self) -> list[dict[str, Any]]:
        gossip = {m["name"]: m["status"] for m in await self.agent.serf_members()}
        reports, instances, master = self._reports(), self._all(model.INSTANCES), self._master()
        now = time.time()
        return [views.node_row(n, reports.get(n["name"]), master, gossip, instances, now)
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
                return self._ok(row)
        raise NotFound(f"no node named '{name}'")

    # ---- instances -----------------------------------------------------------
    async def instance_list(self, request: web.Request) -> web.Response:
        reports, now = self._reports(), time.time()
        return self._ok([views.instance_row(i, reports, now) for i in self._all(model.INSTANCES)])

    async def instance_info(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        inst = self.agent.replica.get_json(model.instance_key(name))
        if inst is None:
            raise NotFound(f"no instance named '{name}'")
        row = views.instance_row(inst, self._reports(), time.time())
        if inst["primary_node"] == self.agent.cfg.node_name:
            row["console_tail"] = [line for line in self.agent.qemu.console_log_tail(name, 30) if line.strip()][-10:]
        return self._ok(row)

    async def instance_add(self, request: web.Request) -> web.Response:
        return await self._accepted(await (await self._ops()).submit_add(await self._body(request)))

    async def instance_action(self, request: web.Request) -> web.Response:
        name, action = request.match_info["name"], request.match_info["action"]
        body = await self._body(request) if request.can_read_body else {}
        params: dict[str, Any] = {}
        if action == "stop":
            params = {"force": bool(body.get("force", False)), "timeout_s": body.get("timeout_s")}
        elif action == "reboot":
            params = {"type": body.get("type", "soft")}
        elif action != "start":
            raise NotFound(f"unknown instance action '{action}' (start, stop, reboot)")
        return await self._accepted(await (await self._ops()).submit_simple(f"instance.{action}", name, params))

    async def instance_remove(self, request: web.Request) -> web.Response:
        return await self._accepted(await (await self._ops()).submit_simple("instance.remove", request.match_info["name"], {}))

    async def instance_console(self, request: web.Request) -> web.StreamResponse:
        """Bridge a websocket to the instance's serial console socket (instance on this node)."""
        name = request.match_info["name"]
        inst = self.agent.replica.get_json(model.instance_key(name))
        if inst is None:
            raise NotFound(f"no instance named '{name}'")
        if inst["primary_node"] != self.agent.cfg.node_name:
            raise BadRequest(f"instance '{name}' runs on node '{inst['primary_node']}': run "
                             "`corral instance console` there (console forwarding comes with multi-node)")
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

    # ---- jobs and OS ---------------------------------------------------------
    async def job_list(self, request: web.Request) -> web.Response:
        jobs = self._all(model.JOBS)
        return self._ok([{k: j[k] for k in ("id", "op", "summary", "status", "created", "started", "ended",
                                             "error")} for j in jobs])

    async def job_info(self, request: web.Request) -> web.Response:
        raw = request.match_info["id"]
        if not raw.isdigit():
            raise BadRequest(f"job id {raw!r} is not a number")
        job = self.agent.replica.get_json(model.job_key(int(raw)))
        if job is None:
            raise NotFound(f"no job {raw}")
        return self._ok(job)

    async def os_list(self, request: web.Request) -> web.Response:
        catalog = self.agent.refresh_catalog()
        rows = []
        for name, entry in sorted(catalog.entries.items()):
            if isinstance(entry, OsDefinition):
                rows.append({"name": name, "kind": "script", "path": entry.path,
                             "variants": list(entry.variants), "api_versions": list(entry.api_versions)})
            else:
                rows.append({"name": name, "kind": "image", "path": entry.path, "variants": [],
                             "api_versions": []})
        return self._ok({"node": self.agent.cfg.node_name, "os": rows, "problems": list(catalog.problems)})

    # ---- node-to-node --------------------------------------------------------
    async def node_order(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        try:
            token = FencingToken.from_str(str(body.get("token", "")))
        except ValueError:
            raise BadRequest(f"order token {body.get('token')!r} is not a fencing token") from None
        self.agent.tokens.admit(token)
        result = await self.agent.executor.handle(str(body.get("op", "")), body.get("args", {}))
        self.agent.schedule_report()
        return web.json_response(result)

    async def job_cancel(self, request: web.Request) -> web.Response:
        raw = request.match_info["id"]
        if not raw.isdigit():
            raise BadRequest(f"job id {raw!r} is not a number")
        runner = (await self._ops()).role.require()
        await runner.cancel(int(raw))
        return self._ok({"job_id": int(raw), "status": "canceled"})

    async def openapi(self, request: web.Request) -> web.Response:
        return web.json_response(openapi_document())


def build_app(agent: Agent, *, node_site: bool) -> web.Application:
    """The local app (unix socket) serves everything but orders; the TLS app adds orders."""
    api = Api(agent)
    app = web.Application(middlewares=[_errors])
    r = app.router
    r.add_get("/v1/openapi.json", api.openapi)
    r.add_get("/v1/cluster", api.cluster_info)
    r.add_post("/v1/cluster/init", api.cluster_init)
    r.add_get("/v1/cluster/verify", api.cluster_verify)
    r.add_get("/v1/nodes", api.node_list)
    r.add_get("/v1/nodes/{name}", api.node_info)
    r.add_get("/v1/instances", api.instance_list)
    r.add_post("/v1/instances", api.instance_add)
    r.add_get("/v1/instances/{name}", api.instance_info)
    r.add_delete("/v1/instances/{name}", api.instance_remove)
    r.add_post("/v1/instances/{name}/{action}", api.instance_action)
    r.add_get("/v1/instances/{name}/console", api.instance_console)
    r.add_get("/v1/jobs", api.job_list)
    r.add_get("/v1/jobs/{id}", api.job_info)
    r.add_post("/v1/jobs/{id}/cancel", api.job_cancel)
    r.add_get("/v1/os", api.os_list)
    if node_site:
        r.add_post("/v1/node/orders", api.node_order)
    return app
