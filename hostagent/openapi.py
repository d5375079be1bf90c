"""The OpenAPI 3 description of the agent API, served at /v1/openapi.json.

Kept next to the routes in api.py; a test checks both list the same paths.
"""

from __future__ import annotations

from typing import Any

from hostagent.reporter import AGENT_VERSION

_ERR = {"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
_JOB = {"description": "job accepted", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/JobAccepted"}}}}


def _op(summary: str, ok: str = "200", body: str | None = None, params: tuple[str, ...] = (),
        ok_desc: str = "answer from the local config replica") -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {ok: _JOB if ok == "202" else {"description": ok_desc},
                                                            "4XX": _ERR, "5XX": _ERR}}
    if body:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{body}"}}}}
    if params:
        op["parameters"] = [{"name": p, "in": "path", "required": True, "schema": {"type": "string"}} for p in params]
    return op


PATHS: dict[str, dict[str, Any]] = {
    "/v1/openapi.json": {"get": _op("This document", ok_desc="OpenAPI document")},
    "/v1/cluster": {"get": _op("Cluster name, master, fencing token, candidates")},
    "/v1/cluster/init": {"post": _op("Create a new cluster with this node as its first master", "202", "ClusterInit")},
    "/v1/cluster/verify": {"get": _op("Findings of a cluster-wide consistency check")},
    "/v1/cluster/repair": {"post": _op("The master fixes what is safe among verify's findings and answers "
                                       "what it did about each", ok_desc="one entry per finding")},
    "/v1/node/clock": {"get": _op("This node's wall clock, for verify's clock skew check "
                                  "(node certificates only)", ok_desc="node and time")},
    "/v1/cluster/fencing": {"post": _op("Arm or disarm fencing: {\"armed\": true|false}")},
    "/v1/cluster/alert/clear": {"post": _op("Clear the cluster alert (automatic failovers resume)")},
    "/v1/cluster/modify": {"post": _op("Set auto_failover (the instances' default) and max_lost_nodes")},
    "/v1/cluster/simulate": {"get": _op("What the master would do if the nodes in ?fail=N1,N2 were lost now")},
    "/v1/cluster/join": {"post": _op("Join this (new) node to a cluster with a join token (local socket only)",
                                     body="ClusterJoin")},
    "/v1/cluster/master-failover": {"post": _op("Hand the master role to another candidate",
                                                body="MasterFailover")},
    "/v1/cluster/replica": {"get": _op("This node's config replica: revision and checksum")},
    "/v1/cluster/replicas": {"get": _op("Every node's replica revision and checksum (local socket only)")},
    "/v1/cluster/rotate-secrets": {"post": _op("Rotate the gossip key and every node certificate, and with "
                                                "{\"new_ca\": true} the cluster CA (a job)", "202")},
    "/v1/cluster/probe": {"post": _op("Submit a job that changes nothing: is the master running jobs?", "202")},
    "/v1/drill/crash": {"post": _op("Drill: make another node's agent crash or freeze (local socket only)",
                                    body="DrillCrash")},
    "/v1/drill/stale-order": {"post": _op("Drill: send an order with an old token to every node; "
                                          "each should refuse it (local socket only)", body="StaleOrder")},
    "/v1/node/drill": {"post": _op("Drill: crash or freeze this agent (node certificates only)",
                                   body="DrillCrash")},
    "/v1/node/qemus": {"get": _op("The QEMUs running on this node now (node certificates only)")},
    "/v1/node/replica-outdated": {"post": _op("Master: record the secondary's copy of an instance out of date, "
                                              "asked by its primary before its guest goes on without it "
                                              "(node certificates only)")},
    "/v1/node/replica-resumed": {"post": _op("Master: the primary resumed a guest without its copy, and how long "
                                             "it was paused (node certificates only)")},
    "/v1/drill/qemus": {"get": _op("Drill: the QEMUs running on node ?node=NAME now, asked of it directly "
                                   "(local socket only)")},
    "/v1/join/ca": {"get": _op("The cluster CA certificate (public; pinned by join tokens)", ok_desc="PEM")},
    "/v1/join": {"post": _op("Admit a node presenting a join token (no client certificate needed)",
                             body="Join", ok_desc="the node's certificate and the cluster secrets")},
    "/v1/nodes": {"get": _op("All nodes with role, status, resources, instance counts"),
                  "post": _op("Issue a one-time join token for a new node", body="NodeAdd")},
    "/v1/join-tokens": {"get": _op("Join tokens not yet swept away: node, address, created, expires, state "
                                   "(valid or expired); never the secret")},
    "/v1/join-tokens/{node}": {"delete": _op("Revoke every join token for a node", params=("node",))},
    "/v1/nodes/{name}": {"get": _op("One node", params=("name",)),
                         "delete": _op("Remove a node (?force=1 even with instances)", params=("name",))},
    "/v1/nodes/{name}/modify": {"post": _op("Set candidate, drained, offline", body="NodeModify",
                                            params=("name",))},
    "/v1/nodes/{name}/drain": {"post": _op("Drain a node: no new instances are placed there (idempotent)",
                                           params=("name",))},
    "/v1/nodes/{name}/undrain": {"post": _op("Undrain a node: it takes new instances again (idempotent)",
                                             params=("name",))},
    "/v1/nodes/{name}/evacuate": {"post": _op("Drain the node and empty it in one job (migrate, fail over, move, "
                                              "replace-secondary); dry_run answers the plan only", "202",
                                              "NodeEvacuate", ("name",))},
    "/v1/nodes/{name}/{action}": {"post": _op("migrate or failover: move every replicated primary instance "
                                              "off the node (one job each)", params=("name", "action"))},
    "/v1/instances": {"get": _op("All instances with their observed status"),
                      "post": _op("Add an instance (a job)", "202", "InstanceAdd")},
    "/v1/instances/{name}": {"get": _op("One instance", params=("name",)),
                             "delete": _op("Remove an instance and its disks (a job)", "202", params=("name",))},
    "/v1/instances/{name}/modify": {"post": _op("Change restart priority, after, boot check, auto failover (a job)",
                                                "202", "InstanceModify", ("name",))},
    "/v1/instances/{name}/{action}": {"post": _op("start, stop, reboot, migrate or fail over an instance (a job)", "202",
                                                  "InstanceAction", ("name", "action"))},
    "/v1/instances/{name}/console": {"get": _op("Serial console as a websocket (binary frames)", "101",
                                                params=("name",), ok_desc="websocket upgrade")},
    "/v1/events": {"get": _op("The master's automatic decisions with their reasons (?instance=, ?node=, ?limit=)")},
    "/v1/jobs": {"get": _op("All jobs")},
    "/v1/jobs/{id}": {"get": _op("One job with its log and progress", params=("id",))},
    "/v1/jobs/{id}/cancel": {"post": _op("Cancel a job that has not started yet", params=("id",))},
    "/v1/os": {"get": _op("OS definitions and images available on this node")},
    "/v1/users": {"get": _op("API users and their roles"),
                  "post": _op("Add an API user; the answer holds its token, shown once", body="UserAdd")},
    "/v1/users/{name}": {"delete": _op("Remove an API user", params=("name",))},
    "/v1/node/orders": {"post": _op("Order from the master to this node (node certificates only)",
                                    body="Order", ok_desc="order result")},
}

# Instance fields that say how the cluster keeps it running; `instance add` and `instance modify` take them.
_RESTART_FIELDS: dict[str, Any] = {
    "priority": {"type": "string", "enum": ["critical", "high", "normal", "low"]},
    "after": {"type": "array", "items": {"type": "string"},
              "description": "instances that must run (and have booted) before this one is restarted"},
    "boot_pattern": {"type": "string", "example": "login:",
                     "description": "regex a console line of each boot must match; empty: no check"},
    "boot_timeout_s": {"type": "number", "nullable": True, "minimum": 0, "exclusiveMinimum": True,
                       "maximum": 3600,
                       "description": "seconds a boot may take to print it (default 120)"},
    "auto_failover": {"type": "boolean", "nullable": True, "description": "null: the cluster's default"},
}

SCHEMAS: dict[str, Any] = {
    "Error": {"type": "object", "required": ["error", "message"],
              "properties": {"error": {"type": "string"}, "message": {"type": "string"}}},
    "JobAccepted": {"type": "object", "properties": {"data": {"type": "object", "properties": {"job_id": {"type": "integer"}}}}},
    "ClusterInit": {"type": "object", "required": ["name"],
                    "properties": {"name": {"type": "string"}, "hvparams": {"type": "object"}}},
    "InstanceAdd": {"type": "object", "required": ["name", "os"], "properties": {
        "name": {"type": "string"}, "os": {"type": "string"}, "node": {"type": "string"},
        "disk_template": {"type": "string", "enum": ["file"]},
        "memory": {"type": "string", "example": "512M"}, "vcpus": {"type": "integer"},
        "disks": {"type": "array", "items": {"type": "object", "properties": {
            "size": {"type": "string", "example": "1G"}, "format": {"type": "string", "enum": ["raw", "qcow2"]}}}},
        "nics": {"type": "array", "items": {"type": "object", "properties": {
            "mode": {"type": "string", "enum": ["user", "bridged"]}, "bridge": {"type": "string"},
            "mac": {"type": "string"}}}},
        "hvparams": {"type": "object"}, "osparams": {"type": "object"}, "start": {"type": "boolean"},
        **_RESTART_FIELDS}},
    "InstanceModify": {"type": "object", "description": "only the fields given change",
                       "properties": _RESTART_FIELDS},
    "InstanceAction": {"type": "object", "properties": {
        "force": {"type": "boolean"}, "timeout_s": {"type": "number"},
        "type": {"type": "string", "enum": ["soft", "hard"]}}},
    "ClusterJoin": {"type": "object", "required": ["address", "token"], "properties": {
        "address": {"type": "string", "example": "192.0.2.11:7947"}, "token": {"type": "string"}}},
    "MasterFailover": {"type": "object", "properties": {"to": {"type": "string"}}},
    "Join": {"type": "object", "required": ["token", "name", "address", "csr", "ports"], "properties": {
        "token": {"type": "string"}, "name": {"type": "string"}, "address": {"type": "string"},
        "csr": {"type": "string"}, "ports": {"type": "object"}}},
    "NodeAdd": {"type": "object", "required": ["name", "address"], "properties": {
        "name": {"type": "string"}, "address": {"type": "string"}, "ttl_s": {"type": "number"}}},
    "NodeModify": {"type": "object", "properties": {
        "candidate": {"type": "boolean"}, "drained": {"type": "boolean"}, "offline": {"type": "boolean"}}},
    "NodeEvacuate": {"type": "object", "properties": {"dry_run": {"type": "boolean"}}},
    "UserAdd": {"type": "object", "required": ["name", "role"], "properties": {
        "name": {"type": "string"}, "role": {"type": "string", "enum": ["read", "write", "admin"]}}},
    "DrillCrash": {"type": "object", "required": ["mode"], "properties": {
        "node": {"type": "string"}, "mode": {"type": "string", "enum": ["kill", "freeze"]},
        "freeze_s": {"type": "number"}}},
    "StaleOrder": {"type": "object", "required": ["token"], "properties": {"token": {"type": "string"}}},
    "Order": {"type": "object", "required": ["op", "args", "token"], "properties": {
        "op": {"type": "string"}, "args": {"type": "object"}, "token": {"type": "string"}}},
}


def openapi_document() -> dict[str, Any]:
    return {"openapi": "3.0.3",
            "info": {"title": "Corral agent API", "version": AGENT_VERSION,
                     "description": "Reads come from the node's config replica (see `replica` in every "
                                    "answer); changes are jobs run by the master."},
            "paths": PATHS, "components": {"schemas": SCHEMAS}}
