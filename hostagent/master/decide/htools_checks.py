"""Whether a node may take an instance, as hbal and hspace check it, step by step along each move: pure.

Why: a plan is only worth what its moves are worth on the cluster. A move that Ganeti's rules refuse (a
switchover onto a node without the memory, a node pushed over its policy's ratios) must not be in Corral's
plan, nor an instance counted as fitting where hspace's rules say it does not (issue 15).

Facts from Ganeti 3.0.2 (src/Ganeti/HTools/Node.hs addPriEx, addSecExEx, unallocatedMem, buildPeers;
Cluster/Moves.hs applyMoveEx; Cluster.hs checkInstanceMove; Program/Hbal.hs checkGroup), checked against
Debian's hbal and hspace on the ganeti-testsuite data sets:
- A node's free memory in these checks is its unallocated memory: the smaller of what it reports free and
  what its record leaves (total - node - running primaries).
- Hard checks, never skipped: a primary leaves more than 0 memory, local storage more than 0 disk.
- Soft checks, skipped under --ignore-soft-errors (and for the steps of a move away from an offline node):
  the spindles of the policy's ratio, the node newly failing N+1 (one that fails already may take more), the
  vCPU ratio, an exclusion tag already on the node, a secondary with no more memory than the instance's, and
  the same memory, disk, spindle and vCPU limits counted with forthcoming instances.
- By default nothing else is done about a node that already violates its policy: it takes no more of what
  it is over on (hbal only warns "the set of moves might be too restricted; consider using the
  --ignore-soft-errors option"). Taking instances away is never checked.
- Each step checks a node as the move has left it at that point: the instance's old roles on it removed
  first. A replace-primary is a switchover (the old secondary runs the instance: it needs the memory), a new
  primary, then the old secondary a secondary again; a replace-secondary adds the primary back unchecked but
  for the hard checks.
- Under exclusive storage a node's free spindles (followed through the moves) must not go below 0: a hard
  check; an instance of unknown spindles is refused there.
Not modelled: the free spindles counted with forthcoming instances (a soft check under exclusive storage).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from hostagent.master.decide.htools import Instance, Node
from hostagent.master.decide.htools_score import (LOCAL_STORAGE, Tally, contribute, spindles_after, tallies_of,
                                                  unallocated)

if TYPE_CHECKING:
    from hostagent.master.decide.htools_search import Search


@dataclass(frozen=True)
class Rules:
    """What a group's policy and the cluster's tags allow (hostagent.master.decide.balance.rules_of)."""

    vcpu_ratio: float
    spindle_ratio: float
    exclusion: list[str]
    migration: list[str]  # the cluster's migration tag prefixes (htools:migration:PREFIX)
    allowed: list[tuple[str, str]]  # (from, to) migration tags allowed all the same (htools:allowmigration:A::B)


@dataclass(frozen=True)
class Bare:
    """A node as a move's step finds it: its tally and free memory, disk and spindles, and whether Ganeti flags
    it as failing N+1 at that point."""

    node: Node
    tally: Tally
    free_mem: int
    free_disk: int
    free_spindles: int
    failed_n1: bool

    @property
    def unallocated(self) -> int:
        return unallocated(self.node, self.tally, self.free_mem)

    @property
    def reserved(self) -> int:
        return max(self.tally.peers.values(), default=0)


def fresh(state: Search, name: str) -> Bare:
    """A node as the search holds it (one the moving instance is not on)."""
    node = state.nodes[name]
    return Bare(node, state.tallies[name], node.free_mem_mib, node.free_disk_mib, node.free_spindles,
                state.fails_n1(name))


def _uses_memory(inst: Instance) -> bool:
    """Ganeti's Instance.usesMemory: running (or in an error state that may run), and not forthcoming."""
    return not inst.forthcoming and inst.status not in ("ADMIN_down", "ADMIN_offline", "ERROR_down", "USER_down")


def add_primary(b: Bare, inst: Instance, rules: Rules, force: bool) -> str:
    """Why node `b` cannot take `inst` as its primary (Node.addPriEx): "memory", "disk", "spindles", "N+1",
    "cpu", "tags"; "" when it can. `force`: the hard checks only."""
    if inst.forthcoming:
        return "" if force else _primary_forthcoming(b, inst, rules)
    node, t = b.node, b.tally
    local = inst.disk_template in LOCAL_STORAGE
    free = b.unallocated - (inst.mem_mib if _uses_memory(inst) else 0)
    if free <= 0:
        return "memory"
    if local and b.free_disk - inst.disk_mib <= 0:
        return "disk"
    if local and spindles_after(node, b.free_spindles, inst, 1) < 0:
        return "spindles"
    if force:
        return ""
    if local and _over_spindles(node, t.spindle_use + inst.spindle_use, rules):
        return "disk"
    if free <= b.reserved and not b.failed_n1:
        return "N+1"
    if _over_cpus(node, t.vcpus + _vcpus(inst), rules):
        return "cpu"
    if any(tag in t.tags for tag in _exclusion_tags(inst, rules)):
        return "tags"
    return _primary_forthcoming(b, inst, rules)


def _primary_forthcoming(b: Bare, inst: Instance, rules: Rules) -> str:
    """addPriEx's limits counted with forthcoming instances (checkForthcomingViolation)."""
    node, t = b.node, b.tally
    local = inst.disk_template in LOCAL_STORAGE
    if b.free_mem - t.mem_not_running_forth - inst.mem_mib <= 0:
        return "memory"
    if local and b.free_disk - t.disk_forth - inst.disk_mib <= 0:
        return "disk"
    if local and _over_spindles(node, t.spindle_use_forth + inst.spindle_use, rules):
        return "disk"
    if _over_cpus(node, t.vcpus_forth + _vcpus(inst), rules):
        return "cpu"
    return ""


def add_secondary(b: Bare, inst: Instance, primary: str, rules: Rules, force: bool,
                  ignore_disks: bool = False) -> str:
    """Why node `b` cannot take `inst` as its secondary, for `primary` (Node.addSecExEx): "memory", "disk",
    "spindles", "N+1"; "" when it can. `ignore_disks`: a failover away from an offline primary, which keeps its
    disks."""
    node, t = b.node, b.tally
    needed = inst.mem_mib if inst.status != "ADMIN_offline" and inst.auto_balance else 0
    if not inst.forthcoming:
        if not ignore_disks and b.free_disk - inst.disk_mib <= 0:
            return "disk"
        if spindles_after(node, b.free_spindles, inst, 1) < 0:
            return "spindles"
        if force:
            return ""
        if _over_spindles(node, t.spindle_use + _spindles(inst), rules):
            return "disk"
        free = b.unallocated
        if needed >= free:
            return "memory"
        if free <= max(b.reserved, t.peers.get(primary, 0) + needed) and not b.failed_n1:
            return "N+1"
    elif force:
        return ""
    if b.free_disk - t.disk_forth - inst.disk_mib <= 0:
        return "disk"
    if _over_spindles(node, t.spindle_use_forth + _spindles(inst), rules):
        return "disk"
    if needed >= b.free_mem - t.mem_not_running_forth:
        return "memory"
    return ""


def _vcpus(inst: Instance) -> int:
    return inst.vcpus if inst.status != "ADMIN_offline" else 0


def _spindles(inst: Instance) -> int:
    return inst.spindle_use if inst.disk_template in LOCAL_STORAGE else 0


def _over_spindles(node: Node, use: float, rules: Rules) -> bool:
    """Over the policy's spindle ratio (never under exclusive storage, where Ganeti counts no spindle use)."""
    return not node.exclusive_storage and use > rules.spindle_ratio * node.spindles


def _over_cpus(node: Node, vcpus: int, rules: Rules) -> bool:
    return rules.vcpu_ratio >= 0 and (node.node_cpus + vcpus) / node.cpus > rules.vcpu_ratio


def _exclusion_tags(inst: Instance, rules: Rules) -> list[str]:
    return [tag for tag in inst.tags if any(tag.startswith(prefix) for prefix in rules.exclusion)]


class MoveChecks:
    """hbal's checks of one instance's moves in one step of the search: the instance's nodes without it are
    worked out once, for every move tried."""

    def __init__(self, state: Search, inst: Instance, rules: Rules, force: bool) -> None:
        self.state, self.inst, self.rules, self.force = state, inst, rules, force
        self._bare: dict[str, Bare] | None = None

    def bare(self, name: str) -> Bare:
        """Node `name` without the instance's old roles on it (Node.removePri, removeSec)."""
        if self._bare is None:
            self._bare = _without(self.state, self.inst)
        return self._bare[name]

    def refusal(self, kind: str, target: str) -> str:
        """Why hbal refuses the move (Moves.applyMoveEx's steps, in order); "" when it passes."""
        inst, rules, state = self.inst, self.rules, self.state
        p, s = inst.primary, inst.secondary
        force_p = self.force or state.nodes[p].offline
        force_s = self.force or (bool(s) and state.nodes[s].offline)
        if kind == "failover":
            return (add_primary(self.bare(s), inst, rules, force_p)
                    or add_secondary(self.bare(p), inst, s, rules, force_p, ignore_disks=state.nodes[p].offline))
        if kind == "replace-secondary":
            return (add_secondary(fresh(state, target), inst, p, rules, force_s)
                    or add_primary(self.bare(p), inst, rules, True))
        if kind == "replace-and-failover":
            return (add_primary(fresh(state, target), inst, rules, self.force)
                    or add_secondary(self.bare(p), inst, target, rules, force_s))
        if kind == "failover-and-replace":
            return (add_primary(self.bare(s), inst, rules, force_p)
                    or add_secondary(fresh(state, target), inst, s, rules, force_p))
        if kind == "replace-primary":  # the switchover to the old secondary comes first
            return (add_primary(self.bare(s), inst, rules, force_p)
                    or add_primary(fresh(state, target), inst, rules, force_p)
                    or add_secondary(self.bare(s), inst, target, rules, force_p))
        if kind == "failover-to-any":
            return add_primary(fresh(state, target), inst, rules, force_p)
        raise ValueError(f"unknown move {kind!r}")


def _without(state: Search, inst: Instance) -> dict[str, Bare]:
    """The instance's nodes with its roles on them taken away, and Ganeti's N+1 flag as the removal sets it."""
    names = [n for n in dict.fromkeys((inst.primary, inst.secondary)) if n]
    tallies = {n: state.tallies[n].copy() for n in names}
    try:
        contribute(tallies, inst, state.known, -1)
    except ValueError:  # a forthcoming instance on exclusive storage counts in file order: count again without it
        cluster = state.cluster()
        counted = tallies_of(replace(cluster, instances=tuple(i for i in cluster.instances if i.name != inst.name)))
        tallies = {n: counted[n] for n in names}
    mem = inst.mem_mib if _uses_memory(inst) else 0
    disk = inst.disk_mib if inst.disk_template in LOCAL_STORAGE and not inst.forthcoming else 0
    found = {}
    for name in names:
        node = state.nodes[name]
        free_mem = node.free_mem_mib + (mem if name == inst.primary else 0)
        free_spindles = spindles_after(node, node.free_spindles, inst, -1)
        tally = tallies[name]
        if inst.forthcoming:  # Ganeti's removal of a forthcoming instance leaves the flag as it was
            failed = state.fails_n1(name)
        else:
            failed = unallocated(node, tally, free_mem) <= max(tally.peers.values(), default=0)
        found[name] = Bare(node, tally, free_mem, node.free_disk_mib + disk, free_spindles, failed)
    return found
