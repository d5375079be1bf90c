"""The agent's HTTP API (/v1): the composed handler class and the route table of both sites.

The handlers live in one module per resource group (hostagent.api_cluster,
api_nodes, api_instances, api_internal) on the shared ground of
hostagent.api_base, which also explains how reads, changes and errors work.
"""

from __future__ import annotations

from aiohttp import web

from hostagent import auth, clocks
from hostagent.agent import Agent
from hostagent.api_base import error_middleware
from hostagent.api_cluster import ClusterRoutes
from hostagent.api_instances import InstanceRoutes
from hostagent.api_internal import InternalRoutes
from hostagent.api_nodes import NodeRoutes
from hostagent.openapi import openapi_document


class Api(ClusterRoutes, NodeRoutes, InstanceRoutes, InternalRoutes):
    """Every handler on one object, so the route table binds them all from one instance.

    The groups share only ApiBase's state (the agent) and helpers, so their
    order here does not matter: no handler name is defined twice.
    """

    async def openapi(self, request: web.Request) -> web.Response:
        return web.json_response(openapi_document())


def build_app(agent: Agent, *, node_site: bool) -> web.Application:
    """The local app (unix socket) and the TLS app; only the TLS app takes orders and joins."""
    api = Api(agent)
    middlewares = [error_middleware] + ([auth.middleware(agent.replica)] if node_site and agent is not None else [])
    app = web.Application(middlewares=middlewares)
    r = app.router
    r.add_get("/v1/openapi.json", api.openapi)
    r.add_get("/v1/cluster", api.cluster_info)
    r.add_post("/v1/cluster/init", api.cluster_init)
    r.add_get("/v1/cluster/verify", api.cluster_verify)
    r.add_post("/v1/cluster/repair", api.cluster_repair)
    r.add_post("/v1/cluster/fencing", api.cluster_fencing)
    r.add_post("/v1/cluster/alert/clear", api.cluster_alert_clear)
    r.add_post("/v1/cluster/modify", api.cluster_modify)
    r.add_get("/v1/cluster/simulate", api.cluster_simulate)
    r.add_post("/v1/cluster/master-failover", api.master_failover)
    r.add_get("/v1/cluster/replica", api.replica_checksum)
    r.add_get("/v1/nodes", api.node_list)
    r.add_post("/v1/nodes", api.node_add)
    r.add_get("/v1/nodes/{name}", api.node_info)
    r.add_delete("/v1/nodes/{name}", api.node_remove)
    r.add_post("/v1/nodes/{name}/modify", api.node_modify)
    r.add_post("/v1/nodes/{name}/drain", api.node_drain)
    r.add_post("/v1/nodes/{name}/undrain", api.node_undrain)
    r.add_post("/v1/nodes/{name}/evacuate", api.evacuate_node)
    r.add_post("/v1/nodes/{name}/{action}", api.node_evacuate)
    r.add_get("/v1/instances", api.instance_list)
    r.add_post("/v1/instances", api.instance_add)
    r.add_get("/v1/instances/{name}", api.instance_info)
    r.add_delete("/v1/instances/{name}", api.instance_remove)
    r.add_post("/v1/instances/{name}/modify", api.instance_modify)
    r.add_post("/v1/instances/{name}/{action}", api.instance_action)
    r.add_get("/v1/instances/{name}/console", api.instance_console)
    r.add_get("/v1/events", api.event_list)
    r.add_get("/v1/jobs", api.job_list)
    r.add_get("/v1/jobs/{id}", api.job_info)
    r.add_post("/v1/jobs/{id}/cancel", api.job_cancel)
    r.add_get("/v1/os", api.os_list)
    r.add_get("/v1/users", api.user_list)
    r.add_post("/v1/users", api.user_add)
    r.add_delete("/v1/users/{name}", api.user_remove)
    r.add_post("/v1/cluster/probe", api.cluster_probe)
    r.add_post("/v1/cluster/rotate-secrets", api.rotate_secrets)
    if node_site:
        r.add_get("/v1/join/ca", api.join_ca)
        r.add_post("/v1/join", api.join)
        r.add_post("/v1/node/orders", api.node_order)
        r.add_post("/v1/node/drill", api.drill_crash_self)
        r.add_get("/v1/node/qemus", api.qemus_self)
        r.add_post("/v1/node/replica-outdated", api.replica_outdated)
        r.add_post("/v1/node/replica-resumed", api.replica_resumed)
        r.add_get(clocks.CLOCK_PATH, api.node_clock)
    else:
        r.add_post("/v1/cluster/join", api.cluster_join)
        r.add_get("/v1/cluster/replicas", api.replicas)
        r.add_post("/v1/drill/crash", api.drill_crash)
        r.add_post("/v1/drill/stale-order", api.drill_stale_order)
        r.add_get("/v1/drill/qemus", api.drill_qemus)
    return app
