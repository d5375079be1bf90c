"""Node-to-node routes of the API and the local drill routes that call them.

The TLS site serves orders from the master, drill requests, the QEMU list and
the clock to other nodes (mutual TLS, node certificates); the local socket
serves the drills and the replica comparison that ask the other nodes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from typing import Any

from aiohttp import web

from election.lease import FencingToken

from hostagent import model, pki
from hostagent.api import auth
from hostagent.node import drill
from hostagent.api.base import ApiBase
from hostagent.errors import BadRequest, Conflict
from hostagent.node.executor import OrderError
from hostagent.orders import OrderFailed

log = logging.getLogger(__name__)


class InternalRoutes(ApiBase):
    """Handlers for /v1/node/..., /v1/drill/... and /v1/cluster/replicas."""

    async def node_order(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        try:
            token = FencingToken.from_str(str(body.get("token", "")))
        except ValueError:
            raise BadRequest(f"order token {body.get('token')!r} is not a fencing token") from None
        sender = pki.peer_node_name(request.transport.get_extra_info("peercert") if request.transport else None)
        if sender is None:
            raise BadRequest("orders need a node certificate")
        await self.agent.tokens.admit(token, sender, self.agent.verify_token, self._known_master_token())
        op, args = str(body.get("op", "")), body.get("args", {})
        if self.agent.isolation.active():
            raise OrderError(f"node '{self.agent.cfg.node_name}' is cut off from the cluster by a drill")
        result = await self.agent.node_order(op, args)
        if op.startswith(("instance.", "backup.")) and not op.endswith("status"):
            self.agent.reports.soon()  # the master sees the order's effect (a backup listed) now, not in 5 s
        return web.json_response(result)

    def _known_master_token(self) -> FencingToken | None:
        """The master token this node's replica shows (None if it shows none, or an unreadable one)."""
        info = self.agent.replica.get_json(model.MASTER_INFO_KEY)
        try:
            return FencingToken.from_str(str(info["token"])) if isinstance(info, dict) and info.get("token") else None
        except ValueError:
            return None

    async def replica_outdated(self, request: web.Request) -> web.Response:
        """Node-to-master: the primary's guest waits on a write its secondary did not take.

        Answered 200 only once the copy is recorded out of date in etcd: then
        the primary may resume the guest without it."""
        name, body = await self._from_primary(request)
        assert self.agent.ops is not None
        gen = body.get("gen")
        await self.agent.ops.moves.outdate(name, str(body.get("reason") or "its primary could not write to it"),
                                           gen=gen if isinstance(gen, int) else None)
        return web.json_response({"name": name, "outdated": True})

    async def replica_resumed(self, request: web.Request) -> web.Response:
        """Node-to-master: the guest resumed without its copy; how long it was paused, for `instance info`."""
        name, body = await self._from_primary(request)
        event = {"at": float(body.get("at") or self.agent.clock.time()), "pause_ms": int(body.get("pause_ms") or 0),
                 "reason": str(body.get("reason") or "")[:200]}
        assert self.agent.ops is not None
        await self.agent.ops.moves.resumed(name, event)
        return web.json_response({"name": name})

    async def _from_primary(self, request: web.Request) -> tuple[str, dict[str, Any]]:
        """The instance named in the body, if this node is master and the caller is its primary."""
        sender = pki.peer_node_name(request.transport.get_extra_info("peercert") if request.transport else None)
        if sender is None:
            raise BadRequest("only nodes may report on their replicas")
        body = await self._body(request)
        role = self.agent.role
        if role is None or not role.is_master or self.agent.ops is None:
            raise Conflict(f"node '{self.agent.cfg.node_name}' is not the master")
        name = str(body.get("name", ""))
        inst = await self.agent.ops.store.get(model.instance_key(name))
        if inst is None or inst.get("primary_node") != sender:
            raise Conflict(f"node '{sender}' is not the primary of an instance named '{name}'")
        return name, body

    async def node_clock(self, request: web.Request) -> web.Response:
        """Node-to-node: this node's wall clock, for the clock skew check of `cluster verify`."""
        return web.json_response({"node": self.agent.cfg.node_name, "time": self.agent.clock.time()})

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
        caller = request.get(auth.CALLER)
        log.warning("drill requested by %s: %s this agent", caller.words() if caller else "?", mode)
        if mode == "isolate":
            if self.agent.role is not None and self.agent.role.is_master:
                raise Conflict(f"node '{self.agent.cfg.node_name}' is the master; hand the role over first "
                               "(`corral cluster master-failover`)")
            assert self.agent.lease is not None
            self.agent.isolation.begin(float(freeze_s), self.agent.lease, self.agent.child_pids())
        elif mode == "power-off":
            try:
                drill.power_off(self.agent.cfg.run_dir, float(freeze_s), self.agent.clock.time(), "a node-loss drill")
            except OSError as exc:
                raise Conflict(f"node '{self.agent.cfg.node_name}' cannot hold itself down after the power-off, "
                               f"so nothing was killed: {exc}") from None
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
                return {"node": node["name"], "accepted": True, "refused": False, "message": "accepted"}
            except OrderFailed as exc:
                # refused for the token (older than one seen, or held by no master in etcd), not just unreachable
                refused = exc.code in ("stale-token", "not-the-master")
                return {"node": node["name"], "accepted": False, "refused": refused, "message": exc.message}

        return self._ok(await asyncio.gather(*(one(n) for n in self._all(model.NODES))))

    async def drbd_fence_peer(self, request: web.Request) -> web.Response:
        """Local, from DRBD's fence-peer handler (cli.drbdfence): the peer's copy recorded out of date by the
        master before this primary writes alone; 409 when the master could not be told."""
        body = await self._body(request)
        resource = body.get("resource")
        if not isinstance(resource, str) or not resource:
            raise BadRequest("give the DRBD resource name: {\"resource\": \"corral-NAME-N\"}")
        try:
            peer = await self.agent.drbd.fence_peer(resource)
        except OrderError as exc:
            raise Conflict(str(exc)) from None
        return self._ok({"resource": resource, "outdated": peer})

    async def replicas(self, request: web.Request) -> web.Response:
        """Every node's replica revision and checksum, asked over mutual TLS."""
        async def one(node: dict[str, Any]) -> dict[str, Any]:
            try:
                status, data = await self._nodes_client().forward(node["address"], node["api_port"], "GET",
                                                                  "/v1/cluster/replica", None, timeout_s=5)
            except ConnectionError as exc:
                return {"node": node["name"], "error": str(exc)}
            answer = data.get("data") if status == 200 else None
            return answer if isinstance(answer, dict) else {"node": node["name"], "error": data.get("message")}

        return self._ok(await asyncio.gather(*(one(n) for n in self._all(model.NODES))))
