"""Corral's balancer: a plan of moves of replicated instances that lowers hbal's cluster score
(hostagent.master.decide.htools_score), planned on an htools cluster; pure.

The search is hbal's (Ganeti's Cluster.hs tryBalance): at each step every move of every replicated instance
of the group is tried on a copy of the cluster, and the one that lowers the score most is taken; it stops
when no move lowers the score by more than MIN_GAIN, or after `max_moves`. The moves are hbal's, in Corral's
operations (a replicated instance's disks are on its primary and its secondary):

- failover: primary and secondary swap (Corral: `instance migrate` live, or failover when stopped);
- replace-secondary N: the copy moves to N (`instance replace-secondary --node N`);
- replace-primary N: the copy moves to N, then a switchover (N primary, the old secondary keeps its copy);
- replace-and-failover N: the copy moves to N, then a switchover (N primary, the old primary the copy);
- failover-and-replace N: a switchover, then the copy moves to N (the old secondary primary).

A move is refused, as hbal refuses it, when a node it adds to would lack the memory (primaries that run),
the disk (both nodes of local storage), or the vCPUs the group's policy allows, or would newly fail N+1:
hold less free memory than it must keep for the instances it is secondary for, should one primary fail.
Instances on one node only (file, plain) do not move, nor any on an offline or drained node.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, replace
from typing import Any

from hostagent.master.decide.evacuation import Step
from hostagent.master.decide.htools import Group, HtoolsCluster, Instance, Node
from hostagent.master.decide.htools_score import EXCLUSION_PREFIX, LOCAL_STORAGE, NOT_USING_MEMORY, format_score, score

MIGRATION_PREFIX = "htools:migration:"
ALLOW_PREFIX = "htools:allowmigration:"

MIN_GAIN = 1e-9  # hbal's minimum score improvement (its "minimum score 1.000000e-9")
REPLICATED = ("drbd",)  # htools' word for a template whose disks are on two nodes (Corral: mirror, drbd)
SHARED = ("blockdev", "ext", "rbd", "sharedfile", "gluster")  # htools' shared storage: any node runs it


@dataclass(frozen=True)
class Move:
    """One instance's move: where its primary and secondary end up, and how."""

    instance: str
    kind: str  # failover, replace-secondary, replace-primary, replace-and-failover, failover-and-replace
    target: str  # the node a copy moves to ("" for a failover)
    primary: str
    secondary: str
    was: tuple[str, str] = ("", "")  # primary and secondary before the move

    def steps(self) -> list[tuple[str, str]]:
        """Corral's operations, in order: ("switchover", "") or ("replace-secondary", NODE)."""
        switch, copy = ("switchover", ""), ("replace-secondary", self.target)
        return {"failover": [switch], "replace-secondary": [copy], "replace-primary": [switch, copy, switch],
                "replace-and-failover": [copy, switch], "failover-and-replace": [switch, copy],
                "failover-to-any": [("switchover", self.target)]}[self.kind]


@dataclass(frozen=True)
class Plan:
    moves: tuple[Move, ...]
    initial: float
    final: float
    cluster: HtoolsCluster  # as it is once the moves are made


def _uses_memory(inst: Instance) -> bool:
    return inst.status not in NOT_USING_MEMORY


@dataclass
class _Load:
    """What a node holds, as hbal's Node tracks it for its checks."""

    vcpus: int = 0
    spindles: float = 0.0
    peers: dict[str, int] | None = None
    tags: dict[str, int] | None = None

    def reserved(self) -> int:
        return max((self.peers or {}).values(), default=0)


def _loads(cluster: HtoolsCluster, exclusion: list[str]) -> dict[str, _Load]:
    loads = {n.name: _Load(vcpus=n.node_cpus, peers={}, tags={}) for n in cluster.nodes}
    for inst in cluster.instances:
        if inst.forthcoming or not inst.primary:  # no primary: a new instance not placed yet
            continue
        p = loads[inst.primary]
        p.vcpus += inst.vcpus if inst.status != "ADMIN_offline" else 0
        local = inst.disk_template in LOCAL_STORAGE
        p.spindles += inst.spindle_use if local else 0
        for tag in inst.tags:
            if any(tag.startswith(prefix) for prefix in exclusion):
                assert p.tags is not None
                p.tags[tag] = p.tags.get(tag, 0) + 1
        if inst.secondary:
            s = loads[inst.secondary]
            s.spindles += inst.spindle_use if local else 0
            if inst.auto_balance and inst.status != "ADMIN_offline":
                assert s.peers is not None
                s.peers[inst.primary] = s.peers.get(inst.primary, 0) + inst.mem_mib
    return loads


def _apply(cluster: HtoolsCluster, inst: Instance, primary: str, secondary: str) -> HtoolsCluster:
    """The cluster with `inst` on `primary`/`secondary`: the nodes' free memory and disk follow it."""
    delta: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # node -> [memory, disk] freed
    mem = inst.mem_mib if _uses_memory(inst) and not inst.forthcoming else 0
    disk = inst.disk_mib if inst.disk_template in LOCAL_STORAGE and not inst.forthcoming else 0
    delta[inst.primary][0] += mem
    delta[primary][0] -= mem
    for old in filter(None, (inst.primary, inst.secondary)):
        delta[old][1] += disk
    for new in filter(None, (primary, secondary)):
        delta[new][1] -= disk
    nodes = tuple(replace(n, free_mem_mib=n.free_mem_mib + delta[n.name][0],
                          free_disk_mib=n.free_disk_mib + delta[n.name][1]) if n.name in delta else n
                  for n in cluster.nodes)
    moved = replace(inst, primary=primary, secondary=secondary)
    return replace(cluster, nodes=nodes, instances=tuple(moved if i.name == inst.name else i
                                                         for i in cluster.instances))


@dataclass(frozen=True)
class Rules:
    vcpu_ratio: float
    spindle_ratio: float
    exclusion: list[str]
    migration: list[str]  # the cluster's migration tag prefixes (htools:migration:PREFIX)
    allowed: list[tuple[str, str]]  # (from, to) migration tags allowed all the same (htools:allowmigration:A::B)


def refusal(before: HtoolsCluster, after: HtoolsCluster, inst: Instance, rules: Rules) -> str:
    """Why hbal's checks (Node.addPri, addSec) refuse what the nodes gain when `inst` (as it was in `before`;
    a new one has no nodes) is placed as in `after`: "memory", "disk", "cpu", "N+1" or "tags"; "" when it fits."""
    old_nodes, new_nodes = {n.name: n for n in before.nodes}, {n.name: n for n in after.nodes}
    old, new = _loads(before, rules.exclusion), _loads(after, rules.exclusion)
    moved = next(i for i in after.instances if i.name == inst.name)
    local = inst.disk_template in LOCAL_STORAGE
    gains = {n for n, was_role in ((moved.primary, inst.primary), (moved.secondary, inst.secondary)) if n and n != was_role}
    for name in sorted(gains):  # a node taking the instance in a new role, as hbal adds it there (a switchover too)
        node, load, was = new_nodes[name], new[name], old_nodes[name]
        failed_n1 = was.free_mem_mib <= old[name].reserved()
        if name == moved.primary and _uses_memory(inst) and node.free_mem_mib <= 0:
            return "memory"
        if local and (node.free_disk_mib <= 0 or load.spindles > rules.spindle_ratio * node.spindles):
            return "disk"
        if name != moved.primary and inst.auto_balance and inst.mem_mib >= node.free_mem_mib:
            return "memory"
        if not failed_n1 and node.free_mem_mib <= load.reserved():
            return "N+1"
        if name == moved.primary:
            if load.vcpus / node.cpus > rules.vcpu_ratio:
                return "cpu"
            if any(count > 1 and count > (old[name].tags or {}).get(tag, 0) for tag, count in (load.tags or {}).items()):
                return "tags"
    return ""


def rules_of(cluster: HtoolsCluster, group: Group) -> Rules:
    """The group's policy and the cluster's tags, as hbal's checks read them."""
    policy = cluster.policy_of(group)
    return Rules(policy.vcpu_ratio if policy else 64.0, policy.spindle_ratio if policy else 32.0,
                 [t[len(EXCLUSION_PREFIX):] for t in cluster.tags if t.startswith(EXCLUSION_PREFIX)],
                 [t[len(MIGRATION_PREFIX):] for t in cluster.tags if t.startswith(MIGRATION_PREFIX)],
                 [(a, b) for t in cluster.tags if t.startswith(ALLOW_PREFIX)
                  for a, _, b in [t[len(ALLOW_PREFIX):].partition("::")] if a and b])


def _migrates(move: tuple[str, str, str, str], inst: Instance, nodes: dict[str, Node], rules: Rules) -> bool:
    """Whether each switchover of the move is between nodes whose migration tags allow it (the target has
    every migration tag of the source)."""
    def tags(node: str) -> set[str]:
        return {t for t in nodes[node].tags if any(t.startswith(p + ":") for p in rules.migration)}

    def receives(node: str) -> set[str]:  # its own tags, and those it is allowed to take over
        own = tags(node)
        return own | {source for source, target in rules.allowed if target in own}

    kind, target, primary, secondary = move
    p, s = inst.primary, inst.secondary
    hops = {"failover": [(p, s)], "replace-secondary": [], "replace-primary": [(p, s), (s, target)],
            "replace-and-failover": [(p, target)], "failover-and-replace": [(p, s)],
            "failover-to-any": [(p, target)]}[kind]
    return all(tags(a) <= receives(b) for a, b in hops)


def _candidates(inst: Instance, targets: list[str]) -> list[tuple[str, str, str, str]]:
    """(kind, target, primary, secondary) of every move of a replicated instance (on shared storage: to any
    node)."""
    p, s = inst.primary, inst.secondary
    if inst.disk_template in SHARED:
        return [("failover-to-any", n, n, "") for n in targets if n != p]
    found = [("failover", "", s, p)]
    for n in targets:
        if n in (p, s):
            continue
        found += [("replace-secondary", n, p, n), ("replace-and-failover", n, n, p),
                  ("replace-primary", n, n, s), ("failover-and-replace", n, s, n)]
    return found


def plan(cluster: HtoolsCluster, group: str | None = None, max_moves: int = 1000) -> Plan:
    """The moves, best first, that bring the score of `group` (None: the cluster's only group with nodes)
    lowest, greedily, as hbal does."""
    groups = [g for g in cluster.groups if group in (None, g.name, g.uuid)
              and any(n.group_uuid == g.uuid for n in cluster.nodes)]
    if not groups or (group is None and len(groups) > 1):
        raise ValueError("name the node group to balance" if groups else f"no node group {group!r} with nodes")
    chosen = groups[0]
    rules = rules_of(cluster, chosen)
    members = {n.name for n in cluster.nodes if n.group_uuid == chosen.uuid}
    usable = [n.name for n in cluster.nodes if n.name in members and not n.offline]  # in file order, as hbal
    initial = current = score(cluster, chosen.uuid)
    moves: list[Move] = []
    while len(moves) < max_moves:
        best: tuple[float, Move, HtoolsCluster] | None = None
        nodes = {n.name: n for n in cluster.nodes}
        for inst in cluster.instances:
            movable = (inst.disk_template in REPLICATED and inst.secondary) or inst.disk_template in SHARED
            if not movable or inst.primary not in members:
                continue
            for candidate in _candidates(inst, usable):
                kind, target, primary, secondary = candidate
                if nodes[primary].offline or (secondary and nodes[secondary].offline and secondary != inst.secondary):
                    continue
                if not _migrates(candidate, inst, nodes, rules):
                    continue
                after = _apply(cluster, inst, primary, secondary)
                if refusal(cluster, after, inst, rules):
                    continue
                value = score(after, chosen.uuid)
                if not math.isnan(value) and (best is None or value < best[0]):
                    best = (value, Move(inst.name, kind, target, primary, secondary, (inst.primary, inst.secondary)),
                            after)
        if best is None or current - best[0] <= MIN_GAIN:
            break
        current, cluster = best[0], best[2]
        moves.append(best[1])
    return Plan(tuple(moves), initial, current, cluster)


def steps_of(moves: tuple[Move, ...], running: frozenset[str]) -> list[Step]:
    """The plan's moves as the instance jobs that make them, in order (the evacuation's steps): a switchover is a
    live migration of a running instance and a failover of a stopped one, a copy move a replace-secondary."""
    steps: list[Step] = []
    for move in moves:
        primary, secondary = move.was
        for op, node in move.steps():
            if op == "switchover" and node:
                raise ValueError(f"instance '{move.instance}' is on shared storage, which Corral does not have")
            if op == "switchover":
                steps.append(Step("migrate" if move.instance in running else "failover", move.instance, primary,
                                  secondary))
                primary, secondary = secondary, primary
            else:
                steps.append(Step("replace-secondary", move.instance, secondary, node))
                secondary = node
    return steps


def summary(made: Plan) -> dict[str, Any]:
    """The plan as `corral cluster balance` shows it: the scores as hbal prints them, and each move with the
    Corral operations that make it."""
    moves = [{"step": index, "instance": m.instance, "kind": m.kind, "target": m.target, "primary": m.primary,
              "secondary": m.secondary, "was": "{}:{}".format(*m.was),
              "operations": [f"{op} {node}".strip() for op, node in m.steps()]}
             for index, m in enumerate(made.moves, start=1)]
    return {"initial_score": format_score(made.initial), "final_score": format_score(made.final), "moves": moves}
