"""Ganeti's instance actions (RAPI `/2/instances/NAME/...`) as Corral's `/v1` instance actions: which action,
with which fields, from Ganeti's query and body. Pure; what Corral cannot honour is refused with the reason
(400), and the /v1 checks run after (hostagent.api.instances.action_params), before any job exists.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hostagent.errors import BadRequest

# Ganeti's action (HTTP method, path under /2/instances/NAME/) -> Corral's /v1 action
ACTIONS = {("PUT", "startup"): "start", ("PUT", "shutdown"): "stop", ("POST", "reboot"): "reboot",
           ("PUT", "migrate"): "migrate", ("PUT", "failover"): "failover",
           ("PUT", "activate-disks"): "activate-disks", ("PUT", "deactivate-disks"): "deactivate-disks",
           ("POST", "reinstall"): "reinstall",
           ("PUT", "rename"): "rename", ("POST", "replace-disks"): "replace-secondary",
           ("POST", "disk/{disk}/grow"): "grow-disk"}


def v1_body(corral: str, query: Mapping[str, str], body: Mapping[str, Any], inst: Mapping[str, Any],
            disk: str = "") -> dict[str, Any]:
    """The /v1 action body for Ganeti's request (`inst`: the instance's record, for sizes and names)."""
    name = inst["name"]
    if corral == "reboot":
        kind = query.get("type", "soft")
        if kind not in ("soft", "hard", "full"):
            raise BadRequest(f"reboot type {kind!r} is not one of soft, hard, full")
        return {"type": "soft" if kind == "soft" else "hard"}
    if corral == "stop":
        return {"timeout_s": body["timeout"]} if body.get("timeout") is not None else {}
    if corral == "failover":
        return {"ignore_consistency": True} if body.get("ignore_consistency") else {}
    if corral == "migrate":
        if body.get("mode") == "non-live":
            raise BadRequest(f"migration mode 'non-live' is a failover in Corral: PUT /2/instances/{name}/failover")
        return {"node": body["target_node"]} if body.get("target_node") else {}
    if corral == "reinstall":
        if body.get("start") is False:
            raise BadRequest("start false: Corral's reinstall starts the instance again if it ran before")
        return {"yes": True, **({"os": body["os"]} if body.get("os") else {}),
                **({"osparams": body["osparams"]} if body.get("osparams") else {})}
    if corral == "rename":
        return {"new_name": body.get("new_name")}
    if corral == "replace-secondary":
        mode, node = query.get("mode", ""), query.get("remote_node") or body.get("remote_node")
        if mode != "replace_new_secondary" or not node:
            raise BadRequest(f"replace-disks mode {mode!r}: Corral replaces a secondary as a whole, "
                             "mode=replace_new_secondary&remote_node=NODE (its copy is made anew there)")
        return {"node": node}
    if corral == "grow-disk":
        return _grow(body, inst, disk)
    return {}


def _grow(body: Mapping[str, Any], inst: Mapping[str, Any], disk: str) -> dict[str, Any]:
    if not disk.isdigit() or int(disk) >= len(inst["disks"]):
        raise BadRequest(f"instance '{inst['name']}' has disks 0-{len(inst['disks']) - 1}, not {disk!r}")
    amount = body.get("amount")
    if isinstance(amount, bool) or not isinstance(amount, int) or amount < 1:
        raise BadRequest(f"amount must be a whole number of MiB, at least 1, not {amount!r}")
    current = int(inst["disks"][int(disk)]["size_mib"])
    return {"disk": int(disk), "size": f"{amount if body.get('absolute') else current + amount}M"}
