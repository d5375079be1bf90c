"""Which instances the master fails over when nodes are lost: a pure decision, replayed by the scenario tests.

`decide(view, state, now, policy)` looks at the nodes' leases and last
reports, the instances and the cluster's fencing settings, and returns the
new state, the failovers to run and the events that say why. It reads no
clock and does no I/O; `hostagent.master.duties.autofailover` carries it out, and
`cluster simulate` runs it on the live config with one node taken away.

Rules (never wrong in the dangerous direction):
- A node is lost only when its node lease is gone from etcd. Before the
  lease can expire the node's agent, or its fence keeper if the agent hangs,
  has stopped every instance the node said it guards (its report's
  `fencing.guarded`), so only those instances may start elsewhere, and only
  if that report was made under the current fencing setting (a node cut off
  before it saw `cluster fencing arm` does not fence).
- Just after a master takes office it waits `grace_s` before calling any
  node lost: after a whole-cluster restart the agents need that long to take
  their leases again.
- More than `max_lost` nodes (default: one, or a third of the nodes) lost
  within `window_s` looks like a network failure, not failed nodes: raise
  the cluster alert and move nothing until an operator clears it. Nothing
  moves either while fencing is disarmed.
- An instance fails over only if it is marked up, replicated, has
  auto-failover on (its own setting, else the cluster default), its
  secondary is alive, its copy there is recorded in sync, and the secondary
  has the memory; highest priority first. Anything else stays put ("node
  down") and the reason is recorded once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hostagent import model
from hostagent.master.decide.restarts import Event, priority_rank

MAX_ATTEMPTS = 3


@dataclass(frozen=True)
class Policy:
    window_s: float = 300.0  # losses within this long count as one outage
    max_lost: int | None = None  # None: max(1, nodes // 3)
    grace_s: float = 30.0  # after a new master takes office, before any node counts as lost
    memory_reserve_mib: int = 256


@dataclass(frozen=True)
class State:
    """What the master remembers between passes (stored in etcd, so a new master goes on)."""

    lost: dict[str, float] = field(default_factory=dict)  # node -> when its lease was first seen gone
    attempts: dict[str, int] = field(default_factory=dict)  # "instance@node" -> failovers started off that node
    told: frozenset[str] = frozenset()  # refusals already recorded: one event per cause, not per pass
    back: dict[str, float] = field(default_factory=dict)  # node -> when it held its lease again after a loss

    def to_dict(self) -> dict[str, Any]:
        return {"lost": self.lost, "attempts": self.attempts, "told": sorted(self.told), "back": self.back}

    @staticmethod
    def from_dict(raw: Mapping[str, Any]) -> State:
        return State({str(k): float(v) for k, v in (raw.get("lost") or {}).items()},
                     {str(k): int(v) for k, v in (raw.get("attempts") or {}).items()},
                     frozenset(raw.get("told") or ()),
                     {str(k): float(v) for k, v in (raw.get("back") or {}).items()})


@dataclass(frozen=True)
class View:
    nodes: tuple[Mapping[str, Any], ...]
    leases: frozenset[str]  # nodes whose lease key exists
    reports: Mapping[str, Mapping[str, Any]]
    instances: tuple[Mapping[str, Any], ...]
    cluster: Mapping[str, Any]  # fencing ("armed"|"disarmed"), auto_failover, alert, max_lost_nodes
    alive: frozenset[str]  # fresh report and lease held
    master_since: float  # when this master took office
    busy: frozenset[str] = frozenset()  # instances with a job in flight


@dataclass(frozen=True)
class Decision:
    state: State
    failovers: list[tuple[str, str, str]]  # (instance, from node, to node), in order
    events: list[Event]
    alert: dict[str, Any] | None  # a new cluster alert to raise
    short: list[str] = field(default_factory=list)  # instances that would move but for memory on their secondary


def max_lost(nodes: int, cluster: Mapping[str, Any], policy: Policy) -> int:
    configured = cluster.get("max_lost_nodes", policy.max_lost)
    return int(configured) if configured is not None else max(1, nodes // 3)


def decide(view: View, state: State, now: float, policy: Policy = Policy()) -> Decision:
    events: list[Event] = []
    told = set(state.told)
    attempts = dict(state.attempts)
    back = dict(state.back)
    considered = [n["name"] for n in view.nodes if not n.get("offline")]
    lost: dict[str, float] = {}
    for node in considered:
        if node in view.leases:
            if node in state.lost:
                events.append(Event("", node, "node-back", f"node '{node}' holds its node lease again "
                                                           f"(lost for {now - state.lost[node]:.0f} s)"))
                told = {k for k in told if not k.endswith(f"@{node}")}
                attempts = {k: n for k, n in attempts.items() if not k.endswith(f"@{node}")}
                back[node] = now
            continue
        if node not in state.lost and (now - view.master_since < policy.grace_s or node not in view.reports):
            continue  # agents take their leases again after a restart; a node that never reported hosts nothing
        lost[node] = state.lost.get(node, now)
        back.pop(node, None)
        if node not in state.lost:
            guarded = _guarded(view, node)
            events.append(Event("", node, "node-lost",
                                f"node '{node}' is lost: its node lease expired (its agent stopped renewing it), "
                                f"so it has stopped its auto-failover instances"
                                + (f" ({', '.join(guarded)})" if guarded else " (it guarded none)")))
    limit = max_lost(len(considered), view.cluster, policy)
    recent = sorted(n for n, t in lost.items() if now - t <= policy.window_s)
    alert = None
    if len(recent) > limit and not view.cluster.get("alert"):
        reason = (f"{len(recent)} of {len(considered)} nodes lost within {policy.window_s:.0f} s "
                  f"({', '.join(recent)}): more than {limit} at once looks like a network failure rather than "
                  "failed nodes, so nothing is failed over automatically until an operator checks the network "
                  "and runs `corral cluster alert clear`")
        alert = {"reason": reason, "since": now, "nodes": recent}
        events.append(Event("", ",".join(recent), "alert", reason))
    blocked = ("the cluster alert stands (see `corral cluster info`)" if alert or view.cluster.get("alert")
               else "fencing is disarmed (`corral cluster fencing arm`)" if not model.armed(view.cluster) else "")
    failovers: list[tuple[str, str, str]] = []
    short: list[str] = []
    free = _free_memory(view)
    down = sorted((i for i in view.instances if i["primary_node"] in lost and i.get("admin_state") == "up"),
                  key=lambda i: (priority_rank(i), i["name"]))
    for inst in down:
        name, node = inst["name"], inst["primary_node"]
        if name in view.busy:
            continue
        target = inst.get("secondary_node")
        refusal = _refusal(view, inst, blocked, free, attempts, policy)
        if refusal:
            kind, why = refusal
            if kind == "memory":
                short.append(name)
            key = f"{kind}:{name}@{node}"
            if key not in told:
                told.add(key)
                events.append(Event(name, node, "stays-down" if kind == "off" else "refuse",
                                    f"instance '{name}' is down with node '{node}' and stays there: {why}"))
            continue
        assert target is not None
        free[target] -= int(inst["memory_mib"])
        tries = attempts[f"{name}@{node}"] = attempts.get(f"{name}@{node}", 0) + 1
        failovers.append((name, node, target))
        events.append(Event(name, node, "fail-over",
                            f"node '{node}' is lost (lease expired {now - lost[node]:.0f} s ago): failing over "
                            f"instance '{name}' (priority {inst.get('priority', 'normal')}) to its in-sync "
                            f"secondary '{target}'" + (f", attempt {tries}" if tries > 1 else "")))
    return Decision(State(lost, attempts, frozenset(told), back), failovers, events, alert, short)


def failbacks(view: View, state: State, now: float) -> list[tuple[str, str, Event]]:
    """Instances to live-migrate back to the node they were failed over from: (instance, home, why).

    Only with the cluster's `failback_after_s` set (else failback is the
    operator's `instance migrate`), once that node has held its lease that
    long since it came back, its copy is in sync again (never during a
    resync), and no alert or disarm stands.
    """
    after = view.cluster.get("failback_after_s")
    if not after or view.cluster.get("alert") or not model.armed(view.cluster):
        return []
    out = []
    for inst in sorted(view.instances, key=lambda i: (priority_rank(i), i["name"])):
        name, home = inst["name"], inst.get("home_node")
        if (not home or inst.get("secondary_node") != home or home not in view.alive or name in view.busy
                or inst.get("admin_state") != "up" or not inst.get("replica_in_sync")
                or name not in view.reports.get(inst["primary_node"], {}).get("instances", {})):
            continue
        since = state.back.get(home)
        if since is None or home in state.lost or now - since < float(after):
            continue
        out.append((name, home, Event(name, home, "fail-back",
                                      f"node '{home}' has been back for {now - since:.0f} s and the copy of "
                                      f"'{name}' there is in sync: migrating it back home from "
                                      f"'{inst['primary_node']}' (failback after {float(after):.0f} s)")))
    return out


def _refusal(view: View, inst: Mapping[str, Any], blocked: str, free: Mapping[str, int],
             attempts: Mapping[str, int], policy: Policy) -> tuple[str, str] | None:
    """(kind, why) when this instance must not fail over now; None when it may."""
    name, node, target = inst["name"], inst["primary_node"], inst.get("secondary_node")
    if inst.get("disk_template") not in model.REPLICATED or not target:
        return "off", f"its disks are not replicated ({inst.get('disk_template')})"
    if not model.auto_failover(inst, view.cluster):
        return "off", ("auto-failover is off for it; `corral instance failover --ignore-consistency` "
                       "moves it by hand")
    if blocked:
        return "blocked", f"no automatic failover while {blocked}"
    if name not in _guarded(view, node):
        return "unfenced", (f"node '{node}' never confirmed it would stop it when cut off (its last report does "
                            "not list it as fenced), so it may still run there")
    if target not in view.alive:
        return "target", f"its secondary '{target}' is not alive either"
    if not inst.get("replica_in_sync"):
        return "sync", (f"its copy on '{target}' is not known to be in sync; `corral instance failover "
                        f"{name} --ignore-consistency` starts it from that copy if losing writes is acceptable")
    need = int(inst["memory_mib"]) + policy.memory_reserve_mib
    if free.get(target, 0) < need:
        return "memory", (f"node '{target}' has {free.get(target, 0)} MiB free, it needs {need} MiB "
                          f"({inst['memory_mib']} MiB + {policy.memory_reserve_mib} MiB reserve)")
    if attempts.get(f"{name}@{node}", 0) >= MAX_ATTEMPTS:
        return "attempts", f"{MAX_ATTEMPTS} failovers to '{target}' failed (see `corral job list`)"
    return None


def _free_memory(view: View) -> dict[str, int]:
    """Per alive node: reported free memory, less instances placed there that its report does not show yet."""
    free = {}
    for node in view.alive:
        report = view.reports.get(node, {})
        shown = report.get("instances", {})
        owed = sum(int(i["memory_mib"]) for i in view.instances if i["primary_node"] == node
                   and i.get("admin_state") == "up" and i["name"] not in shown)
        free[node] = int(report.get("memory_free_mib") or 0) - owed
    return free


def _guarded(view: View, node: str) -> list[str]:
    """What the node said it stops when cut off, if it said so under the current fencing setting."""
    fencing = view.reports.get(node, {}).get("fencing") or {}
    current = fencing.get("since") == view.cluster.get("fencing_since")
    return list(fencing.get("guarded") or []) if fencing.get("armed") and current else []
