"""The shared ground of the agent's HTTP API (/v1): error translation and the helpers every route group uses.

Reads are answered from the local SQLite replica (with its age, so a stale
answer says so). Changes run on the master: a non-master agent forwards them
over mutual TLS and answers once its own replica has the result
(read-your-writes). Errors are JSON {error, message}; the status code says
which kind. The route groups (hostagent.api.cluster, api_nodes, api_instances,
api_internal) subclass ApiBase; hostagent.api.app composes them and holds the
route table.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import quote

from aiohttp import web
from aiohttp.web_urldispatcher import AbstractRoute

from election.etcd import EtcdError, EtcdRequestFailed
import election.lease
from kvm.daemon import LaunchError
from kvm.hvparams import HvParamError
from kvm.nbdexport import ExportError
from storage.base import StorageError

from hostagent import model
from hostagent import callers
from hostagent.api import auth, bodycheck
from hostagent.master.decide import replicas
from hostagent.agent import Agent, NotInitialized
from hostagent.errors import MESSAGE_HEADER, BadRequest, Conflict, NotFound, NotMaster, SenderNotMaster, StaleToken
from hostagent.node.executor import OrderError
from hostagent.master.jobs import JobFailed
from hostagent.node.joining import JoinRefused
from hostagent.master.node_ops import NodeOperations
from hostagent.master.operations import Operations
from hostagent.orders import NodeClient
from hostagent.status import REPORT_STALE_AFTER_S
from hostagent.units import SizeError

log = logging.getLogger(__name__)

NO_QUORUM = ("no quorum: the cluster's etcd members cannot agree right now, so changes are refused "
             "until a majority of the master candidates is reachable again; reads still work from "
             "each node's replica. Detail: ")
# The change left for the master and no answer came back: unlike NO_QUORUM, it may have been made.
NO_QUORUM_IN_FLIGHT = ("no quorum: the cluster's etcd members lost their majority while this change was on its "
                       "way to the master, which did not answer. If the change reached it before the split, it "
                       "may still be made: once the network heals, look (`corral job list`, or list what you "
                       "changed) before you retry. Detail: ")
_ERRORS: list[tuple[type[BaseException], int, str]] = [
    (BadRequest, 400, "bad-request"), (SizeError, 400, "bad-request"), (HvParamError, 400, "bad-request"),
    (NotFound, 404, "not-found"), (Conflict, 409, "conflict"), (FileExistsError, 409, "conflict"),
    # StaleToken and SenderNotMaster before their base NotMaster: the first class that matches answers.
    (StaleToken, 409, "stale-token"), (SenderNotMaster, 409, "not-the-master"), (JoinRefused, 403, "join-refused"),
    (NotMaster, 503, "no-master"), (NotInitialized, 503, "not-initialized"),
    (election.lease.NotMaster, 503, "no-master"),  # the leaf's own error, translated here
    (ConnectionError, 503, "master-unreachable"), (TimeoutError, 503, "timeout"),
    (OrderError, 422, "order-failed"), (StorageError, 422, "storage"),
    # The NBD export's errors, and its daemon's failure to start (QemuManager words its own), as when it was storage's.
    (ExportError, 422, "storage"), (LaunchError, 422, "storage"),
    (JobFailed, 409, "refused"),  # a master step refused outside a job (its lease lapsed, say): retry
]


MAX_BODY_DEPTH = 32  # no request of this API nests deeper; json's recursion must not be the limit


def parse_body(raw: bytes) -> dict[str, Any]:
    """A request body as a JSON object; BadRequest for anything else, NaN and Infinity included
    (Python's json takes them, and a NaN compares false with every bound)."""
    def refuse(constant: str) -> None:
        raise BadRequest(f"the request body holds {constant}, which is not a JSON number; send a finite number")

    if nesting(raw) > MAX_BODY_DEPTH:
        raise BadRequest(f"the request body nests deeper than {MAX_BODY_DEPTH} levels")
    try:
        body = json.loads(raw, parse_constant=refuse)
    except BadRequest:
        raise
    except (ValueError, RecursionError):
        raise BadRequest("the request body must be a JSON object") from None
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    return body


BODY = "corral.body"


def body_middleware(bodies: Mapping[AbstractRoute, Mapping[str, Any]],
                    components: Mapping[str, Any]) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Check each request body against its route's schema in the OpenAPI document, before any handler:
    a 400 naming the field and what it accepts, never a handler tripping over a wrong type."""
    @web.middleware
    async def check(request: web.Request,
                    handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        schema = bodies.get(request.match_info.route)
        if schema is not None:
            body = parse_body(await request.read()) if request.can_read_body else {}
            found = bodycheck.problems(schema, body, components)
            if found:
                raise BadRequest("; ".join(found))
            request[BODY] = body
        return await handler(request)

    return check


def nesting(raw: bytes) -> int:
    """How deep arrays and objects nest in a JSON text (brackets inside strings do not count)."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest


def _error(status: int, code: str, message: str) -> web.Response:
    headers = {MESSAGE_HEADER: quote(message[:1000], safe=" '(),.:;/=-_`")}
    return web.json_response({"error": code, "message": message}, status=status, headers=headers)


@web.middleware
async def error_middleware(request: web.Request,
                  handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPNotFound:  # no route has this path: the same JSON errors as every other refusal
        return _error(404, "not-found", f"no such path: {request.path!r} (the API is described at "
                                        "/v1/openapi.json)")
    except web.HTTPMethodNotAllowed as exc:
        return _error(405, "method-not-allowed", f"{request.method} is not allowed on {request.path!r}; "
                                                 f"allowed: {', '.join(sorted(exc.allowed_methods))}")
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


class ApiBase:
    """What the route groups share: the agent, replica reads, and running a change on the master."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    # ---- helpers -------------------------------------------------------------
    def _replica_info(self) -> dict[str, Any]:
        last = self.agent.replica.last_sync_unix()
        age = None if not last else max(0.0, self.agent.clock.time() - last)
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
        records = {r["name"]: r for r in self._all(model.REPLICAS) if isinstance(r, dict) and "name" in r}
        trusting = replicas.with_trust(self._all(model.INSTANCES), records, self._reports())
        return [{**i, "restart": tracks.get(i["name"]), "replica": records.get(i["name"])} for i in trusting]

    def _reports(self) -> dict[str, dict[str, Any]]:
        return {r["node"]: r for r in self._all(model.REPORTS)}

    def _master(self) -> str | None:
        master = self.agent.replica.get_json(model.MASTER_KEY)
        return master.get("node") if isinstance(master, dict) else None

    def _require_cluster(self) -> None:
        if self.agent.cluster_file.read() is None:
            raise NotInitialized(f"node '{self.agent.cfg.node_name}' is not part of a cluster yet; "
                                 "run `corral cluster init --name NAME` first")

    async def _body(self, request: web.Request) -> dict[str, Any]:
        if BODY in request:
            return dict(request[BODY])  # parsed and checked against its schema (body_middleware)
        if not request.can_read_body:
            return {}
        return parse_body(await request.read())

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
                         run: Callable[[Operations, NodeOperations], Awaitable[web.Response]],
                         forward: tuple[str, str, bytes] | None = None) -> web.Response:
        """Run a change here if this node is master, else forward it to the master: the request itself, or
        `forward`'s (method, /v1 path, body) for a change asked in another API's terms (Ganeti's RAPI)."""
        self._require_cluster()
        role, me = self.agent.role, self.agent.cfg.node_name
        deadline = self.agent.clock.monotonic() + self.agent.cfg.master_lease_ttl_s + 5
        # No master recorded, or this node: it may be (re)taking the role. Wait a moment rather
        # than fail, but stop as soon as the replica names another master.
        while (role is not None and not role.is_master and self._master() in (None, me)
               and self.agent.clock.monotonic() < deadline):
            try:
                await asyncio.wait_for(role.became_master.wait(), 0.1)
            except asyncio.TimeoutError:
                pass
        caller = request.get(auth.CALLER)
        if self.agent.role is not None and self.agent.role.is_master:
            assert self.agent.ops is not None and self.agent.node_ops is not None
            with callers.acting(caller):  # the jobs and events this change makes name who asked
                return await run(self.agent.ops, self.agent.node_ops)
        quorum = await self._quorum()
        for _ in range(3):  # an etcd leader election takes about a second: not a lost quorum yet
            if quorum["ok"]:
                break
            await asyncio.sleep(0.5)
            quorum = await self._quorum()
        if not quorum["ok"]:  # say why at once instead of timing out on a master that cannot commit
            raise NotMaster(None, NO_QUORUM + quorum["reason"])
        master = self._master()
        node = self.agent.replica.get_json(model.node_key(master)) if master else None
        if node is None or self.agent.nodes is None:
            raise NotMaster(None, "no master is elected right now, so changes are refused; "
                                 "`corral cluster info` shows the quorum state")
        try:
            method, path, body = forward or (request.method, request.raw_path, await request.read())
            status, data = await self.agent.nodes.forward(
                node["address"], node["api_port"], method, path, body,
                headers={callers.HEADER: caller.to_header()} if caller is not None else None)
        except ConnectionError:
            quorum = await self._quorum()  # a master that does not answer: is it the quorum?
            if not quorum["ok"]:
                raise NotMaster(master, NO_QUORUM_IN_FLIGHT + quorum["reason"]) from None
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
