"""Who is calling the TCP API, and what they may do.

    node certificate (mutual TLS)  -> a cluster node: everything, incl. orders, while the
                                      node is a member with that certificate (hostagent.node.nodetrust)
    Authorization: Bearer NAME.X   -> an API user with role read, write or admin
    nothing                        -> only the join endpoints and the OpenAPI document

What each route needs is its access level in the route table (hostagent.api.app),
looked up here from the route the request matched, never guessed from the
path: public < read < write < admin < node, each level allowed what the lower
ones are. A node may carry the caller it forwards for (hostagent.callers);
that caller's level is checked again here. The unix socket is root-only by
file mode and needs none of this: its caller is local root (admin).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web
from aiohttp.web_urldispatcher import AbstractRoute

from hostagent import pki
from hostagent import callers
from hostagent.api import users
from hostagent.callers import Caller
from hostagent.node.nodetrust import NodeTrust

PUBLIC, NODE = "public", "node"
LEVELS = (PUBLIC, *users.ROLES, NODE)
UNROUTED = "read"  # a path or method no route has: a 404/405 only for callers who are signed in
CALLER = web.RequestKey("caller", Caller)  # who is calling, set on every request of both sites

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def allows(level: str, needed: str) -> bool:
    """Whether a caller of access `level` may call a route that needs `needed`."""
    return level in LEVELS and LEVELS.index(level) >= LEVELS.index(needed)


def level_of(caller: Caller) -> str:
    return {"node": NODE, "anonymous": PUBLIC}.get(caller.kind, caller.role)


def _refuse(status: int, code: str, message: str) -> web.Response:
    headers = {"WWW-Authenticate": 'Bearer realm="corral"'} if status == 401 else None
    return web.json_response({"error": code, "message": message}, status=status, headers=headers)


def middleware(replica: Any, trust: NodeTrust, roles: Mapping[AbstractRoute, str],
               here: str) -> Callable[..., Awaitable[web.StreamResponse]]:
    """The TLS site's check: `roles` maps each route to the level it needs, `here` is this node's name."""
    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        needed = roles.get(request.match_info.route, UNROUTED)
        peer = request.transport.get_extra_info("peercert") if request.transport else None
        node = pki.peer_node_name(peer)
        if node is not None:
            reason = await trust.check(node, pki.peer_serial(peer))
            if reason is not None:
                return _refuse(403, "node-not-trusted", reason)
            return await _as_node(request, handler, node, needed)
        if needed == PUBLIC:  # a forwarded caller is believed only in _as_node, never here
            request[CALLER] = Caller.anonymous(here)
            return await handler(request)
        if needed == NODE:
            return _refuse(403, "forbidden", "this route is accepted only from cluster nodes (node certificate)")
        header = request.headers.get("Authorization", "")
        if not header:
            return _refuse(401, "unauthenticated", "authentication required: send `Authorization: Bearer "
                                                   "NAME.TOKEN` (create a user with `corral user add`)")
        user = users.authenticate(replica, header)
        if user is None:
            return _refuse(401, "unauthenticated", "the token is not valid (unknown user or wrong token)")
        request[CALLER] = Caller.user(user["name"], user["role"], here)  # named in the access log if refused
        if callers.HEADER in request.headers:
            return _refuse(403, "forbidden", f"the {callers.HEADER} header is accepted only from cluster nodes")
        if not allows(user["role"], needed):
            return _refuse(403, "forbidden", f"{request.method} {request.path} needs the {needed} role; "
                                             f"user '{user['name']}' has the {user['role']} role")
        return await handler(request)

    return check


async def _as_node(request: web.Request, handler: Handler, node: str, needed: str) -> web.StreamResponse:
    """A trusted node: for itself, or for the caller it forwards (whose level must suffice)."""
    forwarded = request.headers.get(callers.HEADER)
    try:
        caller = Caller.node(node) if forwarded is None else callers.from_header(forwarded)
    except ValueError as exc:
        return _refuse(400, "bad-request", f"node '{node}' forwarded a bad caller: {exc}")
    request[CALLER] = caller
    if not allows(level_of(caller), needed):
        return _refuse(403, "forbidden", f"{request.method} {request.path} needs the {needed} role; "
                                         f"node '{node}' forwarded it for {caller.words()}")
    return await handler(request)


def local_root(here: str) -> Callable[..., Awaitable[web.StreamResponse]]:
    """The unix socket's caller: root on this node (the socket's file mode lets no one else in)."""
    @web.middleware
    async def name(request: web.Request, handler: Handler) -> web.StreamResponse:
        request[CALLER] = Caller.root(here)
        return await handler(request)

    return name
