"""Every move of one instance estimated from shared parts, for the balancer's search: pure.

Why: on 100 nodes and 2,000 instances hbal's search tries about 790,000 moves a step, and building each move
(tallies copied, the touched nodes' 20 values, every term updated) took 60 µs. The moves of one instance share
most of that work: what its old nodes become depends on the target only through the locations they share and
the memory the secondary keeps for its primary, and a target's values only on the instance's sizes and tags
(its "shape"), its role and the same two numbers. So each node's change (the terms whose value differs) is
computed once, by Search.trial's own code (Search.value_after), and kept until a move changes that node; the
statistics after the old nodes' change once per instance and step; and a move's estimate is the target's terms
updated from those, as Search._estimate does node by node in the same order. Most moves need not even that:
per instance, kind of move and old nodes' change, a floor bounds every target's estimate from below (each term
at its lowest over the changes any online node would see, Search.gain_range), and a kind whose floor is not
below the best so far (plus EXACT_WITHIN) is skipped whole. A move whose estimate comes near the best is still
built and scored exactly by the balancer, in hbal's order, so the plan is the one Search.trial alone gives: a
move skipped here scores above the best, and a tie is never skipped.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from hostagent.master.decide.htools import Instance
from hostagent.master.decide.htools_search import EXACT_WITHIN, Change, Search


def estimator(state: Search, inst: Instance) -> Estimator | None:
    """The estimates of `inst`'s moves, or None where only Search.trial gives them (Search.estimable)."""
    return Estimator(state, inst) if state.estimable(inst) else None


class Estimator:
    """The estimates of one instance's moves, against the statistics of the search as it is now."""

    def __init__(self, state: Search, inst: Instance) -> None:
        self.state, self.inst = state, inst
        self.old = [n for n in dict.fromkeys((inst.primary, inst.secondary)) if n and n in state.values]
        self.shape = (inst.mem_mib, inst.disk_mib, inst.vcpus, inst.spindle_use, inst.status, inst.auto_balance,
                      inst.forthcoming, inst.disk_template, inst.disk_spindles, inst.tags, bool(inst.secondary))
        self.placement = (inst.name, inst.primary, inst.secondary)
        self.peer_mem = inst.mem_mib if inst.status != "ADMIN_offline" and inst.auto_balance else 0
        peers = dict(state.tallies[inst.secondary].peers) if inst.secondary else {}
        if peers:
            peers[inst.primary] = peers.get(inst.primary, 0) - self.peer_mem
        self.left_peers = peers  # the old secondary's peers once the instance leaves it
        self.parts: dict[tuple[Any, ...], tuple[list[tuple[float, float, float]], list[float], float, int]] = {}
        self.floors: dict[tuple[Any, ...], float] = {}

    def _effect(self, node: str, primary: str, secondary: str) -> tuple[str, int] | None:
        """What the node's values depend on besides its tally and the instance: as primary, the locations it
        shares with the secondary; as secondary, the memory it then keeps (its largest peer)."""
        state = self.state
        if node == primary:
            here = state.known.locations[node]
            return ("p", len(here & state.known.locations[secondary]) if here and secondary else 0)
        if node == secondary:
            peers = self.left_peers if node == self.inst.secondary else state.tallies[node].peers
            return ("s", max(max(peers.values(), default=0), peers.get(primary, 0) + self.peer_mem))
        return None

    def _change(self, node: str, key: tuple[Any, ...], primary: str, secondary: str) -> tuple[Change, Change]:
        state = self.state
        cached = state.gains.setdefault(node, {})
        found = cached.get(key)
        if found is None:
            found = cached[key] = state.change_of(node, state.value_after(self.inst, primary, secondary, node))
        return found

    def estimate(self, primary: str, secondary: str, bar: float) -> float | None:
        """The move's estimate (Search.trial's approx), or None when it needs the trial itself; infinity when no
        target of its kind can come below `bar` (the floor of its part)."""
        state, old = self.state, self.old
        new = [n for n in (primary, secondary) if n and n not in old]
        if len(new) > 1 or (new and new[0] not in state.values):
            return None
        effects = tuple(self._effect(n, primary, secondary) for n in old)
        part = self.parts.get(effects)
        if part is None:
            part = self.parts[effects] = self._part([self._change(n, (self.placement, effect), primary, secondary)[0]
                                                     for n, effect in zip(old, effects)])
        stats, terms, approx, twinned = part
        if not new:
            return approx if math.isfinite(approx) else None
        target = new[0]
        role = "p" if target == primary else "s"
        floor = self.floors.get(effects)
        if floor is None:
            floor = self.floors[effects] = self._floor(part, role)
        if floor >= bar:
            return math.inf
        changes = self._change(target, (self.shape, self._effect(target, primary, secondary)), primary,
                               secondary)[twinned]
        for pos, weight, stddev, ds, squares in changes:
            count, total, variance = stats[pos]
            if stddev:
                approx += weight * (math.sqrt(max(0.0, variance + ((count * squares - 2 * total * ds) - ds * ds)
                                                  / (count * count))) - terms[pos])
            else:
                approx += weight * (total + ds - terms[pos])
        return approx if math.isfinite(approx) else None

    def narrowed(self, place: Callable[[str], tuple[str, str]], targets: list[str], bar: float) -> list[str]:
        """Of one kind of move (`place`: a target's primary and secondary), the targets that may come below `bar`.
        The old nodes change alike for every target but those a secondary keeps more memory for (it is already
        secondary for them): if the others' floor is not below `bar`, only those remain."""
        state, inst = self.state, self.inst
        special: set[str] = set()
        if any(state.known.locations.values()):
            return targets
        primary, secondary = place("")
        for node in self.old:
            if node == secondary and not primary:  # secondary of the target, as the target's primary
                peers = self.left_peers if node == inst.secondary else state.tallies[node].peers
                base = max(peers.values(), default=0)
                usual = max(base, self.peer_mem)
                special = {n for n, kept in peers.items() if max(base, kept + self.peer_mem) != usual}
        usual_target = next((n for n in targets if n not in special), None)
        if usual_target is None or self.estimate(*place(usual_target), bar) != math.inf:
            return targets
        return [n for n in targets if n in special]

    def _floor(self, part: tuple[list[tuple[float, float, float]], list[float], float, int], role: str) -> float:
        """A bound no target's estimate in this part goes below: each term at its lowest over what any target
        (Search.gain_range) could add to it."""
        ranges = self.state.gain_range(self.inst, self.shape, role)
        if ranges is None:
            return -math.inf
        stats, terms, floor, _ = part
        for pos, (squares, ds_low, ds_high, dd) in ranges.items():
            count, total, variance = stats[pos]
            weight = self.state.weights[pos]
            if self.state.stddev[pos]:
                shift = max(total * ds_low, total * ds_high)
                floor += weight * (math.sqrt(max(0.0, variance + ((count * squares - 2 * shift) - dd)
                                                 / (count * count))) - terms[pos])
            else:
                floor += weight * (total + ds_low - terms[pos])
        return floor - EXACT_WITHIN * 1e-3  # the estimate's own rounding

    def _part(self, changes: list[Change]) -> tuple[list[tuple[float, float, float]], list[float], float, int]:
        """The statistics once the old nodes have changed, each term's value, their weighted sum, and whether
        twin terms are still alike (1: a target's change may count them as one)."""
        state = self.state
        stats, terms, approx = list(state.rows), list(state.terms), state.approx
        changed = set()
        for change in changes:
            for pos, _, stddev, ds, squares in change:
                count, total, variance = stats[pos]
                if stddev:
                    variance = max(0.0, variance + ((count * squares - 2 * total * ds) - ds * ds) / (count * count))
                stats[pos] = (count, total + ds, variance)
                changed.add(pos)
        for pos in changed:
            term = math.sqrt(stats[pos][2]) if state.stddev[pos] else stats[pos][1]
            approx += state.weights[pos] * (term - terms[pos])
            terms[pos] = term
        twinned = all(stats[pos] == stats[group[0]] for group in state.twins for pos in group)
        return stats, terms, approx, int(twinned)
