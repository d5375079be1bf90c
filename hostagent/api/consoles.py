"""Console routes: an instance's serial console and VNC display, from any node.

Both are websockets (binary frames, the raw bytes both ways) that the agent
bridges to a socket of the instance's QEMU. An agent that does not run the
instance relays them from the agent that does over the node API (its node
certificate; the caller passed along and its role checked again there; one
hop only, never a loop). Both need the write role: typing into a console or a
display changes the guest. hostagent.api.relay bounds every relay.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from kvm.cmdline import run_paths
from kvm.process import InstanceNotRunning
from kvm.qmp import QmpError

from hostagent import model, pki
from hostagent import callers
from hostagent.api import auth, relay
from hostagent.master import vncpass
from hostagent.api.base import ApiBase
from hostagent.errors import Conflict, NotFound

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5.0
Connect = Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


class ConsoleRoutes(ApiBase):
    """Handlers for /v1/instances/{name}/console, /vnc and /vnc/stream."""

    async def instance_console(self, request: web.Request) -> web.StreamResponse:
        """The serial console as a websocket. A request that is not a websocket upgrade is answered 426 before
        anything else: the guest's console takes one client at a time, so opening it for a request that cannot
        use it would hold it from the operator who can."""
        name = request.match_info["name"]

        async def console() -> Connect:
            path = run_paths(self.agent.cfg.run_dir, name).console_socket
            if self.agent.qemu.find(name) is None or not os.path.exists(path):
                raise Conflict(f"instance '{name}' is not running, so it has no console")
            return lambda: asyncio.open_unix_connection(path)
        return await self._stream(request, f"the console of instance '{name}'", "corral instance console", console)

    async def instance_vnc(self, request: web.Request) -> web.Response:
        """How to reach the VNC display: a unix socket on the node, or the node's address, a port and the
        password (write role: a read user never sees it)."""
        name = request.match_info["name"]
        inst = self._console_instance(request, name)
        here = self.agent.cfg.node_name
        if inst["primary_node"] != here:
            node = self._node_record(inst["primary_node"])
            caller = request.get(auth.CALLER)
            try:
                status, data = await self._nodes_client().forward(
                    node["address"], node["api_port"], "GET", request.raw_path, None,
                    headers={callers.HEADER: caller.to_header()} if caller is not None else None)
            except ConnectionError:
                raise Conflict(f"instance '{name}' runs on node '{node['name']}', which does not answer") from None
            return web.json_response(data, status=status)
        address = await self._vnc_address(name)
        display: dict[str, Any] = {"name": name, "node": here, "address": self.agent.cfg.address}
        if address.startswith("unix:"):
            display.update(mode="unix", socket=address.removeprefix("unix:"))
        else:
            host, _, port = address.rpartition(":")
            display.update(mode="tcp", host=host.strip("[]"), port=int(port),
                           password=vncpass.password(self.agent.replica, inst["uuid"]))
        return self._ok(display)

    async def instance_vnc_stream(self, request: web.Request) -> web.StreamResponse:
        """The VNC display as a websocket carrying the RFB protocol unchanged (`corral instance console --vnc
        --listen` turns it into a local TCP port for a VNC viewer)."""
        name = request.match_info["name"]

        async def display() -> Connect:
            address = await self._vnc_address(name)
            if address.startswith("unix:"):
                path = address.removeprefix("unix:")
                return lambda: asyncio.open_unix_connection(path)
            host, _, port = address.rpartition(":")
            return lambda: asyncio.open_connection(host.strip("[]"), int(port))
        return await self._stream(request, f"the VNC display of instance '{name}'",
                                  "corral instance console --vnc --listen PORT", display)

    # ---- helpers -------------------------------------------------------------
    async def _stream(self, request: web.Request, what: str, command: str,
                      local: Callable[[], Awaitable[Connect]]) -> web.StreamResponse:
        """A websocket bridged to the QEMU socket `local` finds on this node, or relayed from the
        instance's node."""
        ws = _websocket(request, what, command)
        if not isinstance(ws, web.WebSocketResponse):
            return ws
        inst = self._console_instance(request, request.match_info["name"])
        if inst["primary_node"] != self.agent.cfg.node_name:
            return await self._relay(request, ws, inst["primary_node"], what)
        return await self._serve(request, ws, await local(), what)

    def _console_instance(self, request: web.Request, name: str) -> dict[str, Any]:
        """The instance's record; Conflict for a request another node relayed here that is not for this node."""
        self._require_cluster()
        inst = self.agent.replica.get_json(model.instance_key(name))
        if inst is None:
            raise NotFound(f"no instance named '{name}'")
        if inst["primary_node"] != self.agent.cfg.node_name:
            peer = request.transport.get_extra_info("peercert") if request.transport else None
            if pki.peer_node_name(peer) is not None:  # relayed already: one hop only, never a loop
                raise Conflict(f"instance '{name}' does not run on node '{self.agent.cfg.node_name}' "
                               f"(its config says '{inst['primary_node']}'); try again in a moment")
        return dict(inst)

    async def _vnc_address(self, name: str) -> str:
        try:
            address = await self.agent.qemu.vnc_address(name)
        except InstanceNotRunning:
            raise Conflict(f"instance '{name}' is not running, so it has no VNC display") from None
        except QmpError as exc:
            raise Conflict(f"the QEMU of instance '{name}' does not answer ({exc.reason})") from None
        if address is None:
            raise Conflict(f"instance '{name}' has no VNC display: its hypervisor parameter vnc is off "
                           f"(`corral instance modify {name} --hv vnc=localhost`, or vnc=tcp, then restart it)")
        return address

    async def _serve(self, request: web.Request, ws: web.WebSocketResponse, connect: Connect,
                     what: str) -> web.StreamResponse:
        """Bridge the caller's websocket to a socket of the QEMU on this node."""
        with self.agent.relays.slot(self.agent.cfg.node_name, *_who(request)):
            try:
                reader, writer = await asyncio.wait_for(connect(), CONNECT_TIMEOUT_S)
            except (OSError, TimeoutError) as exc:
                raise Conflict(f"{what} does not answer ({getattr(exc, 'strerror', None) or exc or 'timeout'})") \
                    from None
            try:
                await ws.prepare(request)
            except BaseException:
                writer.close()
                raise
            reason = await relay.bridge(relay.WebSocketEnd(ws), relay.StreamEnd(reader, writer))
        return _ended(request, ws, what, reason)

    async def _relay(self, request: web.Request, ws: web.WebSocketResponse, node_name: str,
                     what: str) -> web.StreamResponse:
        """Bridge the caller's websocket to the same route on `node_name`'s agent."""
        node = self.agent.replica.get_json(model.node_key(node_name))
        if node is None or self.agent.nodes is None:
            raise Conflict(f"{what} is on node '{node_name}', which is not in the cluster")
        caller = request.get(auth.CALLER)
        headers = {callers.HEADER: caller.to_header()} if caller is not None else None
        with self.agent.relays.slot(self.agent.cfg.node_name, *_who(request)):
            try:
                remote = await self.agent.nodes.websocket(node["address"], node["api_port"], request.raw_path,
                                                          headers)
            except ConnectionError as exc:
                raise Conflict(f"{what} is on node '{node_name}': {exc}") from None
            try:
                await ws.prepare(request)
            except BaseException:
                await remote.close()
                raise
            reason = await relay.bridge(relay.WebSocketEnd(ws), relay.WebSocketEnd(remote))
        return _ended(request, ws, what, reason)


def _websocket(request: web.Request, what: str, command: str) -> web.WebSocketResponse | web.Response:
    """The websocket to answer with, or the 426 that says how to ask."""
    ws = web.WebSocketResponse()
    if ws.can_prepare(request).ok:
        return ws
    return web.json_response(
        {"error": "upgrade-required", "message": f"{what} is a websocket: send a GET with `Connection: Upgrade` "
                                                 f"and `Upgrade: websocket` (`{command}`)"},
        status=426, headers={"Upgrade": "websocket", "Connection": "Upgrade"})


def _ended(request: web.Request, ws: web.WebSocketResponse, what: str, reason: str) -> web.WebSocketResponse:
    """Log why a relay ended; a caller that stopped reading loses its connection at once."""
    if reason == "closed":
        log.debug("%s: relay closed", what)
    else:
        log.info("%s: relay ended, %s", what, {"idle": f"nothing moved for {relay.IDLE_TIMEOUT_S:.0f} s",
                                               "stalled": "its reader took nothing for "
                                                          f"{relay.STALL_TIMEOUT_S:.0f} s"}[reason])
    if reason == "stalled" and request.transport is not None:
        request.transport.abort()
    return ws


def _who(request: web.Request) -> tuple[str, bool]:
    """The caller a relay slot is counted for (a relayed request counts for the user it came from) and
    whether it may use the admins' reserve."""
    caller = request.get(auth.CALLER)
    if caller is None:
        return "", False
    return (f"user '{caller.name}'" if caller.kind == "user" else caller.kind), caller.role == "admin"
