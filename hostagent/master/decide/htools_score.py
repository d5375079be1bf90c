"""The cluster score hbal prints ("Initial score: 2.74131372"), computed on an htools cluster: pure.

Why: Corral's balancer states the quality of its plan as the number Ganeti's
hbal would print for the same cluster, before and after (issue 15), so the two
can be compared file by file. Lower is better; 0 is a cluster whose nodes all
look alike, with nothing reserved for N+1 and nothing on offline nodes.

What hbal 3.0.2 computes (src/Ganeti/HTools/Cluster/Metrics.hs compCV and
detailedCVInfoExt; the per-node values from Node.hs, Loader.hs mergeData and
updateMissing, Utils/Statistics.hs; checked against Debian's hbal -v -v -v on
the ganeti-testsuite data sets): a weighted sum of 20 terms, each a population
standard deviation or a plain sum of one value per node, over the online nodes
(the two offline_* terms: over the offline ones). With no online node at all
there is no term and the score is 0. Per node, with only the real (not
forthcoming) instances unless the name ends in _forth:
- free_mem_cv (x0.5): min(total - node - running primaries' memory, free) / total memory;
- free_disk_cv (x0.5): free / total disk (1 with no disk); free / total spindles under exclusive storage;
- n1_cnt (x1): the node's primaries plus secondaries when it fails N+1, else 0 (so a count
  of instances, not of nodes as hbal(1) says). It fails
  when its free memory (as read) is below the largest sum, over the primary nodes it is
  secondary for, of the memory of those of their instances it is secondary for that
  are not ADMIN_offline and have auto_balance: the memory it would have to give
  should that primary fail (once a move changed the node: when its unallocated memory
  is not above that sum, the flag Node.addPri and its kin set);
- reserved_mem_cv (x1) and reserved_mem_rtotal (x0.25, a sum): that largest sum / total memory;
- offline_all_cnt (x4) and offline_pri_cnt (x16): instances on offline nodes (primary or
  secondary, and primary only);
- vcpu_ratio_cv (x0.5): (node cpus + vcpus of the primaries not ADMIN_offline) / cpus / cpu speed;
- cpu_load_cv, mem_load_cv, net_load_cv (x1 each): the number of primaries, and
  disk_load_cv (x1): primaries plus secondaries (hbal's load with no -U file or
  monitoring data: 1 per instance);
- pri_tags_score (x2): primaries (forthcoming ones too) sharing an exclusion tag (cluster
  tags htools:iextags:PREFIX), counted as the sum over tags of (count - 1);
- spindles_cv (x0.5): spindle use of the drbd and plain instances on it / (the group's
  ipolicy spindle ratio x node spindles); 0 under exclusive storage;
- free_mem_cv_forth (x0.5): (free - memory of the primaries that use none, forthcoming
  or stopped) / total memory; free_disk_cv_forth, vcpu_ratio_cv_forth, spindles_cv_forth
  (x0.5 each): as without _forth, forthcoming instances counted too (their disk and, under
  exclusive storage, their spindles taken from what the node reports free);
- location_score (x1, a sum): per primary, the location tags (cluster tags
  htools:nlocation:PREFIX) its primary and secondary node share, plus its desired
  locations (htools:desiredlocation:PREFIX) its primary node lacks;
- location_exclusion_score (x1): over (location tag, exclusion tag) pairs of primaries,
  the sum of (count - 1) across the whole group.
hbal scores one node group (`-G`, or the only one with nodes); hinfo's "Cluster
score" is the same over every node. Divisions follow IEEE floats as Haskell's do
(0/0 is NaN), and sums run in the tools' order, so the printed digits agree.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from functools import reduce
from operator import add
from typing import Any, Sequence, cast
from decimal import ROUND_HALF_EVEN, Context, Decimal

from hostagent.master.decide.htools import DEFAULT_SPINDLE_RATIO, HtoolsCluster, Instance, Node

EXCLUSION_PREFIX = "htools:iextags:"
LOCATION_PREFIX = "htools:nlocation:"
DESIRED_LOCATION_PREFIX = "htools:desiredlocation:"
LOCAL_STORAGE = ("drbd", "plain")
NOT_USING_MEMORY = ("ADMIN_down", "ADMIN_offline", "ERROR_down", "USER_down")

# (name, weight, how the per-node values aggregate, over online nodes), in hbal's order.
TERMS = (("free_mem_cv", 0.5, "stddev", True), ("free_disk_cv", 0.5, "stddev", True), ("n1_cnt", 1.0, "sum", True),
         ("reserved_mem_cv", 1.0, "stddev", True), ("offline_all_cnt", 4.0, "sum", False),
         ("offline_pri_cnt", 16.0, "sum", False), ("vcpu_ratio_cv", 0.5, "stddev", True),
         ("cpu_load_cv", 1.0, "stddev", True), ("mem_load_cv", 1.0, "stddev", True),
         ("disk_load_cv", 1.0, "stddev", True), ("net_load_cv", 1.0, "stddev", True),
         ("pri_tags_score", 2.0, "sum", True), ("spindles_cv", 0.5, "stddev", True),
         ("free_mem_cv_forth", 0.5, "stddev", True), ("free_disk_cv_forth", 0.5, "stddev", True),
         ("vcpu_ratio_cv_forth", 0.5, "stddev", True), ("spindles_cv_forth", 0.5, "stddev", True),
         ("location_score", 1.0, "sum", True), ("location_exclusion_score", 1.0, "pairs", True),
         ("reserved_mem_rtotal", 0.25, "sum", True))


@dataclass
class Tally:
    """What a node's instances add up to, as the tools count them while loading; one instance's share is added
    or taken away by `contribute`, so the balancer rescores only the nodes a move touches."""

    primaries: int = 0
    secondaries: int = 0
    running_mem: int = 0  # primaries that use memory
    vcpus: int = 0
    vcpus_forth: int = 0
    mem_not_running_forth: int = 0  # primaries, forthcoming included, that use no memory
    disk_forth: int = 0  # forthcoming primaries and secondaries on local storage
    free_spindles_forth: int | None = None  # None: untouched by forthcoming instances
    spindle_use: float = 0.0
    spindle_use_forth: float = 0.0
    peers: Counter[str] = field(default_factory=Counter)  # primary node -> memory to take over from it
    tags: Counter[str] = field(default_factory=Counter)  # exclusion tags of primaries, forthcoming included
    real_tags: Counter[str] = field(default_factory=Counter)  # ... of the primaries that are not forthcoming
    location: int = 0
    pairs: Counter[tuple[str, str]] = field(default_factory=Counter)

    def copy(self) -> Tally:
        """A copy to change: `contribute` replaces the tag counters it changes, so only the peers are copied."""
        made = Tally.__new__(Tally)
        made.__dict__.update(self.__dict__)
        made.peers = Counter(self.peers)
        return made


@dataclass(frozen=True)
class Facts:
    """The cluster-wide facts an instance's share depends on: its nodes, their locations, the tag prefixes."""

    nodes: dict[str, Node]
    locations: dict[str, set[str]]
    exclusion: list[str]
    desired: list[str]


def facts(cluster: HtoolsCluster) -> Facts:
    return Facts({n.name: n for n in cluster.nodes}, {n.name: _locations(cluster, n) for n in cluster.nodes},
                 _prefixed(cluster.tags, EXCLUSION_PREFIX), _prefixed(cluster.tags, DESIRED_LOCATION_PREFIX))


def _div(a: float, b: float) -> float:
    """a / b with IEEE semantics (Haskell's Double), where Python would raise."""
    if b:
        return a / b
    return math.nan if a == 0 or math.isnan(a) else math.copysign(math.inf, a) * math.copysign(1.0, b)


def _prefixed(tags: tuple[str, ...], prefix: str) -> list[str]:
    return [t[len(prefix):] for t in tags if t.startswith(prefix) and t[len(prefix):]]


def _locations(cluster: HtoolsCluster, node: Node) -> set[str]:
    prefixes = [t[len(LOCATION_PREFIX):] + ":" for t in cluster.tags if t.startswith(LOCATION_PREFIX)]
    return {t for t in node.tags if any(t.startswith(p) for p in prefixes)}


def tallies_of(cluster: HtoolsCluster) -> dict[str, Tally]:
    known = facts(cluster)
    tallies = {n.name: Tally() for n in cluster.nodes}
    for inst in cluster.instances:
        if inst.primary not in known.nodes or (inst.secondary and inst.secondary not in known.nodes):
            raise ValueError(f"instance '{inst.name}' is on a node the cluster does not have")
    for inst in cluster.instances:  # in file order, as the tools add them
        contribute(tallies, inst, known)
    return tallies


def _count(counter: Counter[Any], keys: list[Any], sign: int) -> Counter[Any]:
    """`counter` with each key counted once more (`sign` 1) or once less, as a new counter when it changes."""
    if not keys:
        return counter
    counter = Counter(counter)
    for key in keys:
        counter[key] += sign
        if counter[key] <= 0:
            del counter[key]
    return counter


def contribute(tallies: dict[str, Tally], inst: Instance, known: Facts, sign: int = 1,
               placed: tuple[str, str] | None = None) -> None:
    """Add `inst`'s share to the tallies, on its primary and secondary or those `placed` names, or with `sign` -1
    take it away. A forthcoming instance on exclusive storage cannot be taken away (its spindles count in file
    order): ValueError."""
    nodes = known.nodes
    primary, secondary = placed or (inst.primary, inst.secondary)
    if sign < 0 and inst.forthcoming and any(nodes[n].exclusive_storage for n in (primary, secondary) if n):
        raise ValueError(f"forthcoming instance '{inst.name}' on exclusive storage counts in file order")
    excl = [t for t in inst.tags if any(t.startswith(p) for p in known.exclusion)]
    local = inst.disk_template in LOCAL_STORAGE
    not_offline = inst.status != "ADMIN_offline"
    p, pnode = tallies[primary], nodes[primary]
    p.tags = _count(p.tags, excl, sign)
    p.vcpus_forth += sign * (inst.vcpus if not_offline else 0)
    p.mem_not_running_forth += sign * (inst.mem_mib if inst.forthcoming or inst.status in NOT_USING_MEMORY else 0)
    p.spindle_use_forth += sign * (inst.spindle_use if local and not pnode.exclusive_storage else 0)
    if inst.forthcoming:
        _forthcoming_disk(p, pnode, inst, sign)
    else:
        p.real_tags = _count(p.real_tags, excl, sign)
        p.primaries += sign
        p.running_mem += sign * (0 if inst.status in NOT_USING_MEMORY else inst.mem_mib)
        p.vcpus += sign * (inst.vcpus if not_offline else 0)
        p.spindle_use += sign * (inst.spindle_use if local and not pnode.exclusive_storage else 0)
        here = known.locations[primary]
        shared = here & known.locations[secondary] if secondary else set()
        wanted = {t for t in inst.tags if any(t.startswith(d) for d in known.desired)}
        p.location += sign * (len(shared) + len(wanted) - len(wanted & here))
        p.pairs = _count(p.pairs, [(loc, tag) for loc in sorted(here) for tag in excl], sign)
    if not secondary:
        return
    s, snode = tallies[secondary], nodes[secondary]
    s.spindle_use_forth += sign * (inst.spindle_use if local and not snode.exclusive_storage else 0)
    if inst.forthcoming:
        _forthcoming_disk(s, snode, inst, sign)
    else:
        s.secondaries += sign
        s.spindle_use += sign * (inst.spindle_use if local and not snode.exclusive_storage else 0)
        s.peers[primary] += sign * (inst.mem_mib if not_offline and inst.auto_balance else 0)


def _forthcoming_disk(tally: Tally, node: Node, inst: Instance, sign: int = 1) -> None:
    if inst.disk_template in LOCAL_STORAGE:
        tally.disk_forth += sign * inst.disk_mib
    if node.exclusive_storage:  # an instance of unknown spindles leaves the node at -1, to refuse the next one
        before = node.free_spindles if tally.free_spindles_forth is None else tally.free_spindles_forth
        tally.free_spindles_forth = -1 if inst.disk_spindles is None else before - inst.disk_spindles


def spindles_after(node: Node, free_spindles: int, inst: Instance, sign: int) -> int:
    """A node's free spindles once `inst` is added to it (`sign` 1, as primary or secondary) or taken away (-1)
    (Ganeti's calcNewFreeSpindles): counted under exclusive storage only, and for real instances; one of
    unknown spindles leaves -1 when added (the tools' way to refuse it) and nothing when taken away."""
    if not node.exclusive_storage or inst.forthcoming:
        return free_spindles
    if inst.disk_spindles is None:
        return -1 if sign > 0 else free_spindles
    return free_spindles - sign * inst.disk_spindles


def unallocated(node: Node, t: Tally, free_mem: int) -> int:
    """Ganeti's unallocatedMem, the free memory its checks and score use: as reported (`free_mem`, followed
    through the moves), but no more than the record leaves (total - node - running primaries)."""
    return min(free_mem, math.trunc(node.total_mem_mib) - node.node_mem_mib - t.running_mem)


def _free_disk_ratio(node: Node, free_disk: int, free_spindles: int) -> float:
    if node.exclusive_storage:
        return _div(free_spindles, node.spindles) if node.spindles else 1.0
    return _div(free_disk, node.total_disk_mib) if node.total_disk_mib else 1.0


Values = tuple[float | Counter[tuple[str, str]], ...]


def spindle_ratios(cluster: HtoolsCluster) -> dict[str, float]:
    """Each group's spindle ratio (by UUID), as its policy or the tools' default says."""
    ratios = {g.uuid: p.spindle_ratio if (p := cluster.policy_of(g)) else DEFAULT_SPINDLE_RATIO for g in cluster.groups}
    if lost := [n.name for n in cluster.nodes if n.group_uuid not in ratios]:
        raise ValueError(f"node '{lost[0]}' is in a group the cluster does not have")
    return ratios


def node_value(node: Node, t: Tally, spindle_ratio: float, free: tuple[int, int, int] | None = None) -> Values:
    """One node's 20 values, in the order of TERMS (hbal's Metrics.compDetailedCVNode); `free`: its free memory,
    disk and spindles, when not the node's own (a move tried). Its N+1 flag is the tools': as loaded, less free memory
    than it reserves (Node.buildPeers); once a move changed it, no more unallocated memory than that (the
    flag addPri, addSec, removePri and removeSec set)."""
    free_mem, free_disk, free_spindles = free or (node.free_mem_mib, node.free_disk_mib, node.free_spindles)
    reserved = max(t.peers.values(), default=0)
    reserved_ratio = _div(reserved, node.total_mem_mib)
    hi_spindles = spindle_ratio * node.spindles
    # forthcoming instances on exclusive storage keep the spindles they took at loading (not followed through moves)
    free_spindles_forth = free_spindles if t.free_spindles_forth is None else t.free_spindles_forth
    instances = t.primaries + t.secondaries
    return (
        _div(unallocated(node, t, free_mem), node.total_mem_mib),
        _free_disk_ratio(node, free_disk, free_spindles),
        float(instances if (unallocated(node, t, free_mem) <= reserved if free else free_mem < reserved) else 0),
        reserved_ratio,
        float(instances),
        float(t.primaries),
        _div(_div(node.node_cpus + t.vcpus, node.cpus), node.cpu_speed),
        float(t.primaries), float(t.primaries), float(instances), float(t.primaries),
        float(sum(t.tags.values()) - len(t.tags)),
        _div(t.spindle_use, hi_spindles),
        _div(free_mem - t.mem_not_running_forth, node.total_mem_mib),
        _free_disk_ratio(node, free_disk - t.disk_forth, free_spindles_forth),
        _div(_div(node.node_cpus + t.vcpus_forth, node.cpus), node.cpu_speed),
        _div(t.spindle_use_forth, hi_spindles),
        float(t.location),
        t.pairs,
        reserved_ratio,
    )


def node_values(cluster: HtoolsCluster) -> dict[str, Values]:
    """Each node's 20 values, in the order of TERMS."""
    tallies = tallies_of(cluster)
    ratios = spindle_ratios(cluster)
    return {node.name: node_value(node, tallies[node.name], ratios[node.group_uuid]) for node in cluster.nodes}


def aggregate(kind: str, column: Sequence[float | Counter[tuple[str, str]]]) -> float:
    if kind == "pairs":
        merged: Counter[tuple[str, str]] = Counter()
        for pairs in column:
            assert isinstance(pairs, Counter)
            merged.update(pairs)
        return float(sum(merged.values()) - len(merged))
    numbers = list(map(float, cast(Sequence[float], column)))  # only the pairs term holds counters
    total = reduce(add, numbers, 0.0)  # one by one, in order, as the tools add (not fsum's exact sum)
    if kind == "sum":
        return total
    mean = _div(total, len(numbers))
    spread = reduce(add, [(x - mean) * (x - mean) for x in numbers], 0.0)
    return math.sqrt(_div(spread, len(numbers)))


def score_terms(cluster: HtoolsCluster, group: str | None = None) -> list[tuple[str, float, float]]:
    """(name, weight, value) of each term, as `hbal -v -v -v` lists them; `group` (a name or UUID) scores that
    group's nodes only, as `hbal -G` does; None scores every node, as hinfo's "Cluster score"."""
    if group is not None and not any(group in (g.name, g.uuid) for g in cluster.groups):
        raise ValueError(f"no node group is named {group!r}")
    uuids = {g.uuid for g in cluster.groups if group is None or group in (g.name, g.uuid)}
    values = node_values(cluster)
    nodes = [n for n in cluster.nodes if n.group_uuid in uuids]
    if not any(not n.offline for n in nodes):
        return []
    terms = []
    for index, (name, weight, kind, over_online) in enumerate(TERMS):
        column = [values[n.name][index] for n in nodes if n.offline != over_online]
        terms.append((name, weight, aggregate(kind, column)))
    return terms


def score(cluster: HtoolsCluster, group: str | None = None) -> float:
    """The weighted sum of `score_terms` (hbal's compCV): lower is better."""
    total = 0.0
    for _, weight, value in score_terms(cluster, group):
        total += weight * value
    return total


def format_score(value: float) -> str:
    """The score as hbal prints it (Haskell's printf "%.8f": the shortest digits of the float, rounded half to
    even at the 8th decimal), so that the two can be compared as text."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    rounded = Decimal(repr(value)).quantize(Decimal("1e-8"), ROUND_HALF_EVEN, Context(prec=400))
    return f"{rounded:f}"
