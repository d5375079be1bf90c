"""The cluster during the balancer's search, scored incrementally: pure.

Why: hbal rescores the whole cluster for every move it tries; in Python that made the balancer take 45 s
where hbal takes half a second (4 nodes, 60 instances). A move touches at most three nodes, so this keeps,
per node, its tally and its 20 values (hostagent.master.decide.htools_score), and per term the statistics
over the group's nodes, and rescores a move from the nodes it touches only: the standard deviations are
updated as Ganeti's Utils/Statistics updateStatistics does (count, sum, variance). That update carries a
rounding error, so a move whose estimate comes within EXACT_WITHIN of the best so far is scored again exactly,
over every node in hbal's order, and only exact scores are compared: the choice is the one a full rescoring
of every move would make. On large clusters the balancer estimates most moves without a trial
(hostagent.master.decide.htools_estimate), from what this keeps per node and per term.
"""

from __future__ import annotations

import copy
import math
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any

from hostagent.master.decide.htools import HtoolsCluster, Instance
from hostagent.master.decide.htools_score import (LOCAL_STORAGE, NOT_USING_MEMORY, TERMS, Tally, Values, aggregate,
                                                  tallies_of, contribute, facts, node_value, spindle_ratios,
                                                  spindles_after, unallocated)

EXACT_WITHIN = 1e-6  # far above the update's rounding error, far below any gain worth a move
Change = list[tuple[int, float, bool, float, float]]  # Search.change_of


def uses_memory(inst: Instance) -> bool:
    return inst.status not in NOT_USING_MEMORY


@dataclass
class Trial:
    """One move tried: the instance, where it would be, and the nodes it touches as they would be (free memory,
    disk and spindles, tallies, values)."""

    inst: Instance
    placed: tuple[str, str]
    free: dict[str, tuple[int, int, int]]
    tallies: dict[str, Tally]
    values: dict[str, Values]
    approx: float


@dataclass
class _Stat:
    """One numeric term's statistics over its nodes: count, sum and (a standard deviation's) variance."""

    index: int
    weight: float
    kind: str  # stddev or sum
    over_online: bool
    count: float = 0.0
    total: float = 0.0
    variance: float = 0.0


PAIRS = next(k for k, (_, _, kind, _) in enumerate(TERMS) if kind == "pairs")
PAIRS_WEIGHT = TERMS[PAIRS][1]


class Search:
    """The cluster as the moves taken so far leave it, scored over one group's nodes."""

    def __init__(self, cluster: HtoolsCluster, group_uuid: str | None) -> None:
        """Scored over the nodes of `group_uuid`, or of the whole cluster (None, as hspace scores)."""
        self.base = cluster
        self.known = facts(cluster)
        self.nodes = dict(self.known.nodes)
        self.tallies = tallies_of(cluster)
        self.ratios = spindle_ratios(cluster)
        self.members = [n.name for n in cluster.nodes if group_uuid in (None, n.group_uuid)]  # hbal's order
        self.online = [n for n in self.members if not self.nodes[n].offline]  # a move changes no node's offline
        self.offline = [n for n in self.members if self.nodes[n].offline]
        self.order = [i.name for i in cluster.instances]
        self.instances = {i.name: i for i in cluster.instances}
        self.values = {n: node_value(self.nodes[n], self.tallies[n], self.ratios[self.nodes[n].group_uuid])
                       for n in self.members}
        self.changed: set[str] = set()  # nodes a move changed since loading
        self.gains: dict[str, dict[Any, tuple[Change, Change]]] = {}  # per node: its changes in moves, until it changes
        self.spans: dict[str, dict[Any, list[Change]]] = {}  # per node: its changes as any target (gain_range)
        self.twins: list[list[int]] = []
        self._restat()

    def fails_n1(self, node: str) -> bool:
        """Whether the node cannot take over what it is secondary for, as the tools flag it: at loading, with less
        free memory (as reported) than that; once changed, with no more unallocated memory (Node.buildPeers, and
        Node.addPri/addSec/removePri/removeSec)."""
        here, tally = self.nodes[node], self.tallies[node]
        reserved = max(tally.peers.values(), default=0)
        if node in self.changed:
            return unallocated(here, tally, here.free_mem_mib) <= reserved
        return here.free_mem_mib < reserved

    def _total(self, values: dict[str, Values]) -> float:
        """The exact score: every term over every node in order (hbal's compCV), as htools_score.score."""
        if not self.online:
            return 0.0
        columns = {over_online: list(zip(*[values[n] for n in nodes])) or [()] * len(TERMS)
                   for over_online, nodes in ((True, self.online), (False, self.offline))}
        total = 0.0
        for k, (_, weight, kind, over_online) in enumerate(TERMS):
            total += weight * aggregate(kind, columns[over_online][k])
        return total

    def _restat(self) -> None:
        self.score = self._total(self.values)
        self.stats = []
        for k, (_, weight, kind, over_online) in enumerate(TERMS):
            if kind == "pairs":
                continue
            numbers = [float(self.values[n][k]) for n in self.members  # type: ignore[arg-type]
                       if self.nodes[n].offline != over_online]
            stat = _Stat(k, weight, kind, over_online, float(len(numbers)), math.fsum(numbers))
            if kind == "stddev" and numbers:
                mean = stat.total / len(numbers)
                stat.variance = math.fsum((x - mean) * (x - mean) for x in numbers) / len(numbers)
            self.stats.append(stat)
        self.pairs: Counter[tuple[str, str]] = Counter()
        for n in self.members:
            if not self.nodes[n].offline:
                self.pairs.update(self.values[n][PAIRS])  # type: ignore[arg-type]
        self.stddev = [stat.kind == "stddev" for stat in self.stats]
        self.weights = [stat.weight for stat in self.stats]
        self.pairs_value = PAIRS_WEIGHT * float(sum(self.pairs.values()) - len(self.pairs)) if self.pairs else 0.0
        self.rows = [(s.count, s.total, s.variance) for s in self.stats]
        self.terms = [math.sqrt(s.variance) if s.kind == "stddev" else s.total for s in self.stats]
        self.approx = math.fsum(w * t for w, t in zip(self.weights, self.terms)) + self.pairs_value  # as estimated
        self.finite = all(math.isfinite(x) for s in self.stats for x in (s.total, s.variance))
        alike: dict[tuple[Any, ...], list[int]] = {}
        for pos, s in enumerate(self.stats):
            alike.setdefault((s.kind, s.over_online, s.count, s.total, s.variance), []).append(pos)
        twins = [group for group in alike.values() if len(group) > 1]  # terms whose statistics agree
        if twins != self.twins:  # the changes kept merged others
            self.gains = {}
        self.twins = twins
        self.ranges: dict[tuple[Any, ...], dict[int, tuple[float, ...]]] = {}  # Search.gain_range's, until a move

    def estimable(self, inst: Instance) -> bool:
        """Whether an Estimator may estimate `inst`'s moves: not a forthcoming instance on exclusive storage, nor
        exclusion tags where nodes have locations (the pairs term), nor with a term that is not finite."""
        if not self.finite or (inst.forthcoming and any(n.exclusive_storage for n in self.nodes.values())):
            return False
        return not (self.known.exclusion and any(self.known.locations.values())
                    and any(t.startswith(p) for t in inst.tags for p in self.known.exclusion))

    def gain_range(self, inst: Instance, shape: tuple[Any, ...], role: str) -> dict[int, tuple[float, ...]] | None:
        """Over every online node taking `inst` (of that `shape`) as primary ("p") or secondary ("s"), per term
        it changes: the lowest difference of squares, the lowest and highest difference, the highest squared
        difference. A secondary keeps for its primary memory that depends on which node that is: both ends are
        taken. None where locations count (the target's values then depend on its partner's locations too)."""
        if any(self.known.locations.values()):
            return None
        key = (shape, role)
        found = self.ranges.get(key)
        if found is not None:
            return found
        lows: dict[int, list[float]] = {}
        seen: Counter[int] = Counter()
        lists = 0
        for node in self.online:
            cached = self.spans.setdefault(node, {})
            changes = cached.get(key)
            if changes is None:
                changes = cached[key] = [self.change_of(node, values)[0] for values in self._gained(inst, node, role)]
            for change in changes:
                lists += 1
                for pos, _, _, ds, squares in change:
                    seen[pos] += 1
                    low = lows.get(pos)
                    if low is None:
                        lows[pos] = [squares, ds, ds, ds * ds]
                    else:
                        low[0], low[1], low[2], low[3] = (min(low[0], squares), min(low[1], ds), max(low[2], ds),
                                                          max(low[3], ds * ds))
        for pos, low in lows.items():
            if seen[pos] < lists:  # some node leaves the term as it is
                low[0], low[1], low[2] = min(low[0], 0.0), min(low[1], 0.0), max(low[2], 0.0)
        found = self.ranges[key] = {pos: tuple(low) for pos, low in lows.items()}
        return found

    def _gained(self, inst: Instance, node: str, role: str) -> list[Values]:
        """`node`'s values taking `inst` in `role`, with the least and the most memory kept for its partner."""
        others = [n for n in self.nodes if n != node]
        if role == "p":
            partners = [others[0] if inst.secondary and others else ""]
        else:
            peers = self.tallies[node].peers
            partners = [min(others, key=lambda n: peers.get(n, 0)), max(others, key=lambda n: peers.get(n, 0))]
        mem = inst.mem_mib if uses_memory(inst) and not inst.forthcoming else 0
        disk = inst.disk_mib if inst.disk_template in LOCAL_STORAGE and not inst.forthcoming else 0
        here = self.nodes[node]
        free = (here.free_mem_mib - (mem if role == "p" else 0), here.free_disk_mib - disk,
                spindles_after(here, here.free_spindles, inst, 1))
        found = []
        for partner in partners:
            tallies = {n: self.tallies[n].copy() for n in (node, partner) if n}
            contribute(tallies, inst, self.known, 1, (node, partner) if role == "p" else (partner, node))
            found.append(node_value(here, tallies[node], self.ratios[here.group_uuid], free))
        return found

    def change_of(self, node: str, values: Values) -> tuple[Change, Change]:
        """The terms whose value on `node` would differ with these `values`, each as (statistic's position,
        weight, whether a standard deviation, difference, difference of squares); then the same with twin terms
        (equal statistics, equal change: cpu, memory and network load, say) as one of their summed weight."""
        offline, was = self.nodes[node].offline, self.values[node]
        found: dict[int, tuple[float, float]] = {}
        for pos, stat in enumerate(self.stats):
            old, new = float(was[stat.index]), float(values[stat.index])  # type: ignore[arg-type]
            if offline != stat.over_online and not (old == new and math.isfinite(old)):
                found[pos] = (old, new)
        entries = {pos: (pos, self.weights[pos], self.stddev[pos], new - old, new * new - old * old)
                   for pos, (old, new) in found.items()}
        merged = dict(entries)
        for group in self.twins:
            if group[0] in found and all(found.get(pos) == found[group[0]] for pos in group):
                for pos in group[1:]:
                    del merged[pos]
                merged[group[0]] = (group[0], sum(self.weights[pos] for pos in group), *entries[group[0]][2:])
        return list(entries.values()), list(merged.values())

    def trial(self, inst: Instance, primary: str, secondary: str) -> Trial:
        """`inst` moved to `primary`/`secondary`: the nodes' free memory and disk follow it, and their tallies."""
        free, tallies = self._moved(inst, primary, secondary)
        values = {n: node_value(self.nodes[n], tallies[n], self.ratios[self.nodes[n].group_uuid], free[n])
                  for n in free if n in self.values}
        return Trial(inst, (primary, secondary), free, tallies, values, self._estimate(values))

    def value_after(self, inst: Instance, primary: str, secondary: str, node: str) -> Values:
        """One touched node's values in `trial` (an Estimator's part, without the rest of the trial)."""
        free, tallies = self._moved(inst, primary, secondary)
        return node_value(self.nodes[node], tallies[node], self.ratios[self.nodes[node].group_uuid], free[node])

    def _moved(self, inst: Instance, primary: str, secondary: str) -> tuple[dict[str, tuple[int, int, int]],
                                                                            dict[str, Tally]]:
        touched = [n for n in dict.fromkeys((inst.primary, inst.secondary, primary, secondary)) if n]
        mem = inst.mem_mib if uses_memory(inst) and not inst.forthcoming else 0
        disk = inst.disk_mib if inst.disk_template in LOCAL_STORAGE and not inst.forthcoming else 0
        free = {}
        for name in touched:
            node = self.nodes[name]
            freed_mem = (mem if name == inst.primary else 0) - (mem if name == primary else 0)
            freed_disk = disk * ((name in (inst.primary, inst.secondary)) - (name in (primary, secondary)))
            spindles = node.free_spindles
            if name in (inst.primary, inst.secondary):
                spindles = spindles_after(node, spindles, inst, -1)
            if name in (primary, secondary):
                spindles = spindles_after(node, spindles, inst, 1)
            free[name] = (node.free_mem_mib + freed_mem, node.free_disk_mib + freed_disk, spindles)
        if inst.forthcoming and any(self.nodes[n].exclusive_storage for n in touched):
            tallies = self._recounted(replace(inst, primary=primary, secondary=secondary), touched)
        else:
            tallies = {n: self.tallies[n].copy() for n in touched}
            contribute(tallies, inst, self.known, -1)
            contribute(tallies, inst, self.known, 1, (primary, secondary))
        return free, tallies

    def trial_new(self, inst: Instance, primary: str, secondary: str) -> Trial:
        """A new instance (no nodes yet) placed on `primary`/`secondary`."""
        touched = [n for n in (primary, secondary) if n]
        mem = inst.mem_mib if uses_memory(inst) else 0
        disk = inst.disk_mib if inst.disk_template in LOCAL_STORAGE else 0
        free = {n: (self.nodes[n].free_mem_mib - (mem if n == primary else 0), self.nodes[n].free_disk_mib - disk,
                    spindles_after(self.nodes[n], self.nodes[n].free_spindles, inst, 1)) for n in touched}
        tallies = {n: self.tallies[n].copy() for n in touched}
        contribute(tallies, inst, self.known, 1, (primary, secondary))
        values = {n: node_value(self.nodes[n], tallies[n], self.ratios[self.nodes[n].group_uuid], free[n])
                  for n in touched if n in self.values}
        return Trial(inst, (primary, secondary), free, tallies, values, self._estimate(values))

    def _estimate(self, values: dict[str, Values]) -> float:
        """The score with the touched nodes' `values`, each term updated from its statistics (Ganeti's
        updateStatistics: count, sum and variance; the variance never below 0)."""
        touched = [(self.nodes[n].offline, self.values[n], new) for n, new in values.items()]
        approx = 0.0
        for stat in self.stats:
            k, count, total, variance = stat.index, stat.count, stat.total, stat.variance
            for offline, was, now in touched:
                if offline == stat.over_online:
                    continue
                old, new = float(was[k]), float(now[k])  # type: ignore[arg-type]
                ds = new - old
                if stat.kind == "stddev":
                    variance = max(0.0, variance + ((count * (new * new - old * old) - 2 * total * ds) - ds * ds)
                                   / (count * count))
                total += ds
            approx += stat.weight * (total if stat.kind == "sum" else math.sqrt(variance))
        changed = [(was[PAIRS], now[PAIRS]) for offline, was, now in touched if not offline and (was[PAIRS] or now[PAIRS])]
        if changed:
            merged = Counter(self.pairs)
            for old_pairs, new_pairs in changed:
                merged.subtract(old_pairs)  # type: ignore[arg-type]
                merged.update(new_pairs)  # type: ignore[arg-type]
            kept = [v for v in merged.values() if v > 0]
            approx += PAIRS_WEIGHT * float(sum(kept) - len(kept))
        elif self.pairs:
            approx += PAIRS_WEIGHT * float(sum(self.pairs.values()) - len(self.pairs))
        return approx

    def _recounted(self, moved: Instance, touched: list[str]) -> dict[str, Tally]:
        """The touched nodes' tallies counted again from every instance (a forthcoming one on exclusive storage
        counts in file order)."""
        cluster = self.cluster()
        tallies = tallies_of(replace(cluster, instances=tuple(moved if i.name == moved.name else i
                                                               for i in cluster.instances)))
        return {n: tallies[n] for n in touched}

    def exact(self, trial: Trial) -> float:
        return self._total({**self.values, **trial.values})

    def commit(self, trial: Trial) -> None:
        self.changed.update(trial.free)
        for name in trial.free:
            self.gains.pop(name, None)
            self.spans.pop(name, None)
        for name, (free_mem, free_disk, free_spindles) in trial.free.items():
            self.nodes[name] = replace(self.nodes[name], free_mem_mib=free_mem, free_disk_mib=free_disk,
                                       free_spindles=free_spindles)
        self.tallies.update(trial.tallies)
        self.values.update(trial.values)
        primary, secondary = trial.placed
        self.instances[trial.inst.name] = replace(trial.inst, primary=primary, secondary=secondary)
        self._restat()

    def clone(self) -> Search:
        """An independent copy to try a sequence of moves on."""
        made = copy.copy(self)
        made.nodes, made.values, made.instances = dict(self.nodes), dict(self.values), dict(self.instances)
        made.tallies = {n: t.copy() for n, t in self.tallies.items()}
        made.order, made.changed, made.gains, made.spans = list(self.order), set(self.changed), {}, {}
        return made

    def cluster(self) -> HtoolsCluster:
        """The cluster as the moves taken leave it."""
        return replace(self.base, nodes=tuple(self.nodes[n.name] for n in self.base.nodes),
                       instances=tuple(self.instances[name] for name in self.order))
