"""`corral drill node-loss NODE`: lose a node on purpose and check that its instances came back safely.

`isolate` cuts the node off from the cluster (its agent stops renewing its
lease, reporting, gossiping and taking orders; its etcd member stops), so it
must fence itself; after `--duration` it is connected again. `kill` (test
and demo clusters, whose agents are supervised) kills every process of the
node, QEMUs included, as a power cut would; the supervisor brings the agent
back. This node's agent observes; a target that is master hands the role
over first (not measured).

Measured from the order on: `lease_expired_s` (the node's lease gone in
etcd) and per auto-failover instance of the node `recovered_s` (running on
another node). Checked: every such instance recovered; none ever ran on two
nodes (in isolate mode the cut-off node is asked directly, every poll, which
QEMUs it runs); the node came back with its lease and reports; replicas agree.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from cli.client import AgentClient, ApiError
from cli.drill import DrillAborted, _rejoined, _replicas_agree, _wait
from cli.render import table

POLL_S = 0.2
MAX_ISOLATE_S = 120.0


def _guarded(client: AgentClient, node: str) -> tuple[list[str], float]:
    """The running instances the node will stop when cut off, and its lease time."""
    info = client.get(f"/v1/nodes/{node}")["data"]
    fencing = info.get("fencing") or {}
    if not fencing.get("armed"):
        raise DrillAborted(f"node '{node}' reports fencing disarmed (or has not reported yet): nothing would fail "
                           "over; `corral cluster fencing arm` first")
    return list(fencing.get("guarded") or []), float(fencing.get("lease_ttl_s") or 20)


def _node_qemus(client: AgentClient, node: str) -> set[str] | None:
    try:
        return set(client.get(f"/v1/drill/qemus?node={node}")["data"]["qemus"])
    except ApiError:
        return None  # not answering (killed, or restarting)


def _hand_over_if_master(client: AgentClient, node: str, timeout_s: float) -> None:
    info = client.get("/v1/cluster")["data"]
    if info["this_node"] == node:
        raise DrillAborted(f"node '{node}' is the node this command runs on; run the drill from another node")
    if info["master"] != node:
        return
    print(f"  '{node}' is the master: handing the role to another candidate first", file=sys.stderr, flush=True)
    client.post("/v1/cluster/master-failover", {})
    _wait("another node to become master", timeout_s,
          lambda: (c := client.get("/v1/cluster")["data"])["master"] not in (None, node) and c["quorum"]["ok"])


def node_loss(client: AgentClient, node: str, mode: str, duration_s: float | None, as_json: bool,
              timeout_s: float = 180.0) -> int:
    try:
        report = _run(client, node, mode, duration_s, timeout_s, as_json)
    except DrillAborted as exc:
        print(f"error: drill stopped: {exc}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        print(table(["INSTANCE", "FROM", "TO", "RECOVERED"],
                    [[i["name"], i["from"], i["to"] or "-", f"{i['recovered_s']}s" if i["recovered_s"] is not None
                      else "NOT RECOVERED"] for i in report["instances"]]))
        lease = report["lease_expired_s"]
        print(f"lease of '{node}' expired after {lease} s" if lease is not None else f"lease of '{node}' never expired")
        print("all checks passed" if not report["failures"] else "FAILED: " + "; ".join(report["failures"]))
    return 0 if not report["failures"] else 1


def _run(client: AgentClient, node: str, mode: str, duration_s: float | None, timeout_s: float,
         as_json: bool) -> dict[str, Any]:
    _hand_over_if_master(client, node, timeout_s)
    guarded, ttl = _guarded(client, node)
    before = {i["name"]: i for i in client.get("/v1/instances")["data"]}
    moving = sorted(n for n in guarded if before.get(n, {}).get("status") == "running")
    duration = duration_s if duration_s is not None else min(MAX_ISOLATE_S, ttl + 40)
    if not as_json:
        print(f"{mode} '{node}'" + (f" for {duration:.0f} s" if mode == "isolate" else "")
              + f"; its auto-failover instances: {', '.join(moving) or 'none'}", flush=True)
    start_wall, t0 = time.time(), time.monotonic()
    client.post("/v1/drill/crash", {"node": node, "mode": "isolate" if mode == "isolate" else "power-off",
                                    "freeze_s": duration})
    lease_expired: float | None = None
    recovered: dict[str, tuple[str, float]] = {}
    double: set[str] = set()
    deadline = t0 + timeout_s
    while time.monotonic() < deadline and (lease_expired is None or len(recovered) < len(moving)):
        rows = {r["name"]: r for r in client.get("/v1/nodes")["data"]}
        if lease_expired is None and rows.get(node, {}).get("lease") == "expired":
            lease_expired = time.monotonic() - t0
        here = _node_qemus(client, node) if mode == "isolate" else set()
        for inst in client.get("/v1/instances")["data"]:
            name = inst["name"]
            if name in moving and inst["primary_node"] != node and inst["status"] == "running":
                recovered.setdefault(name, (inst["primary_node"], time.monotonic() - t0))
                if here and name in here:
                    double.add(name)
        time.sleep(POLL_S)
    back = _rejoined(client, node, start_wall, timeout_s)
    still = _node_qemus(client, node) or set()
    double |= {n for n in recovered if n in still}
    agree, _ = _replicas_agree(client, 30)
    instances = [{"name": n, "from": node, "to": recovered.get(n, (None, None))[0],
                  "recovered_s": round(recovered[n][1], 2) if n in recovered else None} for n in moving]
    failures = []
    if lease_expired is None:
        failures.append(f"the lease of '{node}' never expired")
    missing = [n for n in moving if n not in recovered]
    if missing:
        failures.append(f"not running elsewhere: {', '.join(missing)}")
    if double:
        failures.append(f"ran on two nodes at once: {', '.join(sorted(double))}")
    if not back:
        failures.append(f"'{node}' did not come back (lease and reports)" + (" (is its agent supervised?)"
                                                                          if mode == "kill" else ""))
    if not agree:
        failures.append("the nodes' config replicas differ")
    return {"node": node, "mode": mode, "lease_expired_s": None if lease_expired is None else round(lease_expired, 2),
            "instances": instances, "rejoined": back, "replicas_agree": agree, "double_run": sorted(double),
            "failures": failures, "passed": not failures}
