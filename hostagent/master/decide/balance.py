"""Corral's balancer: a plan of moves of replicated instances that lowers hbal's cluster score
(hostagent.master.decide.htools_score), planned on an htools cluster; pure.

The search is hbal's (Ganeti's Cluster.hs tryBalance): at each step every move of every replicated instance
of the group is tried on a copy of the cluster, and the one that lowers the score most is taken; it stops
when no move lowers the score by more than MIN_GAIN, or after `max_moves`. The moves are hbal's, in Corral's
operations (a replicated instance's disks are on its primary and its secondary):

- failover: primary and secondary swap (Corral: `instance migrate` live, or failover when stopped);
- replace-secondary N: the copy moves to N (`instance replace-secondary --node N`);
- replace-primary N: a switchover, the copy moves to N, a switchover (N primary, the old secondary keeps its
  copy);
- replace-and-failover N: the copy moves to N, then a switchover (N primary, the old primary the copy);
- failover-and-replace N: a switchover, then the copy moves to N (the old secondary primary).

A move is refused where hbal refuses it (hostagent.master.decide.htools_checks, step by step): a node it adds
to would lack the memory or the disk, or, unless soft errors are ignored (hbal's --ignore-soft-errors), would
go over the group policy's vCPU or spindle ratio, newly fail N+1, or take a second instance of an exclusion
tag. A node already over its policy takes nothing more by default, as in hbal. Only instances with
auto_balance move; instances on one node only (file, plain) do not, nor any to an offline node.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from hostagent.master.decide.evacuation import Step
from hostagent.master.decide.htools import (DEFAULT_SPINDLE_RATIO, DEFAULT_VCPU_RATIO, Group, HtoolsCluster, Instance,
                                            Node)
from hostagent.master.decide.htools_checks import MoveChecks, Rules
from hostagent.master.decide.htools_score import EXCLUSION_PREFIX, format_score
from hostagent.master.decide.htools_estimate import Estimator, estimator as estimator_of
from hostagent.master.decide.htools_search import EXACT_WITHIN, Search, Trial

MIGRATION_PREFIX = "htools:migration:"
ALLOW_PREFIX = "htools:allowmigration:"

MIN_GAIN = 1e-9  # hbal's minimum score improvement (its "minimum score 1.000000e-9")
# Nodes from which moves are estimated from shared parts (htools_estimate): with fewer, a move changes most nodes,
# so what the estimator keeps is rebuilt every step and costs more than the trials it saves (4 nodes: twice slower).
ESTIMATE_FROM = 8
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


def rules_of(cluster: HtoolsCluster, group: Group) -> Rules:
    """The group's policy and the cluster's tags, as hbal's checks read them."""
    policy = cluster.policy_of(group)
    return Rules(policy.vcpu_ratio if policy else DEFAULT_VCPU_RATIO,
                 policy.spindle_ratio if policy else DEFAULT_SPINDLE_RATIO,
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


def _candidates(inst: Instance, targets: list[str], estimator: Estimator | None = None,
                bar: float = math.inf) -> list[tuple[str, str, str, str]]:
    """(kind, target, primary, secondary) of every move of a replicated instance (on shared storage: to any
    node), in hbal's order; with an `estimator`, without the moves it shows cannot come below `bar`."""
    p, s = inst.primary, inst.secondary
    shared = inst.disk_template in SHARED
    places: dict[str, Callable[[str], tuple[str, str]]] = (
        {"failover-to-any": lambda n: (n, "")} if shared else
        {"replace-secondary": lambda n: (p, n), "replace-and-failover": lambda n: (n, p),
         "replace-primary": lambda n: (n, s), "failover-and-replace": lambda n: (s, n)})
    others = [n for n in targets if n != p and (shared or n != s)]
    found = [] if shared else [("failover", "", s, p)]
    if estimator is None or math.isinf(bar):
        return found + [(kind, n, *place(n)) for n in others for kind, place in places.items()]
    kept = {kind: set(estimator.narrowed(place, others, bar)) for kind, place in places.items()}
    wanted = set().union(*kept.values())
    found += [(kind, n, *place(n)) for n in others if n in wanted for kind, place in places.items() if n in kept[kind]]
    return found


def plan(cluster: HtoolsCluster, group: str | None = None, max_moves: int = 1000,
         ignore_soft_errors: bool = False) -> Plan:
    """The moves, best first, that bring the score of `group` (None: the cluster's only group with nodes)
    lowest, greedily, as hbal does; `ignore_soft_errors`: only the hard checks (memory, disk), as hbal's
    --ignore-soft-errors, which lets a cluster whose nodes are over their policy's ratios move at all."""
    groups = [g for g in cluster.groups if group in (None, g.name, g.uuid)
              and any(n.group_uuid == g.uuid for n in cluster.nodes)]
    if not groups or (group is None and len(groups) > 1):
        raise ValueError("name the node group to balance" if groups else f"no node group {group!r} with nodes")
    chosen = groups[0]
    rules = rules_of(cluster, chosen)
    state = Search(cluster, chosen.uuid)
    members = set(state.members)
    usable = [n for n in state.members if not state.nodes[n].offline]  # in file order, as hbal
    initial = current = state.score
    moves: list[Move] = []
    while len(moves) < max_moves:
        best: tuple[float, Move, Trial] | None = None
        for name in state.order:
            inst = state.instances[name]
            movable = (inst.disk_template in REPLICATED and inst.secondary) or inst.disk_template in SHARED
            if not movable or not inst.auto_balance or inst.primary not in members:
                continue
            checks = MoveChecks(state, inst, rules, ignore_soft_errors)
            estimator = estimator_of(state, inst) if len(usable) >= ESTIMATE_FROM else None
            for candidate in _candidates(inst, usable, estimator, math.inf if best is None else best[0] + EXACT_WITHIN):
                kind, target, primary, secondary = candidate
                if state.nodes[primary].offline or (secondary and state.nodes[secondary].offline
                                                    and secondary != inst.secondary):
                    continue
                if rules.migration and not _migrates(candidate, inst, state.nodes, rules):
                    continue
                if best is not None and estimator is not None:  # a move far from the best needs no trial
                    approx = estimator.estimate(primary, secondary, best[0] + EXACT_WITHIN)
                    if approx is not None and not approx < best[0] + EXACT_WITHIN:
                        continue
                if checks.refusal(kind, target):
                    continue
                trial = state.trial(inst, primary, secondary)
                if best is not None and not trial.approx < best[0] + EXACT_WITHIN:
                    continue
                value = state.exact(trial)
                if not math.isnan(value) and (best is None or value < best[0]):
                    best = (value, Move(inst.name, kind, target, primary, secondary, (inst.primary, inst.secondary)),
                            trial)
        if best is None or current - best[0] <= MIN_GAIN:
            break
        state.commit(best[2])
        current = state.score
        moves.append(best[1])
    return Plan(tuple(moves), initial, current, state.cluster())


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
