"""A simulated cluster for the failover and fencing rules: nodes, leases, agents, fence keepers, QEMUs.

It runs the real pure decisions (hostagent.master.decide.failovers, hostagent.master.decide.restarts,
hostagent.node.selffence.guarded_names) against simulated nodes and time, one
tick per second, and checks the invariants after every tick:

- an instance never runs (unfrozen) on two nodes;
- nothing starts on a node without a current lease (as the node sees it);
- nothing moves automatically while the cluster alert or disarm stands.

Node conditions: `ok`, `killed` (power off: agent, keeper and QEMUs gone),
`partitioned` (runs, cannot reach etcd or the master), `agent-frozen`
(agent SIGSTOPped, keeper and QEMUs run), `frozen` (every process
stopped). `heal` brings a node back to `ok` (a killed node's agent restarts
with no QEMU running).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hostagent.master.decide import failovers, restarts
from hostagent.node.selffence import FENCE_MARGIN_S, guarded_names

TTL = 20.0
REPORT_EVERY = 2.0
RESYNC_S = 5.0  # a secondary back with a running primary is in sync again after this long


@dataclass
class Node:
    name: str
    memory_free: int = 8000
    condition: str = "ok"
    renewed_at: float | None = 0.0  # node's view: send time of the last renewal that succeeded
    lease_expires: float = TTL  # etcd's view
    seen_cluster: dict[str, Any] = field(default_factory=dict)  # its replica of the cluster record
    seen_instances: list[dict[str, Any]] = field(default_factory=list)
    last_report: dict[str, Any] | None = None

    def deadline(self) -> float | None:
        return None if self.renewed_at is None else self.renewed_at + TTL - FENCE_MARGIN_S


@dataclass
class Sim:
    nodes: dict[str, Node]
    instances: list[dict[str, Any]]
    cluster: dict[str, Any] = field(default_factory=lambda: {"fencing": "armed", "fencing_since": None})
    qemus: dict[str, set[str]] = field(default_factory=dict)  # instance -> nodes with its QEMU
    now: float = 0.0
    master_since: float = -1000.0
    fstate: failovers.State = field(default_factory=failovers.State)
    tracks: dict[str, restarts.Track] = field(default_factory=dict)
    transcript: list[str] = field(default_factory=list)
    moves: list[tuple[float, str, str, str]] = field(default_factory=list)

    @staticmethod
    def build(nodes: int, instances: list[dict[str, Any]], **cluster: Any) -> Sim:
        sim = Sim({f"n{i}": Node(f"n{i}") for i in range(1, nodes + 1)}, instances)
        sim.cluster.update(cluster)
        for inst in instances:
            if inst.get("admin_state") == "up":
                sim.qemus[inst["name"]] = {inst["primary_node"]}
        for node in sim.nodes.values():
            node.seen_cluster, node.seen_instances = dict(sim.cluster), [dict(i) for i in instances]
            node.last_report = sim._report(node)
        return sim

    # ---- the outside world ----------------------------------------------------------
    def set(self, node: str, condition: str) -> None:
        n = self.nodes[node]
        if condition == "killed":
            for where in self.qemus.values():
                where.discard(node)
        if condition == "ok" and n.condition == "killed":
            n.renewed_at = None  # a fresh agent: no lease until it renews
        if condition == "ok" and n.condition in ("frozen", "agent-frozen"):
            self._fence_if_due(n, keeper=True)  # on SIGCONT the keeper's (or agent's) first check comes first
        n.condition = condition
        self.transcript.append(f"t={self.now:.0f} {node} {condition}")

    def operator(self, **change: Any) -> None:
        if "fencing" in change:
            change["fencing_since"] = self.now
        self.cluster.update(change)
        self.transcript.append(f"t={self.now:.0f} operator {change}")

    # ---- one second ----------------------------------------------------------------
    def tick(self) -> None:
        for node in self.nodes.values():
            self._node_tick(node)
        self._master_tick()
        self._check()
        self.now += 1.0

    def run(self, seconds: float) -> None:
        for _ in range(int(seconds)):
            self.tick()

    def _node_tick(self, n: Node) -> None:
        if n.condition == "killed":
            return
        agent_runs = n.condition in ("ok", "partitioned")
        reaches_etcd = n.condition == "ok"
        if reaches_etcd:
            n.renewed_at = self.now
            n.lease_expires = self.now + TTL
            n.seen_cluster, n.seen_instances = dict(self.cluster), [dict(i) for i in self.instances]
            if self.now % REPORT_EVERY == 0:
                n.last_report = self._report(n)
        if agent_runs or n.condition == "agent-frozen":  # the agent, or else the keeper
            self._fence_if_due(n, keeper=not agent_runs)

    def _fence_if_due(self, n: Node, keeper: bool) -> None:
        deadline = n.deadline()
        if not n.seen_cluster.get("fencing", "armed") == "armed" or deadline is None or self.now < deadline:
            return
        for name in guarded_names(n.seen_instances, n.name, n.seen_cluster):
            if n.name in self.qemus.get(name, set()):
                self.qemus[name].discard(n.name)
                self.transcript.append(f"t={self.now:.0f} {n.name} fenced {name}" + (" (keeper)" if keeper else ""))

    def _report(self, n: Node) -> dict[str, Any]:
        armed = n.seen_cluster.get("fencing", "armed") == "armed"
        here = [i for i, where in self.qemus.items() if n.name in where]
        used = sum(i["memory_mib"] for i in self.instances if i["name"] in here)
        return {"node": n.name, "time": self.now, "memory_free_mib": n.memory_free - used, "cpus": 4,
                "load_1m": 0.1, "instances": {i: {"status": "running"} for i in here},
                "fencing": {"armed": armed, "since": n.seen_cluster.get("fencing_since"),
                            "guarded": guarded_names(n.seen_instances, n.name, n.seen_cluster)}}

    def _master_tick(self) -> None:
        leases = frozenset(n.name for n in self.nodes.values() if n.lease_expires > self.now)
        reports = {n.name: n.last_report for n in self.nodes.values() if n.last_report is not None}
        alive = frozenset(name for name in leases if self.nodes[name].condition == "ok")
        view = failovers.View(tuple({"name": n} for n in self.nodes), leases, reports, tuple(self.instances),
                              dict(self.cluster), alive, self.master_since)
        decision = failovers.decide(view, self.fstate, self.now)
        self.fstate = decision.state
        if decision.alert:
            self.cluster["alert"] = decision.alert
        self.transcript += [f"t={self.now:.0f} {e.kind} {e.instance or e.node}" for e in decision.events]
        blocked = self.cluster.get("alert") or self.cluster.get("fencing") == "disarmed"
        by_name = {i["name"]: i for i in self.instances}
        for name, old, new in decision.failovers:
            assert not blocked, f"{name} failed over while the alert or disarm stands"
            assert old not in leases, f"{name} failed over away from {old}, which still holds its lease"
            inst = by_name[name]
            inst.update(primary_node=new, secondary_node=old, home_node=old, replica_in_sync=False, resync_from=None)
            self.moves.append((self.now, name, old, new))
            self._start(name, new)
        for name, home, _ in failovers.failbacks(view, self.fstate, self.now):
            assert not blocked, f"{name} failed back while the alert or disarm stands"
            inst = by_name[name]
            assert inst["replica_in_sync"], f"{name} failed back during a resync"
            assert self.runs_on(name) == {inst["primary_node"]}
            inst.update(primary_node=home, secondary_node=inst["primary_node"], home_node=None)
            self.qemus[name] = {home}  # a live migration: the guest moves, it never runs twice
            self.moves.append((self.now, name, inst["secondary_node"], home))
            self.transcript.append(f"t={self.now:.0f} fail-back {name} to {home}")
        self._resync()
        live_reports = {n: r for n, r in reports.items() if n in alive}
        rview = restarts.View(tuple(self.instances), {n: {**r, "time": self.now} for n, r in live_reports.items()},
                              alive)
        rdecision = restarts.decide(rview, self.tracks, self.now)
        self.tracks = rdecision.tracks
        for name, node in rdecision.starts:
            self._start(name, node)

    def _resync(self) -> None:
        for inst in self.instances:
            if inst.get("replica_in_sync") or not inst.get("secondary_node"):
                continue
            ok = self.nodes[inst["secondary_node"]].condition == "ok" and inst["primary_node"] in self.runs_on(
                inst["name"])
            if not ok:
                inst["resync_from"] = None
            elif inst.get("resync_from") is None:
                inst["resync_from"] = self.now
            elif self.now - inst["resync_from"] >= RESYNC_S:
                inst["replica_in_sync"] = True

    def _start(self, name: str, node: str) -> None:
        n = self.nodes[node]
        deadline = n.deadline()
        inst = next(i for i in self.instances if i["name"] == name)
        guarded = name in guarded_names([inst], node, self.cluster)
        if guarded and (deadline is None or self.now >= deadline):
            self.transcript.append(f"t={self.now:.0f} {node} refused to start {name} (no current lease)")
            return  # the node's start guard
        assert n.condition == "ok", f"{name} started on {node}, which is {n.condition}"
        self.qemus.setdefault(name, set()).add(node)
        self.transcript.append(f"t={self.now:.0f} start {name} on {node}")

    def _check(self) -> None:
        for name, where in self.qemus.items():
            active = [n for n in where if self.nodes[n].condition != "frozen"]
            assert len(active) <= 1, f"t={self.now}: {name} runs on {active}\n" + "\n".join(self.transcript)

    def runs_on(self, name: str) -> set[str]:
        return {n for n in self.qemus.get(name, set()) if self.nodes[n].condition != "frozen"}


def mirrored(name: str, primary: str, secondary: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "primary_node": primary, "secondary_node": secondary, "disk_template": "mirror",
            "admin_state": "up", "memory_mib": 1024, "priority": "normal", "auto_failover": True,
            "replica_in_sync": True, **extra}
