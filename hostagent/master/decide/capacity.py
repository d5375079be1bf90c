"""How many more instances of one size fit, and which resource runs out first: hspace's standard allocation,
planned on an htools cluster; pure.

Why: "when do we buy a node?" (issue 15). The answer is the one Ganeti's hspace gives on the same cluster, so
the two can be compared file by file. Facts from Ganeti 3.0.2 (src/Ganeti/HTools/Program/Hspace.hs,
Cluster.hs tryAlloc and iterateAlloc, Cluster/AllocatePrimitives.hs, Cluster/AllocationSolution.hs,
GlobalN1.hs), checked against Debian's hspace:

- The new instances are of one spec (memory, disk, vCPUs, the std spec's spindle use, also their disks' spindles
  under exclusive storage, as hspace's instFromSpec), running, auto_balance,
  on the disk template asked (default: the first the cluster's policy allows).
- Nothing fits while an online node fails N+1 already ("FailN1").
- Each is placed where the cluster's score (hbal's, over every node) ends lowest: on a pair of online nodes of
  one allocable group for drbd, on one node otherwise, each node passing hbal's checks (Node.addPri, addSec)
  and the group's policy (the spec within its bounds, the template allowed). Of equal scores the last tried
  wins, as in hspace.
- For templates other than drbd, a placement must also leave the cluster globally N+1 redundant: for every
  node, its drbd primaries fail over to their secondaries (migration tags allowing) and its other instances
  can be started again elsewhere in its group, largest memory first, with the hard checks only (memory, disk).
  A placement that does not counts as "FailN1".
- It stops at the first instance that fits nowhere; the reason given is the most frequent refusal of that last
  round (hspace's order breaks ties).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hostagent.master.decide.balance import _migrates, rules_of
from hostagent.master.decide.htools_checks import MoveChecks, Rules, add_primary, add_secondary, fresh
from hostagent.master.decide.htools import HtoolsCluster, Instance, IPolicy, ISpec
from hostagent.master.decide.htools_search import Search, Trial

# hspace's failure modes, in its order (which breaks ties between equally frequent ones).
FAILURES = ("FailMem", "FailDisk", "FailCPU", "FailN1", "FailTags", "FailMig", "FailDiskCount", "FailSpindles")
REFUSALS = {"memory": "FailMem", "N+1": "FailMem", "disk": "FailDisk", "cpu": "FailCPU", "tags": "FailTags",
            "spindles": "FailSpindles"}
MOVABLE = ("ext", "rbd", "sharedfile", "gluster")  # shared storage: moved, not started again elsewhere
SMALL_STEP = 10


@dataclass
class Capacity:
    """What fits: how many, on which primaries, and why the next one does not."""

    template: str
    count: int = 0
    primaries: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)

    @property
    def reason(self) -> str:
        """The most frequent refusal of the last round ("" when nothing refused)."""
        ranked = sorted((r for r in self.failures if self.failures[r]), key=lambda r: (-self.failures[r],
                                                                                         FAILURES.index(r)))
        return ranked[0] if ranked else ""


def capacity(cluster: HtoolsCluster, spec: ISpec, template: str | None = None, limit: int | None = None) -> Capacity:
    """How many instances of `spec` fit in `cluster` (at most `limit`)."""
    main = next((p for p in reversed(cluster.ipolicies) if p.owner == ""), None)
    template = template or (main.disk_templates[0] if main and main.disk_templates else "drbd")
    state = Search(cluster, None)
    found = Capacity(template)
    bad = [n for n in state.nodes.values() if not n.offline and state.fails_n1(n.name)]
    if bad:
        found.failures["FailN1"] = 1
        return found
    plan = _Plan(cluster, state, spec, template)
    plan.iterate(found, state, limit, huge=True)
    return found


class _Plan:
    def __init__(self, cluster: HtoolsCluster, state: Search, spec: ISpec, template: str) -> None:
        self.cluster, self.spec, self.template = cluster, spec, template
        groups = {g.uuid: g for g in cluster.groups}
        self.rules = {g.uuid: rules_of(cluster, g) for g in cluster.groups}
        self.policies = {g.uuid: cluster.policy_of(g) for g in cluster.groups}
        allocable = [n for n in state.members if not state.nodes[n].offline
                     and groups[state.nodes[n].group_uuid].alloc_policy != "unallocable"]
        if template == "drbd":
            self.targets = [(p, s) for p in allocable for s in allocable
                            if p != s and state.nodes[p].group_uuid == state.nodes[s].group_uuid]
        else:
            self.targets = [(p, "") for p in allocable]
        self.checked = template != "drbd"  # hspace checks global N+1 for the other templates only

    def iterate(self, found: Capacity, state: Search, limit: int | None, huge: bool) -> Search:
        """hspace's iterateAlloc: big steps without the global N+1 check, kept when the result passes it, else
        smaller steps, else one at a time with it (the same result, sooner)."""
        if not self.checked:
            return self.steps(found, state, limit, check=False)
        size = self._guess(state) if huge else SMALL_STEP
        step_limit = size if limit is None else min(size, limit)
        left = None if limit is None else max(0, limit - size)
        attempt = Capacity(found.template, found.count, Counter(found.primaries))
        after = self.steps(attempt, state.clone(), step_limit, check=False)
        if redundant(after, self.rules):
            progress = attempt.count > found.count
            found.count, found.primaries, found.failures = attempt.count, attempt.primaries, attempt.failures
            if left == 0 or not progress:
                return after
            return self.iterate(found, after, left, huge)
        if huge:
            return self.iterate(found, state, limit, huge=False)
        return self.steps(found, state, limit, check=True)

    def _guess(self, state: Search) -> int:
        unused = sum(n.free_mem_mib for n in state.nodes.values())
        reserved = round(max((n.total_mem_mib for n in state.nodes.values()), default=0))
        guess = (unused - reserved) // max(1, self.spec.memory_mib) - len(state.nodes)
        return max(20, guess)

    def steps(self, found: Capacity, state: Search, limit: int | None, check: bool) -> Search:
        """One instance at a time, until one fits nowhere or `limit` are placed."""
        placed = 0
        while limit is None or placed < limit:
            new = Instance(f"new-{found.count}", self.spec.memory_mib, self.spec.disk_mib, self.spec.cpus, "running",
                           True, "", "", self.template, (), self.spec.spindle_use, self.spec.spindle_use)
            best, failures = self._place(state, new, redundant_after(state, self.rules) if check else None)
            found.failures = failures
            if best is None:
                break
            state.commit(best)
            state.order.append(new.name)
            found.primaries[best.placed[0]] += 1
            found.count += 1
            placed += 1
        return state

    def _place(self, state: Search, new: Instance,
               passes: Callable[[Trial], bool] | None) -> tuple[Trial | None, Counter[str]]:
        """The best placement of `new` (the last of equal scores), and every refusal met."""
        failures: Counter[str] = Counter()
        scored: list[tuple[float, int, Trial]] = []
        for index, (primary, secondary) in enumerate(self.targets):
            group = state.nodes[primary].group_uuid
            policy = self.policies[group]
            misfit = _policy_misfit(self.spec, self.template, policy) if policy else ""
            if misfit:
                failures[misfit] += 1
                continue
            rules = self.rules[group]
            why = add_primary(fresh(state, primary), new, rules, False) or \
                (add_secondary(fresh(state, secondary), new, primary, rules, False) if secondary else "")
            if why:
                failures[REFUSALS[why]] += 1
                continue
            trial = state.trial_new(new, primary, secondary)
            value = state.exact(trial)
            if not math.isnan(value):
                scored.append((value, index, trial))
        scored.sort(key=lambda entry: (entry[0], -entry[1]))  # equal scores: the last tried first
        for _, _, trial in scored:
            if passes is None or passes(trial):
                return trial, failures
            failures["FailN1"] += 1
        return None, failures


def _policy_misfit(spec: ISpec, template: str, policy: IPolicy) -> str:
    """Why the group's policy refuses an instance of `spec` ("" when it fits one of its bounds)."""
    if template not in policy.disk_templates:
        return "FailDisk"
    reason = "FailMem"
    for low, high in policy.min_max:
        for name, reason in (("memory_mib", "FailMem"), ("cpus", "FailCPU"), ("disk_mib", "FailDisk"),
                             ("disks", "FailDiskCount"), ("spindle_use", "FailSpindles")):
            if not getattr(low, name) <= getattr(spec, name) <= getattr(high, name):
                break
        else:
            return ""
    return reason


def redundant_after(state: Search, rules: dict[str, Rules]) -> Callable[[Trial], bool]:
    def passes(trial: Trial) -> bool:
        after = state.clone()
        after.commit(trial)
        return redundant(after, rules)
    return passes


def redundant(state: Search, rules: dict[str, Rules]) -> bool:
    """Ganeti's global N+1: every node's instances can go elsewhere should it fail."""
    return all(_evacuable(state, name, rules) for name in state.members)


def _evacuable(state: Search, name: str, rules: dict[str, Rules]) -> bool:
    """Node `name` fails: its drbd primaries fail over (migration tags allowing), its other primaries start
    again on another node of its group, largest memory first; only the hard checks apply (GlobalN1.hs ignores
    soft errors: N+1, vCPU ratio, tags)."""
    sim = state.clone()
    node = sim.nodes[name]
    group_rules = rules[node.group_uuid]
    primaries = [sim.instances[i] for i in reversed(sim.order) if i in sim.instances
                 and sim.instances[i].primary == name]
    for inst in [i for i in primaries if i.disk_template == "drbd" and i.secondary]:
        if not _migrates(("failover", "", inst.secondary, inst.primary), inst, sim.nodes, group_rules):
            return False
        if MoveChecks(sim, inst, group_rules, force=True).refusal("failover", ""):
            return False
        sim.commit(sim.trial(inst, inst.secondary, inst.primary))
    others = sorted((i for i in primaries if i.disk_template != "drbd"), key=lambda i: -i.mem_mib)
    escape = [n for n in sim.members if n != name and sim.nodes[n].group_uuid == node.group_uuid]
    for inst in others:
        again = Instance(inst.name + "@" + name, inst.mem_mib, inst.disk_mib, inst.vcpus, inst.status,
                         inst.auto_balance, "", "", inst.disk_template, inst.tags, inst.spindle_use,
                         inst.disk_spindles)
        best: tuple[float, Trial] | None = None
        for target in escape:
            if add_primary(fresh(sim, target), again, group_rules, force=True):
                continue
            trial = sim.trial_new(again, target, "")
            value = sim.exact(trial)
            if best is None or value <= best[0]:
                best = (value, trial)
        if best is None:
            return False
        sim.commit(best[1])
    return True


WORDS = {"FailMem": "memory", "FailDisk": "disk", "FailCPU": "vCPUs (the policy's vCPU ratio)",
         "FailN1": "N+1 redundancy", "FailTags": "exclusion tags", "FailMig": "migration tags",
         "FailDiskCount": "disk count", "FailSpindles": "spindles"}


def summary(found: Capacity, spec: ISpec) -> dict[str, Any]:
    """The answer as `corral cluster capacity` shows it: how many fit, where, and what runs out first."""
    return {"spec": {"memory_mib": spec.memory_mib, "disk_mib": spec.disk_mib, "vcpus": spec.cpus,
                     "spindle_use": spec.spindle_use},
            "disk_template": found.template, "instances": found.count,
            "primaries": dict(sorted(found.primaries.items())), "reason": found.reason,
            "runs_out": WORDS.get(found.reason, found.reason), "refusals": dict(sorted(found.failures.items()))}


def standard_spec(cluster: HtoolsCluster) -> ISpec:
    """The cluster policy's standard instance spec, hspace's default."""
    main = next((p for p in reversed(cluster.ipolicies) if p.owner == ""), None)
    return main.std if main else ISpec(1024, 1, 10240, 1, 1, 1)
