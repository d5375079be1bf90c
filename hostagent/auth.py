"""Who is calling the TCP API, and what they may do.

    node certificate (mutual TLS)  -> a cluster node: everything, incl. orders
    Authorization: Bearer NAME.X   -> an API user: role read (GET only) or write
    nothing                        -> only the join endpoints and the OpenAPI document

The unix socket is root-only by file mode and needs none of this.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from hostagent import pki, users

PUBLIC = {("GET", "/v1/join/ca"), ("POST", "/v1/join"), ("GET", "/v1/openapi.json")}
READ_METHODS = ("GET", "HEAD")


def _refuse(status: int, code: str, message: str) -> web.Response:
    headers = {"WWW-Authenticate": 'Bearer realm="corral"'} if status == 401 else None
    return web.json_response({"error": code, "message": message}, status=status, headers=headers)


def middleware(replica: Any) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def check(request: web.Request,
                    handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        peer = request.transport.get_extra_info("peercert") if request.transport else None
        node = pki.peer_node_name(peer)
        if node is not None:
            request["caller"] = f"node '{node}'"
            return await handler(request)
        if (request.method, request.path) in PUBLIC:
            request["caller"] = "anonymous"
            return await handler(request)
        if request.path.startswith("/v1/node/"):
            return _refuse(403, "forbidden", "orders are accepted only from cluster nodes (node certificate)")
        header = request.headers.get("Authorization", "")
        if not header:
            return _refuse(401, "unauthenticated", "authentication required: send `Authorization: Bearer "
                                                   "NAME.TOKEN` (create a user with `corral user add`)")
        user = users.authenticate(replica, header)
        if user is None:
            return _refuse(401, "unauthenticated", "the token is not valid (unknown user or wrong token)")
        # The serial console is a GET, but typing into it changes the machine: write role only.
        if user["role"] != "write" and (request.method not in READ_METHODS or request.path.endswith("/console")):
            return _refuse(403, "forbidden", f"user '{user['name']}' has the read role and cannot change "
                                             "anything; ask for a user with the write role")
        request["caller"] = f"user '{user['name']}'"
        return await handler(request)

    return check
