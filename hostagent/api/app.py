"""The agent's HTTP API (/v1): the composed handler class and the route table of both sites.

The handlers live in one module per resource group (hostagent.api.cluster,
api_nodes, api_instances, api_internal) on the shared ground of
hostagent.api.base, which also explains how reads, changes and errors work.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

from aiohttp import web
from aiohttp.web_urldispatcher import AbstractRoute

from hostagent.api import auth
from hostagent.node import clocks
from hostagent.agent import Agent
from hostagent.api.base import body_middleware, error_middleware
from hostagent.api.backups import BackupRoutes
from hostagent.api.cluster import ClusterRoutes
from hostagent.api.consoles import ConsoleRoutes
from hostagent.api.instances import InstanceRoutes
from hostagent.api.internal import InternalRoutes
from hostagent.api.networks import NetworkRoutes
from hostagent.api.nodes import NodeRoutes
from hostagent.api.tags import TagRoutes
from hostagent.api.openapi import SCHEMAS, body_schema, openapi_document


class Api(ClusterRoutes, NodeRoutes, InstanceRoutes, ConsoleRoutes, InternalRoutes, TagRoutes, NetworkRoutes,
          BackupRoutes):
    """Every handler on one object, so the route table binds them all from one instance.

    The groups share only ApiBase's state (the agent) and helpers, so their
    order here does not matter: no handler name is defined twice.
    """

    async def openapi(self, request: web.Request) -> web.Response:
        return web.json_response(openapi_document())


class Route(NamedTuple):
    """One route: `access` is what a caller needs (hostagent.api.auth: public, read, write, admin, node);
    `site` is where it is served: both, tls (the node API) or local (the unix socket: root only)."""

    method: str
    path: str
    handler: Callable[[Api, web.Request], Awaitable[web.StreamResponse]]
    access: str
    site: str = "both"


PUBLIC, READ, WRITE, ADMIN, NODE = auth.PUBLIC, "read", "write", "admin", auth.NODE

# The one route table: registering a route means giving its access level. README "Users and roles" says
# why each level: read sees everything but the console; write runs instances and jobs, and moves
# instances off a node (drain, evacuate, node migrate/failover: what it could do instance by instance);
# admin changes who and what is in the cluster and how the cluster as a whole behaves.
ROUTES: tuple[Route, ...] = (
    Route("GET", "/v1/openapi.json", Api.openapi, PUBLIC),
    Route("GET", "/v1/cluster", Api.cluster_info, READ),
    Route("POST", "/v1/cluster/init", Api.cluster_init, ADMIN),
    Route("GET", "/v1/cluster/verify", Api.cluster_verify, READ),
    Route("POST", "/v1/cluster/repair", Api.cluster_repair, ADMIN),
    Route("POST", "/v1/cluster/fencing", Api.cluster_fencing, ADMIN),
    Route("POST", "/v1/cluster/alert/clear", Api.cluster_alert_clear, ADMIN),
    Route("POST", "/v1/cluster/modify", Api.cluster_modify, ADMIN),
    Route("POST", "/v1/cluster/tags", Api.cluster_tags, ADMIN),
    Route("GET", "/v1/tags", Api.tag_search, READ),
    Route("GET", "/v1/cluster/simulate", Api.cluster_simulate, READ),
    Route("GET", "/v1/cluster/htools", Api.cluster_htools, READ),
    Route("POST", "/v1/cluster/balance", Api.cluster_balance, WRITE),
    Route("GET", "/v1/cluster/capacity", Api.cluster_capacity, READ),
    Route("POST", "/v1/cluster/master-failover", Api.master_failover, ADMIN),
    Route("GET", "/v1/cluster/replica", Api.replica_checksum, READ),
    Route("GET", "/v1/nodes", Api.node_list, READ),
    Route("POST", "/v1/nodes", Api.node_add, ADMIN),
    Route("GET", "/v1/join-tokens", Api.join_token_list, ADMIN),
    Route("DELETE", "/v1/join-tokens/{node}", Api.join_token_revoke, ADMIN),
    Route("GET", "/v1/nodes/{name}", Api.node_info, READ),
    Route("DELETE", "/v1/nodes/{name}", Api.node_remove, ADMIN),
    Route("POST", "/v1/nodes/{name}/modify", Api.node_modify, ADMIN),
    Route("POST", "/v1/nodes/{name}/drain", Api.node_drain, WRITE),
    Route("POST", "/v1/nodes/{name}/undrain", Api.node_undrain, WRITE),
    Route("POST", "/v1/nodes/{name}/evacuate", Api.evacuate_node, WRITE),
    Route("POST", "/v1/nodes/{name}/tags", Api.node_tags, ADMIN),
    Route("POST", "/v1/nodes/{name}/query-storage", Api.node_query_storage, WRITE),
    Route("POST", "/v1/nodes/{name}/{action}", Api.node_evacuate, WRITE),
    Route("GET", "/v1/instances", Api.instance_list, READ),
    Route("POST", "/v1/instances", Api.instance_add, WRITE),
    Route("GET", "/v1/instances/{name}", Api.instance_info, READ),
    Route("DELETE", "/v1/instances/{name}", Api.instance_remove, WRITE),
    Route("POST", "/v1/instances/{name}/modify", Api.instance_modify, WRITE),
    Route("POST", "/v1/instances/{name}/tags", Api.instance_tags, WRITE),
    Route("POST", "/v1/instances/{name}/query-data", Api.instance_query_data, WRITE),
    Route("POST", "/v1/instances/{name}/moves", Api.instance_moves, WRITE),
    Route("POST", "/v1/instances/{name}/{action}", Api.instance_action, WRITE),
    Route("GET", "/v1/instances/{name}/console", Api.instance_console, WRITE),  # typing into it changes the guest
    Route("GET", "/v1/instances/{name}/vnc", Api.instance_vnc, WRITE),  # its password, for vnc=tcp
    Route("GET", "/v1/instances/{name}/vnc/stream", Api.instance_vnc_stream, WRITE),  # a keyboard and a mouse
    Route("GET", "/v1/networks", Api.network_list, READ),
    Route("POST", "/v1/networks", Api.network_add, ADMIN),
    Route("GET", "/v1/networks/{name}", Api.network_info, READ),
    Route("DELETE", "/v1/networks/{name}", Api.network_remove, ADMIN),
    Route("GET", "/v1/backups", Api.backup_list, READ),
    Route("POST", "/v1/backups", Api.backup_export, WRITE),
    Route("POST", "/v1/backups/import", Api.backup_import, WRITE),
    Route("POST", "/v1/backups/remove", Api.backup_remove, WRITE),
    Route("GET", "/v1/events", Api.event_list, READ),
    Route("GET", "/v1/jobs", Api.job_list, READ),
    Route("GET", "/v1/jobs/{id}", Api.job_info, READ),
    Route("POST", "/v1/jobs/{id}/cancel", Api.job_cancel, WRITE),
    Route("GET", "/v1/os", Api.os_list, READ),
    Route("GET", "/v1/users", Api.user_list, ADMIN),
    Route("POST", "/v1/users", Api.user_add, ADMIN),
    Route("DELETE", "/v1/users/{name}", Api.user_remove, ADMIN),
    Route("POST", "/v1/cluster/probe", Api.cluster_probe, WRITE),
    Route("POST", "/v1/cluster/rotate-secrets", Api.rotate_secrets, ADMIN),
    Route("GET", "/v1/join/ca", Api.join_ca, PUBLIC, "tls"),
    Route("POST", "/v1/join", Api.join, PUBLIC, "tls"),
    Route("POST", "/v1/node/orders", Api.node_order, NODE, "tls"),
    Route("POST", "/v1/node/drill", Api.drill_crash_self, NODE, "tls"),
    Route("GET", "/v1/node/qemus", Api.qemus_self, NODE, "tls"),
    Route("POST", "/v1/node/replica-outdated", Api.replica_outdated, NODE, "tls"),
    Route("POST", "/v1/node/replica-resumed", Api.replica_resumed, NODE, "tls"),
    Route("GET", clocks.CLOCK_PATH, Api.node_clock, NODE, "tls"),
    Route("POST", "/v1/cluster/join", Api.cluster_join, ADMIN, "local"),
    Route("GET", "/v1/cluster/replicas", Api.replicas, ADMIN, "local"),
    Route("POST", "/v1/drbd/fence-peer", Api.drbd_fence_peer, ADMIN, "local"),
    Route("POST", "/v1/drill/crash", Api.drill_crash, ADMIN, "local"),
    Route("POST", "/v1/drill/stale-order", Api.drill_stale_order, ADMIN, "local"),
    Route("GET", "/v1/drill/qemus", Api.drill_qemus, ADMIN, "local"),
)


def build_app(agent: Agent, *, node_site: bool) -> web.Application:
    """The local app (unix socket: root, no checks) and the TLS app (each route's access checked)."""
    api = Api(agent)
    roles: dict[AbstractRoute, str] = {}
    bodies: dict[AbstractRoute, dict[str, Any]] = {}
    here = agent.cfg.node_name if agent is not None else ""
    if agent is None:  # the route table alone (tests, the OpenAPI check)
        middlewares = [error_middleware]
    elif node_site:
        middlewares = [error_middleware, auth.middleware(agent.replica, agent.trust, roles, here)]
    else:
        middlewares = [error_middleware, auth.local_root(here)]
    middlewares.append(body_middleware(bodies, SCHEMAS))  # after the caller is known: strangers get a 401
    app = web.Application(middlewares=middlewares)
    for route in ROUTES:
        if route.site != ("tls" if node_site else "local") and route.site != "both":
            continue
        resource = app.router.add_resource(route.path)
        handler = functools.partial(route.handler, api)
        added = resource.add_route(route.method, handler)
        roles[added] = route.access
        schema = body_schema(route.path, route.method)
        if schema is not None:
            bodies[added] = schema
        if route.method == "GET":
            roles[resource.add_route("HEAD", handler)] = route.access
    return app
