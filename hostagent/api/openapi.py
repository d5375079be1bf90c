"""The OpenAPI 3 description of the agent API, served at /v1/openapi.json.

Kept next to the routes in api.py; a test checks both list the same paths.
"""

from __future__ import annotations

from typing import Any

from hostagent.node.reporter import AGENT_VERSION

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
    "/v1/cluster/fencing": {"post": _op("Arm or disarm fencing: {\"armed\": true|false}", body="ClusterFencing")},
    "/v1/cluster/alert/clear": {"post": _op("Clear the cluster alert (automatic failovers resume)")},
    "/v1/cluster/modify": {"post": _op("Set auto_failover (the instances' default), max_lost_nodes and "
                                       "failback_after_s (?job=1: as a job)", body="ClusterModify")},
    "/v1/cluster/simulate": {"get": _op("What the master would do if the nodes in ?fail=N1,N2 were lost now")},
    "/v1/cluster/htools": {"get": _op("The cluster in htools' text format (as hbal -m reads it through the RAPI)")},
    "/v1/cluster/capacity": {"get": _op("How many more instances of one size fit (?memory=MiB&disk=MiB&vcpus=N&"
                                        "disk_template=drbd|plain|file), N+1 kept, and what runs out first")},
    "/v1/cluster/balance": {"post": _op("Even out the nodes with hbal's moves (migrate, failover, replace-secondary) in "
                                        "one job; dry_run answers the plan and its scores only", "202",
                                        "ClusterBalance")},
    "/v1/cluster/join": {"post": _op("Join this (new) node to a cluster with a join token (local socket only)",
                                     body="ClusterJoin")},
    "/v1/cluster/master-failover": {"post": _op("Hand the master role to another candidate",
                                                body="MasterFailover")},
    "/v1/cluster/replica": {"get": _op("This node's config replica: revision and checksum")},
    "/v1/cluster/replicas": {"get": _op("Every node's replica revision and checksum (local socket only)")},
    "/v1/cluster/rotate-secrets": {"post": _op("Rotate the gossip key and every node certificate, and with "
                                                "{\"new_ca\": true} the cluster CA (a job)", "202",
                                                "RotateSecrets")},
    "/v1/cluster/probe": {"post": _op("Submit a job that changes nothing: is the master running jobs?", "202")},
    "/v1/drbd/fence-peer": {"post": _op("DRBD's fence-peer handler: have the master record the peer's copy out "
                                        "of date before this primary writes alone (local socket only)",
                                        body="DrbdFencePeer")},
    "/v1/drill/crash": {"post": _op("Drill: make another node's agent crash or freeze (local socket only)",
                                    body="DrillCrash")},
    "/v1/drill/stale-order": {"post": _op("Drill: send an order with an old token to every node; "
                                          "each should refuse it (local socket only)", body="StaleOrder")},
    "/v1/node/drill": {"post": _op("Drill: crash or freeze this agent (node certificates only)",
                                   body="DrillCrash")},
    "/v1/node/qemus": {"get": _op("The QEMUs running on this node now (node certificates only)")},
    "/v1/node/replica-outdated": {"post": _op("Master: record the secondary's copy of an instance out of date, "
                                              "asked by its primary before its guest goes on without it "
                                              "(node certificates only)", body="ReplicaOutdated")},
    "/v1/node/replica-resumed": {"post": _op("Master: the primary resumed a guest without its copy, and how long "
                                             "it was paused (node certificates only)", body="ReplicaResumed")},
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
    "/v1/nodes/{name}/modify": {"post": _op("Set candidate, drained, offline (?job=1: as a job)", body="NodeModify",
                                            params=("name",))},
    "/v1/nodes/{name}/drain": {"post": _op("Drain a node: no new instances are placed there (idempotent)",
                                           params=("name",))},
    "/v1/nodes/{name}/undrain": {"post": _op("Undrain a node: it takes new instances again (idempotent)",
                                             params=("name",))},
    "/v1/nodes/{name}/evacuate": {"post": _op("Drain the node and empty it in one job (migrate, fail over, move, "
                                              "replace-secondary); dry_run answers the plan only", "202",
                                              "NodeEvacuate", ("name",))},
    "/v1/nodes/{name}/query-storage": {"post": _op("A job whose result is the node's storage of one type (file, "
                                                   "lvm-vg), the asked fields row by row (Ganeti's RAPI)", "202",
                                                   "StorageQuery", ("name",))},
    "/v1/nodes/{name}/{action}": {"post": _op("migrate or failover: move every replicated primary instance "
                                              "off the node (one job each; ?job=1: one job that submits them)",
                                              body="NodeMoveAll",
                                              params=("name", "action"))},
    "/v1/instances": {"get": _op("All instances with their observed status"),
                      "post": _op("Add an instance (a job)", "202", "InstanceAdd")},
    "/v1/instances/{name}": {"get": _op("One instance", params=("name",)),
                             "delete": _op("Remove an instance and its disks (a job)", "202", params=("name",))},
    "/v1/instances/{name}/modify": {"post": _op("Change memory, vCPUs, hypervisor and OS parameters, restart "
                                                "priority, after, boot check, auto failover, backup schedule (a job)",
                                                "202", "InstanceModify", ("name",))},
    "/v1/instances/{name}/moves": {"post": _op("Moves of one instance (migrate, failover, replace-secondary) one "
                                               "after the other as one job, each switchover once its copy is in "
                                               "sync", "202", "InstanceMoves", ("name",))},
    "/v1/instances/{name}/query-data": {"post": _op("A job whose result is the instance's record, observed state "
                                                    "and hypervisor defaults (Ganeti's RAPI /info)", "202",
                                                    params=("name",))},
    "/v1/instances/{name}/{action}": {"post": _op("start, stop, reboot, migrate, fail over, move, replace-secondary, activate-disks, deactivate-disks, grow-disk, add-disk, "
                                                  "remove-disk, reinstall, rename an instance, create, revert or remove one of its snapshots, or restore it from a backup (a job)", "202",
                                                  "InstanceAction", ("name", "action"))},
    "/v1/instances/{name}/console": {"get": _op("Serial console as a websocket (binary frames)", "101",
                                                params=("name",), ok_desc="websocket upgrade")},
    "/v1/instances/{name}/vnc": {"get": _op("How to reach the VNC display: a unix socket on the node, or the "
                                            "node's address, port and password (vnc=tcp)", params=("name",))},
    "/v1/instances/{name}/vnc/stream": {"get": _op("VNC display (RFB) as a websocket (binary frames)", "101",
                                                   params=("name",), ok_desc="websocket upgrade")},
    "/v1/instances/{name}/tags": {"post": _op("Add and remove tags of an instance; answers its tags (?job=1: a job)",
                                              body="TagChange", params=("name",))},
    "/v1/nodes/{name}/tags": {"post": _op("Add and remove tags of a node; answers its tags (?job=1: a job)", body="TagChange",
                                          params=("name",))},
    "/v1/cluster/tags": {"post": _op("Add and remove tags of the cluster; answers its tags (?job=1: a job)", body="TagChange")},
    "/v1/tags": {"get": _op("Every tag of the cluster, its nodes and instances matching ?pattern=RE2 "
                            "(kind, name, tag)")},
    "/v1/networks": {"get": _op("Networks with their IPv4 pools: subnet, gateway, bridge, VLAN, free and used "
                                "counts"),
                     "post": _op("Add a network (IPv4): its pool hands out addresses to NICs", body="NetworkAdd")},
    "/v1/networks/{name}": {"get": _op("One network: its free address ranges, each used address and the NIC "
                                       "holding it", params=("name",)),
                            "delete": _op("Remove a network no NIC is on", params=("name",))},
    "/v1/backups": {"get": _op("Backups in the nodes' export directories, oldest first (?instance=, ?node=)"),
                    "post": _op("Export an instance into a backup (a job)", "202", "BackupExport")},
    "/v1/backups/import": {"post": _op("Create a new instance from a backup (a job)", "202", "BackupImport")},
    "/v1/backups/remove": {"post": _op("Delete a backup (a job)", "202", "BackupRemove")},
    "/v1/events": {"get": _op("The master's automatic decisions with their reasons (?instance=, ?node=, ?limit=)")},
    "/v1/jobs": {"get": _op("Jobs not yet archived, or ?archived=1 the archived ones; ?status=STATUS")},
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

_SIZE = {"anyOf": [{"type": "string", "maxLength": 32, "example": "1G"}, {"type": "integer", "minimum": 1}],
         "description": "512M, 1G, 1.5G, or a whole number of MiB"}
_NAME = {"type": "string", "maxLength": 253}
_CDROM = {"type": "string", "maxLength": 4096, "example": "/var/lib/corral/iso/debian-12.iso",
          "description": "an ISO file in the iso_dirs of the instance's node(s), or none (eject)"}
_PARAMS = {"type": "object", "maxProperties": 64,
           "additionalProperties": {"anyOf": [{"type": "string", "maxLength": 4096}, {"type": "number"},
                                              {"type": "boolean"}]}}

# One NIC as `instance add` takes it, and what `instance modify` may change of one.
_NIC: dict[str, Any] = {
    "mode": {"type": "string", "enum": ["user", "bridged"]}, "bridge": {"type": "string", "maxLength": 15},
    "mac": {"type": "string", "maxLength": 17}, "network": {"type": "string", "maxLength": 64},
    "ip": {"type": "string", "maxLength": 15, "description": "an IPv4 address of the network, 'pool' for its lowest "
                                                              "free one, '' or 'none' for none"},
    "vlan": {"type": "integer", "minimum": 1, "maximum": 4094, "nullable": True,
             "description": "bridged NICs: the tap's VLAN (default: the network's)"}}

_BACKUP_TO = {"type": "string", "maxLength": 4096, "example": "/var/lib/corral/export",
              "description": "NODE:DIR or DIR, an export directory of the node"}
_BACKUP_REF = {"type": "string", "maxLength": 1300, "description": "a backup: NODE:PATH or INSTANCE/ID "
                                                                  "(`corral backup list`)"}

# Request bodies. hostagent.api.bodycheck checks every request against these same schemas before
# its handler runs, so the document cannot promise what the agent refuses, or the reverse.
SCHEMAS: dict[str, Any] = {
    "Error": {"type": "object", "required": ["error", "message"],
              "properties": {"error": {"type": "string"}, "message": {"type": "string"}}},
    "JobAccepted": {"type": "object", "properties": {"data": {"type": "object", "properties": {"job_id": {"type": "integer"}}}}},
    "DrbdFencePeer": {"type": "object", "required": ["resource"], "additionalProperties": False,
                      "properties": {"resource": {"type": "string", "minLength": 1, "maxLength": 140}}},
    "ClusterInit": {"type": "object", "required": ["name"], "properties": {
        "name": _NAME, "hvparams": _PARAMS, "candidate_pool_size": {"type": "integer", "enum": [1, 3, 5]},
        "max_lost_nodes": {"type": "number", "minimum": 0}, "failback_after_s": {"type": "number", "minimum": 0}}},
    "ClusterFencing": {"type": "object", "required": ["armed"], "properties": {"armed": {"type": "boolean"}}},
    "ClusterModify": {"type": "object", "additionalProperties": False, "properties": {
        "auto_failover": {"type": "boolean"}, "max_lost_nodes": {"type": "integer", "minimum": 1, "nullable": True},
        "failback_after_s": {"type": "number", "minimum": 0}, "default_memory": _SIZE,
        "default_vcpus": {"type": "integer", "minimum": 1, "maximum": 255}, "require_owner": {"type": "boolean"},
        "job_archive_after_s": {"type": "number", "minimum": 1},
        "hvparams": {**_PARAMS, "additionalProperties": {"anyOf": [
            {"type": "string", "maxLength": 4096}, {"type": "number"}, {"type": "boolean"}], "nullable": True}},
        "candidate_pool_size": {"type": "integer", "enum": [1, 3, 5]},
        "sync_rate_mib_s": {"type": "number", "minimum": 0}, "restart_backoff_s": {"type": "number", "minimum": 0},
        "enabled_disk_templates": {"type": "array", "minItems": 1, "maxItems": 8,
                                   "items": {"type": "string", "maxLength": 16}},
        "policy": {"type": "object", "maxProperties": 8, "additionalProperties": {
            "anyOf": [{"type": "string", "maxLength": 32}, {"type": "integer"}], "nullable": True}},
        "backup_keep": {"type": "integer", "minimum": 1, "maximum": 1000,
                        "description": "scheduled backups an instance keeps unless it sets its own (default 7)"},
        "backup_to": {**_BACKUP_TO, "description": "where scheduled backups go unless an instance sets its own; "
                                                   "'' for the node's first export directory"},
        "backup_max_per_node": {"type": "integer", "minimum": 1, "maximum": 64,
                                "description": "export jobs the master's schedule runs at once per node (default 1)"}}},
    "RotateSecrets": {"type": "object", "properties": {"new_ca": {"type": "boolean"}}},
    "InstanceAdd": {"type": "object", "required": ["name", "os"], "properties": {
        "name": _NAME, "os": {"type": "string", "maxLength": 253}, "node": {"type": "string", "maxLength": 512,
                                                                            "nullable": True},
        "disk_template": {"type": "string", "enum": ["file", "mirror", "plain", "drbd"]},
        "memory": _SIZE, "vcpus": {"type": "integer", "minimum": 1},
        "disks": {"type": "array", "maxItems": 16, "items": {"type": "object", "properties": {
            "size": _SIZE, "format": {"type": "string", "enum": ["raw", "qcow2"]},
            "adopt": {"type": "string", "maxLength": 127, "description": "plain only: an LV in the node's volume "
                      "group that becomes this disk as it is (no size; removed with the instance)"}}}},
        "nics": {"type": "array", "maxItems": 8, "items": {"$ref": "#/components/schemas/Nic"}},
        "hvparams": _PARAMS, "osparams": {"type": "object", "maxProperties": 32, "additionalProperties": {
            "type": "string", "maxLength": 1024}}, "start": {"type": "boolean"},
        "owner": {"type": "string", "maxLength": 128}, "description": {"type": "string", "maxLength": 1024},
        "tags": {"type": "array", "maxItems": 64, "items": {"type": "string", "maxLength": 128}},
        "cdrom": _CDROM, **_RESTART_FIELDS}},
    "InstanceModify": {"type": "object", "description": "only the fields given change; memory, vcpus and "
                       "hvparams of a running instance take effect at its next start (pending)", "properties": {
        **_RESTART_FIELDS, "memory": _SIZE, "vcpus": {"type": "integer", "minimum": 1, "maximum": 255},
        "cdrom": {**_CDROM, "description": "a running instance with a drive gets it live; none ejects"},
        "hvparams": {**_PARAMS, "additionalProperties": {"anyOf": [
            {"type": "string", "maxLength": 4096}, {"type": "number"}, {"type": "boolean"}], "nullable": True}},
        "osparams": {"type": "object", "maxProperties": 32, "additionalProperties": {
            "type": "string", "maxLength": 1024, "nullable": True}},
        "owner": {"type": "string", "maxLength": 128}, "description": {"type": "string", "maxLength": 1024},
        "nics": {"type": "array", "maxItems": 16, "items": {"$ref": "#/components/schemas/NicChange"},
                 "description": "NIC changes in order (a stopped instance only, for now)"},
        "backup_schedule": {"type": "string", "maxLength": 16, "example": "daily",
                            "description": "the master backs the instance up by itself: hourly, daily, weekly, or "
                                           "a duration of at least 20 s such as 90s, 30m, 6h; none (or '') stops it"},
        "backup_keep": {"type": "integer", "minimum": 1, "maximum": 1000, "nullable": True,
                        "description": "scheduled backups kept in its export directory; null: the cluster's"},
        "backup_to": {**_BACKUP_TO, "description": "where its scheduled backups go; '': the cluster's default"},
        "restart": {"type": "boolean", "description": "restart now if changes are pending"},
        "force": {"type": "boolean", "description": "write a memory increase N+1 cannot promise"}}},
    "InstanceAction": {"type": "object", "description": "the fields each action takes (others are ignored)",
                       "properties": {
        "force": {"type": "boolean"}, "timeout_s": {"type": "number", "minimum": 0, "maximum": 3600,
                                                    "nullable": True},
        "type": {"type": "string", "enum": ["soft", "hard"]}, "node": {"type": "string", "maxLength": 253,
                                                                       "nullable": True},
        "max_bandwidth_mib_s": {"type": "number", "minimum": 1, "maximum": 100000, "nullable": True},
        "ignore_consistency": {"type": "boolean"}, "disk": {"type": "integer", "minimum": 0}, "size": _SIZE,
        "yes": {"type": "boolean", "description": "reinstall, snapshot-revert, restore: confirms that the disks' content "
                                                  "is destroyed"},
        "snapshot": {"type": "string", "maxLength": 63, "description": "snapshot-*: the snapshot's name"},
        "backup": _BACKUP_REF,
        "new_name": {"type": "string", "maxLength": 253, "description": "rename: the instance's new name"},
        "format": {"type": "string", "enum": ["raw", "qcow2"], "description": "add-disk: the new disk's format"},
        "destroy_data": {"type": "boolean", "description": "remove-disk: confirms the disk's data is deleted"},
        "os": {"type": "string", "maxLength": 253, "nullable": True}, "osparams": {
            "type": "object", "maxProperties": 32, "nullable": True,
            "additionalProperties": {"type": "string", "maxLength": 1024}}}},
    "Nic": {"type": "object", "additionalProperties": False, "properties": _NIC},
    "BackupExport": {"type": "object", "required": ["instance"], "additionalProperties": False, "properties": {
        "instance": _NAME, "to": {"type": "string", "maxLength": 1024, "nullable": True,
                                  "description": "NODE:DIR or DIR (on the instance's node), an export directory "
                                                 "of that node; default: its first"},
        "live": {"type": "boolean", "description": "copy a running guest as of one instant while it runs"},
        "compress": {"type": "boolean", "description": "compressed qcow2 images"},
        "rate_mib_s": {"type": "number", "minimum": 1, "maximum": 100000, "nullable": True,
                       "description": "at most this many MiB/s a disk, so the guest's disk keeps room; "
                                      "default: as fast as it goes"}}},
    "BackupImport": {"type": "object", "required": ["backup"], "additionalProperties": False,
                     "properties": {
        "backup": {**_BACKUP_REF, "description": "a backup (NODE:PATH or INSTANCE/ID), or with ganeti the NODE:DIR "
                   "`gnt-backup export` wrote"},
        "name": {**_NAME, "description": "the new instance (default with ganeti: the exported instance's name)"},
        "node": {"type": "string", "maxLength": 512, "nullable": True},
        "disk_template": {"type": "string", "enum": ["file", "mirror", "plain"], "nullable": True},
        "ganeti": {"type": "boolean", "description": "an export written by Ganeti's gnt-backup export"},
        "start": {"type": "boolean"}}},
    "BackupRemove": {"type": "object", "required": ["backup"], "additionalProperties": False,
                     "properties": {"backup": _BACKUP_REF}},
    "NicChange": {"type": "object", "required": ["action"], "additionalProperties": False, "properties": {
        "action": {"type": "string", "enum": ["add", "remove", "modify"]},
        "index": {"type": "integer", "minimum": 0, "description": "remove, modify: which NIC (0 is the first)"},
        **_NIC}},
    "NetworkAdd": {"type": "object", "required": ["name", "subnet"], "additionalProperties": False, "properties": {
        "name": {"type": "string", "maxLength": 64}, "subnet": {"type": "string", "maxLength": 43,
                                                                "example": "192.0.2.0/24"},
        "gateway": {"type": "string", "maxLength": 15, "nullable": True},
        "mac_prefix": {"type": "string", "maxLength": 8, "example": "aa:00:00", "nullable": True},
        "vlan": {"type": "integer", "minimum": 1, "maximum": 4094, "nullable": True},
        "bridge": {"type": "string", "maxLength": 15, "nullable": True},
        "tags": {"type": "array", "maxItems": 64, "items": {"type": "string", "maxLength": 128}}}},
    "ClusterJoin": {"type": "object", "required": ["address", "token"], "properties": {
        "address": {"type": "string", "maxLength": 300, "example": "192.0.2.11:7947"},
        "token": {"type": "string", "maxLength": 300}}},
    "MasterFailover": {"type": "object", "properties": {"to": {"type": "string", "maxLength": 253,
                                                                "nullable": True}}},
    "Join": {"type": "object", "required": ["token", "name", "address", "csr", "ports"], "properties": {
        "token": {"type": "string", "maxLength": 300}, "name": _NAME, "address": {"type": "string", "maxLength": 64},
        "csr": {"type": "string", "maxLength": 16384}, "ports": {
            "type": "object", "required": ["api", "gossip", "etcd_client", "etcd_peer"],
            "additionalProperties": {"type": "integer", "minimum": 1, "maximum": 65535}}}},
    "NodeAdd": {"type": "object", "required": ["name", "address"], "properties": {
        "name": _NAME, "address": {"type": "string", "maxLength": 64}, "ttl_s": {"type": "number"}}},
    "NodeModify": {"type": "object", "additionalProperties": False, "properties": {
        "candidate": {"type": "boolean"}, "drained": {"type": "boolean"}, "offline": {"type": "boolean"}}},
    "ClusterBalance": {"type": "object", "additionalProperties": False, "properties": {
        "dry_run": {"type": "boolean"}, "max_moves": {"type": "integer", "minimum": 0, "maximum": 100000},
        "ignore_soft_errors": {"type": "boolean"}}},
    "NodeEvacuate": {"type": "object", "properties": {"dry_run": {"type": "boolean"}}},
    "InstanceMoves": {"type": "object", "required": ["steps"], "properties": {
        "steps": {"type": "array", "minItems": 1, "maxItems": 8, "items": {
            "type": "object", "required": ["action"], "additionalProperties": False, "properties": {
                "action": {"type": "string", "enum": ["migrate", "failover", "replace-secondary"]},
                "node": {"type": "string", "maxLength": 253}}}}}},
    "StorageQuery": {"type": "object", "required": ["storage_type", "fields"], "properties": {
        "storage_type": {"type": "string", "maxLength": 32, "description": "file or lvm-vg"},
        "fields": {"type": "array", "maxItems": 16, "items": {"type": "string", "maxLength": 32}}}},
    "NodeMoveAll": {"type": "object", "properties": {"ignore_consistency": {"type": "boolean"},
                                                     "node": {"type": "string", "maxLength": 253,
                                                              "description": "with ?job=1, migrate: the target"}}},
    "UserAdd": {"type": "object", "required": ["name", "role"], "properties": {
        "name": _NAME, "role": {"type": "string", "maxLength": 32, "example": "read",
                                "description": "read, write or admin"}}},
    "DrillCrash": {"type": "object", "required": ["mode"], "properties": {
        "node": {"type": "string", "maxLength": 253}, "mode": {"type": "string", "maxLength": 32},
        "freeze_s": {"type": "number", "minimum": 0, "maximum": 3600,
                     "description": "seconds a freeze or an isolation lasts, or a power-off keeps the node down"}}},
    "StaleOrder": {"type": "object", "required": ["token"], "properties": {"token": {"type": "string",
                                                                                      "maxLength": 200}}},
    "Order": {"type": "object", "required": ["op", "args", "token"], "properties": {
        "op": {"type": "string", "maxLength": 100}, "args": {"type": "object"},
        "token": {"type": "string", "maxLength": 200}}},
    "TagChange": {"type": "object", "properties": {
        "add": {"type": "array", "maxItems": 64, "items": {"type": "string", "maxLength": 128}},
        "remove": {"type": "array", "maxItems": 64, "items": {"type": "string", "maxLength": 128}}}},
    "ReplicaOutdated": {"type": "object", "required": ["name"], "properties": {
        "name": _NAME, "gen": {"type": "integer", "minimum": 0}, "reason": {"type": "string", "maxLength": 1000}}},
    "ReplicaResumed": {"type": "object", "required": ["name"], "properties": {
        "name": _NAME, "gen": {"type": "integer", "minimum": 0}, "at": {"type": "number", "minimum": 0},
        "pause_ms": {"type": "integer", "minimum": 0}, "reason": {"type": "string", "maxLength": 1000}}},
}


def body_schema(path: str, method: str) -> dict[str, Any] | None:
    """The schema a route's request body must match, None for routes that read no body."""
    body = PATHS.get(path, {}).get(method.lower(), {}).get("requestBody")
    return None if body is None else body["content"]["application/json"]["schema"]


def openapi_document() -> dict[str, Any]:
    return {"openapi": "3.0.3",
            "info": {"title": "Corral agent API", "version": AGENT_VERSION,
                     "description": "Reads come from the node's config replica (see `replica` in every "
                                    "answer); changes are jobs run by the master."},
            "paths": PATHS, "components": {"schemas": SCHEMAS}}
