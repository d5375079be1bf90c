"""`corral drill node-loss NODE`: lose a node on purpose and check that its instances came back safely.

`isolate` cuts the node off from the cluster (its agent stops renewing its
lease, reporting, gossiping and taking orders; its etcd member stops), so it
must fence itself; after `--duration` it is connected again. `kill` (test
and demo clusters) kills every process of the node, QEMUs included, as a
power cut would, and keeps it down for `--duration`: the supervisor restarts
the agent at once, but the agent waits out the drill's hold before it starts
(hostagent/node/holddown.py), as a machine without power would; then the node
comes back. This node's agent observes; a target that is master hands the
role over first (not measured).

Measured from the order on, by polling this node's replica (`Watch`, pure):
when the node stopped answering and answered again (kill), when its lease
expired in etcd, when each auto-failover instance of the node ran on another
node, and when the node rejoined (lease held and a report made after the
lease had expired). Checked: the lease expired; no instance ran elsewhere
before that; every such instance recovered elsewhere exactly once (one
fail-over event, then the same node and QEMU until the end) and never ran
on two nodes (the lost node is asked directly which QEMUs it runs, whenever
it answers); the node stayed away for the whole duration and then came back;
its other running instances run again; the replicas agree.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from cli.client import AgentClient, ApiError
from cli.common import Context, Subparsers, command
from cli.drillkit import DrillAborted, replicas_agree, wait_for
from cli.render import table

POLL_S = 0.2
ASK_KILLED_EVERY_S = 1.0  # a killed node is asked directly this often (each try may wait for a connect)
MAX_DURATION_S = 120.0
SETTLE_S = 5.0  # after the node is back: watch a little longer that nothing moves again
EARLY_TOLERANCE_S = 1.0  # the node's clock and ours may tick at slightly different rates


def add_commands(d: Subparsers) -> None:
    s = command(d, "node-loss", from_args, "cut a node off (or kill it) and check that its auto-failover "
                                           "instances came back elsewhere, never on two nodes")
    s.add_argument("node")
    s.add_argument("--mode", choices=("isolate", "kill"), default="isolate",
                   help="isolate: the node stops renewing its lease, reporting and gossiping, then comes back; "
                        "kill: every process of the node dies, QEMUs included, and it stays down for the "
                        "duration, its supervisor held off (test and demo clusters)")
    s.add_argument("--duration", type=float, metavar="S",
                   help="how long the node is cut off or stays down: longer than its lease, at most 120 s "
                        "(default: the node lease time + 40 s)")


def from_args(ctx: Context) -> int:
    return node_loss(ctx.client, ctx.args.node, ctx.args.mode, ctx.args.duration, ctx.args.json)


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
        return None  # not answering (killed, held down, or restarting)


def _hand_over_if_master(client: AgentClient, node: str, timeout_s: float) -> None:
    info = client.get("/v1/cluster")["data"]
    if info["this_node"] == node:
        raise DrillAborted(f"node '{node}' is the node this command runs on; run the drill from another node")
    if info["master"] != node:
        return
    print(f"  '{node}' is the master: handing the role to another candidate first", file=sys.stderr, flush=True)
    client.post("/v1/cluster/master-failover", {})
    wait_for("another node to become master", timeout_s,
             lambda: (c := client.get("/v1/cluster")["data"])["master"] not in (None, node) and c["quorum"]["ok"])


@dataclass
class Watch:
    """What the drill saw, fed one poll at a time (`see`); no I/O and no clock: `t` is seconds since the order."""

    node: str
    mode: str
    duration_s: float
    moving: list[str]
    others: list[str]
    lease_expired_s: float | None = None
    went_down_s: float | None = None
    answered_again_s: float | None = None
    rejoined_s: float | None = None
    recovered: dict[str, tuple[str, float, Any]] = field(default_factory=dict)  # name: (node, t, pid)
    moved_again: dict[str, str] = field(default_factory=dict)
    early: list[str] = field(default_factory=list)  # ran elsewhere before the lease expired
    double: set[str] = field(default_factory=set)
    others_stopped_s: dict[str, float] = field(default_factory=dict)  # not running on the node (or no answer)
    others_running_s: dict[str, float] = field(default_factory=dict)  # running there again after that

    def see(self, t: float, nodes: dict[str, dict[str, Any]], instances: dict[str, dict[str, Any]],
            qemus: set[str] | None, asked: bool, expired_for_s: float | None) -> None:
        """One poll: the node rows, the instance rows, and (if `asked`) the QEMUs the node itself says it runs
        (None: it did not answer). `expired_for_s`: how long ago the lease was first seen expired."""
        row = nodes.get(self.node, {})
        if self.lease_expired_s is None and row.get("lease") == "expired":
            self.lease_expired_s = t
        if asked:
            if qemus is None and self.went_down_s is None:
                self.went_down_s = t
            elif qemus is not None and self.went_down_s is not None and self.answered_again_s is None:
                self.answered_again_s = t
            self.double |= {n for n in self.recovered if qemus and n in qemus}
        if (self.rejoined_s is None and expired_for_s is not None and row.get("status") == "online"
                and row.get("lease") == "held" and row.get("report_age_s") is not None
                and row["report_age_s"] < expired_for_s):
            self.rejoined_s = t
        for name in self.moving:
            inst = instances.get(name)
            where = inst["primary_node"] if inst and inst["status"] == "running" else None
            if name not in self.recovered:
                if inst is not None and where not in (None, self.node):
                    self.recovered[name] = (where, t, inst.get("pid"))
                    if self.lease_expired_s is None:
                        self.early.append(name)
                continue
            to, _, pid = self.recovered[name]
            if name not in self.moved_again and (where != to or inst is None or inst.get("pid") != pid):
                self.moved_again[name] = (f"{'running on ' + where if where else 'not running'} "
                                          f"(pid {inst.get('pid') if inst else None}) after {t:.1f} s")
        for name in self.others:  # the node's own answer says whether they run (none when it does not answer)
            if not asked:
                continue
            here = qemus is not None and name in qemus
            if not here:
                self.others_stopped_s.setdefault(name, t)
            elif name in self.others_stopped_s and name not in self.others_running_s:
                inst = instances.get(name) or {}
                if inst.get("status") == "running" and inst.get("primary_node") == self.node:
                    self.others_running_s[name] = t

    def settled(self, t: float) -> bool:
        """Everything the drill waits for has happened, and the node has been back for SETTLE_S."""
        back = self.rejoined_s is not None and (self.mode != "kill" or self.answered_again_s is not None)
        return (back and self.lease_expired_s is not None and len(self.recovered) == len(self.moving)
                and len(self.others_running_s) == len(self.others_stopped_s)
                and t - max(self.rejoined_s or 0.0, self.answered_again_s or 0.0) >= SETTLE_S)

    def failures(self, failovers: dict[str, int]) -> list[str]:
        """What went wrong, in operator words; `failovers`: fail-over events per instance since the order."""
        node, problems = self.node, []
        if self.mode == "kill" and self.went_down_s is None:
            problems.append(f"'{node}' never stopped answering: it was not powered off")
        if self.lease_expired_s is None:
            problems.append(f"the lease of '{node}' never expired")
        if self.early:
            problems.append(f"ran elsewhere before the lease of '{node}' expired: {', '.join(self.early)}")
        missing = [n for n in self.moving if n not in self.recovered]
        if missing:
            problems.append(f"not running elsewhere: {', '.join(missing)}")
        if self.double:
            problems.append(f"ran on two nodes at once: {', '.join(sorted(self.double))}")
        for name, what in sorted(self.moved_again.items()):
            problems.append(f"'{name}' did not stay where it recovered: {what}")
        for name in self.recovered:
            if failovers.get(name, 0) != 1:
                problems.append(f"'{name}' failed over {failovers.get(name, 0)} times, not once")
        came_back = self.answered_again_s if self.mode == "kill" else self.rejoined_s
        if came_back is not None and came_back < self.duration_s - EARLY_TOLERANCE_S:
            problems.append(f"'{node}' came back after {came_back:.1f} s, before its {self.duration_s:.0f} s "
                            "were over" + (" (its agent did not wait out the drill's hold-down)"
                                           if self.mode == "kill" else ""))
        if self.mode == "kill" and self.went_down_s is not None and self.answered_again_s is None:
            problems.append(f"'{node}' did not answer again (is its agent supervised?)")
        elif self.lease_expired_s is not None and self.rejoined_s is None:
            problems.append(f"'{node}' did not come back (lease and reports)")
        down = [n for n in self.others if n in self.others_stopped_s and n not in self.others_running_s]
        if down:
            problems.append(f"its instances without auto-failover do not run on it again: {', '.join(down)}")
        return problems


def node_loss(client: AgentClient, node: str, mode: str, duration_s: float | None, as_json: bool,
              timeout_s: float = 120.0) -> int:
    try:
        report = _run(client, node, mode, duration_s, timeout_s, as_json)
    except DrillAborted as exc:
        print(f"error: drill stopped: {exc}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        _print(report)
    return 0 if not report["failures"] else 1


def _print(r: dict[str, Any]) -> None:
    def s(v: float | None) -> str:
        return f"{v} s" if v is not None else "never"
    node = r["node"]
    if r["instances"]:
        print(table(["INSTANCE", "FROM", "TO", "RECOVERED", "FAILOVERS"],
                    [[i["name"], i["from"], i["to"] or "-",
                      f"{i['recovered_s']}s" if i["recovered_s"] is not None else "NOT RECOVERED", i["failovers"]]
                     for i in r["instances"]]))
    else:
        print(f"no auto-failover instance was running on '{node}': nothing to fail over")
    if r["mode"] == "kill":
        print(f"'{node}' stopped answering after {s(r['went_down_s'])}")
    print(f"lease of '{node}' expired after {r['lease_expired_s']} s" if r["lease_expired_s"] is not None
          else f"lease of '{node}' never expired")
    if r["mode"] == "kill":
        print(f"'{node}' held down for {r['duration_s']:.0f} s: answered again after {s(r['answered_again_s'])}")
    print(f"'{node}' rejoined (lease held, reporting) after {s(r['rejoined_s'])}")
    for o in r["others"]:
        print(f"its instance '{o['name']}' (no auto-failover): " + (
            "kept running" if o["stopped_s"] is None else
            f"stopped after {o['stopped_s']} s, running there again after {o['running_s']} s"
            if o["running_s"] is not None else f"stopped after {o['stopped_s']} s, NOT RUNNING again"))
    print("all checks passed" if not r["failures"] else "FAILED: " + "; ".join(r["failures"]))


def _run(client: AgentClient, node: str, mode: str, duration_s: float | None, timeout_s: float,
         as_json: bool) -> dict[str, Any]:
    _hand_over_if_master(client, node, timeout_s)
    guarded, ttl = _guarded(client, node)
    before = {i["name"]: i for i in client.get("/v1/instances")["data"]}
    moving = sorted(n for n in guarded if before.get(n, {}).get("status") == "running")
    others = sorted(n for n, i in before.items()
                    if i["primary_node"] == node and i["status"] == "running" and n not in moving)
    duration = duration_s if duration_s is not None else min(MAX_DURATION_S, ttl + 40)
    if not ttl < duration <= MAX_DURATION_S:
        raise DrillAborted(f"--duration {duration:.0f} must be longer than the node lease of '{node}' "
                           f"({ttl:.0f} s), or its lease cannot expire, and at most {MAX_DURATION_S:.0f} s")
    if not as_json:
        what = "isolate" if mode == "isolate" else "power off (kill every process of)"
        print(f"{what} '{node}' for {duration:.0f} s; its auto-failover instances: {', '.join(moving) or 'none'}",
              flush=True)
    watch = Watch(node, mode, duration, moving, others)
    start_wall, t0 = time.time(), time.monotonic()
    client.post("/v1/drill/crash", {"node": node, "mode": "isolate" if mode == "isolate" else "power-off",
                                    "freeze_s": duration})
    expired_wall: float | None = None
    asked_at = -ASK_KILLED_EVERY_S
    deadline = t0 + duration + timeout_s
    while time.monotonic() < deadline:
        t = time.monotonic() - t0
        nodes = {r["name"]: r for r in client.get("/v1/nodes")["data"]}
        asked = mode == "isolate" or t - asked_at >= ASK_KILLED_EVERY_S
        qemus = _node_qemus(client, node) if asked else None
        asked_at = t if asked else asked_at
        instances = {i["name"]: i for i in client.get("/v1/instances")["data"]}
        if expired_wall is None and nodes.get(node, {}).get("lease") == "expired":
            expired_wall = time.time()
        watch.see(t, nodes, instances, qemus, asked,
                  None if expired_wall is None else time.time() - expired_wall)
        if watch.settled(time.monotonic() - t0):
            break
        time.sleep(POLL_S)
    still = _node_qemus(client, node)
    watch.see(time.monotonic() - t0, {}, {i["name"]: i for i in client.get("/v1/instances")["data"]}, still,
              True, None)  # the last word: the node itself, asked once more
    agree, _ = replicas_agree(client, 30)
    events = client.get(f"/v1/events?node={node}&limit=1000")["data"]
    failovers = {n: sum(1 for e in events if e["instance"] == n and e["kind"] == "fail-over"
                        and e["time"] >= start_wall) for n in moving}
    failures = watch.failures(failovers)
    if not agree:
        failures.append("the nodes' config replicas differ")

    def r(v: float | None) -> float | None:
        return None if v is None else round(v, 2)
    instances_out = [{"name": n, "from": node, "to": watch.recovered.get(n, (None,))[0],
                      "recovered_s": r(watch.recovered[n][1]) if n in watch.recovered else None,
                      "failovers": failovers[n]} for n in moving]
    return {"node": node, "mode": mode, "duration_s": duration, "lease_expired_s": r(watch.lease_expired_s),
            "went_down_s": r(watch.went_down_s), "answered_again_s": r(watch.answered_again_s),
            "rejoined_s": r(watch.rejoined_s), "rejoined": watch.rejoined_s is not None,
            "instances": instances_out,
            "others": [{"name": n, "stopped_s": r(watch.others_stopped_s.get(n)),
                        "running_s": r(watch.others_running_s.get(n))} for n in others],
            "replicas_agree": agree, "double_run": sorted(watch.double), "failures": failures,
            "passed": not failures}
