"""Where a new instance goes: pure, so every choice and every refusal is unit-tested.

Memory is counted from the config (what the admin-up instances are promised),
not from the node's report, so the same config always gives the same answer;
the report's free memory can only refuse. N+1 follows Ganeti: a node keeps
enough unpromised memory to start the instances of whichever single primary it
is secondary for, should that primary fail.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from hostagent.units import format_mib


Nodes = Mapping[str, Mapping[str, Any]]
Reports = Mapping[str, Mapping[str, Any]]


@dataclass(frozen=True)
class Request:
    """What the new instance needs; disk_mib is the sum of its disks, in the node's volume group when on_lvm
    (the plain and drbd templates), else in its file storage."""

    memory_mib: int
    disk_mib: int
    replicated: bool
    on_lvm: bool = False
    drbd: bool = False  # both nodes need the DRBD kernel module

    def describe(self) -> str:
        kind = "replicated" if self.replicated else "unreplicated"
        return f"{format_mib(self.memory_mib)} memory, {format_mib(self.disk_mib)} disk, {kind}"


@dataclass(frozen=True)
class Placement:
    primary: str
    secondary: str | None


class PlacementError(Exception):
    """No node (or not the nodes asked for) can take the instance; says why, node by node.

    `shortages` maps a node to what it lacks; `summary` is a cluster-wide reason
    (too few usable nodes), empty when there is none.
    """

    def __init__(self, instance: str, request: Request, shortages: dict[str, list[str]],
                 summary: str = "", target: str = "") -> None:
        self.instance = instance
        self.request = request
        self.shortages = shortages
        self.summary = summary
        head = f"instance '{instance}' cannot go to {target}" if target else f"no node can take instance '{instance}'"
        parts = ([summary] if summary else []) + [f"{node}: {' and '.join(why)}" for node, why in sorted(shortages.items())]
        super().__init__(f"{head} ({request.describe()}): {'; '.join(parts)}")


class Judge:
    """Answers "why not this node?" for one request; an empty answer means it fits."""

    def __init__(self, req: Request, nodes: Nodes, reports: Reports, instances: Iterable[Mapping[str, Any]],
                 now: float, max_report_age_s: float) -> None:
        self.req = req
        self.nodes = nodes
        self.reports = reports
        self.now = now
        self.max_report_age_s = max_report_age_s
        self.reserved: Counter[str] = Counter()  # memory of admin-up primaries, per node
        self.pairs: Counter[tuple[str, str]] = Counter()  # memory of admin-up instances, per (primary, secondary)
        self.primary_count: Counter[str] = Counter()
        self.total_count: Counter[str] = Counter()
        for inst in instances:
            primary, secondary = inst["primary_node"], inst.get("secondary_node")
            self.primary_count[primary] += 1
            self.total_count[primary] += 1
            if secondary:
                self.total_count[secondary] += 1
            if inst.get("admin_state") == "up":
                self.reserved[primary] += inst["memory_mib"]
                if secondary:
                    self.pairs[(primary, secondary)] += inst["memory_mib"]

    def unusable(self, node: str) -> list[str]:
        record = self.nodes.get(node)
        if record is None:
            return [f"not in the cluster (nodes: {', '.join(sorted(self.nodes)) or 'none'})"]
        reasons = [flag for flag in ("drained", "offline") if record.get(flag)]
        report = self.reports.get(node)
        if report is None or report.get("time") is None:
            reasons.append(f"no report from node {node} yet")
        elif self.now - report["time"] > self.max_report_age_s:
            reasons.append(f"last report is {self.now - report['time']:.0f} s old (limit "
                           f"{self.max_report_age_s:.0f} s): is its agent running?")
        return reasons

    def free_memory(self, node: str) -> int:
        """Memory not promised to the node's own admin-up instances."""
        return int(self.reports[node].get("memory_total_mib", 0)) - self.reserved[node]

    def as_primary(self, node: str) -> list[str]:
        reasons = self.unusable(node)
        if reasons:
            return reasons
        report, need = self.reports[node], self.req.memory_mib
        free = self.free_memory(node)
        if free < need:
            reasons.append(f"only {format_mib(free)} memory free ({format_mib(report.get('memory_total_mib', 0))} "
                           f"total, {format_mib(self.reserved[node])} for its running instances)")
        elif report.get("memory_free_mib", 0) < need:
            reasons.append(f"only {format_mib(report.get('memory_free_mib', 0))} memory free by its last report")
        else:
            reasons += self._n_plus_1(node, free - need)
        return reasons + self._disk(node)

    def as_secondary(self, primary: str, node: str) -> list[str]:
        if node == primary:
            return ["cannot be both primary and secondary: pick two different nodes"]
        reasons = self.unusable(node)
        if reasons:
            return reasons
        need, has = self.pairs[(primary, node)] + self.req.memory_mib, self.free_memory(node)
        if need > has:
            reasons.append(_n_plus_1_text(primary, node, need, has))
        return reasons + self._disk(node)

    def _n_plus_1(self, node: str, has: int) -> list[str]:
        """Whether `node`, left with `has` free memory, can still take over for each of its primaries."""
        return [_n_plus_1_text(primary, node, need, has)
                for (primary, secondary), need in sorted(self.pairs.items())
                if secondary == node and need > has]

    def _disk(self, node: str) -> list[str]:
        if self.req.on_lvm:
            return lvm_shortage(self.reports[node], self.req.disk_mib) + (
                drbd_shortage(self.reports[node]) if self.req.drbd else [])
        free = self.reports[node].get("disk_free_mib", 0)
        return [f"only {format_mib(free)} disk free"] if free < self.req.disk_mib else []

    def rank(self, option: Placement) -> tuple[Any, ...]:
        """Spread first (fewest primaries on the primary, fewest copies on the secondary), then free memory, names."""
        primary = (self.primary_count[option.primary], self.total_count[option.primary])
        node = option.secondary
        secondary = (self.total_count[node] - self.primary_count[node], self.total_count[node]) if node else (0, 0)
        secondary_free = self.free_memory(node) if node else 0
        return (primary, secondary, -self.free_memory(option.primary), -secondary_free,
                option.primary, option.secondary or "")


def lvm_shortage(report: Mapping[str, Any], need_mib: int) -> list[str]:
    """Why a node's volume group cannot take `need_mib` more, from its report's `lvm` (hostagent.node.reporter);
    [] when it can. A node without one cannot hold plain or drbd disks at all."""
    lvm = report.get("lvm")
    if not lvm:
        return ["has no LVM volume group: set [storage] volume_group in its agent.toml"]
    if lvm.get("error"):
        return [str(lvm["error"])]
    free = int(lvm.get("free_mib", 0))
    if free < need_mib:
        return [f"has {format_mib(free)} free in volume group {lvm['vg']}, the disks need {format_mib(need_mib)}"]
    return []


def drbd_shortage(report: Mapping[str, Any]) -> list[str]:
    """Why a node cannot hold DRBD disks, from its report's `drbd` (hostagent.node.drbdnode); [] when it can."""
    if (report.get("drbd") or {}).get("version"):
        return []
    return ["has no DRBD kernel module (`modprobe drbd` fails there; Debian's kernels carry DRBD 8.4)"]


def _n_plus_1_text(primary: str, node: str, need: int, has: int) -> str:
    return (f"N+1: if {primary} failed, {node} would need {format_mib(need)} for its secondaries, "
            f"has {format_mib(has)}")


def _add(shortages: dict[str, list[str]], node: str, reasons: list[str]) -> None:
    for reason in reasons:
        if reason not in shortages.setdefault(node, []):
            shortages[node].append(reason)


def place(name: str, req: Request, nodes: Nodes, reports: Reports, instances: Iterable[Mapping[str, Any]],
          now: float, max_report_age_s: float = 60.0) -> Placement:
    """The best (primary, secondary) for a new instance; PlacementError naming every node's shortage."""
    judge = Judge(req, nodes, reports, instances, now, max_report_age_s)
    shortages: dict[str, list[str]] = {}
    primaries: list[str] = []
    for node in sorted(nodes):
        _add(shortages, node, judge.as_primary(node))
        if node not in shortages:
            primaries.append(node)
    summary = "" if nodes else "the cluster has no nodes"
    if not req.replicated:
        options = [Placement(primary, None) for primary in primaries]
    else:
        usable = [node for node in sorted(nodes) if not judge.unusable(node)]
        options = []
        for primary in primaries:
            for secondary in (node for node in usable if node != primary):
                why = judge.as_secondary(primary, secondary)
                _add(shortages, secondary, why)
                if not why:
                    options.append(Placement(primary, secondary))
        if not options:
            for primary in primaries:
                _add(shortages, primary, ["fits as primary, but no other node can be its secondary"])
        if len(usable) < 2:
            summary = f"replicated templates need 2 usable nodes, the cluster has {len(usable)}"
    if not options:
        raise PlacementError(name, req, shortages, summary)
    return min(options, key=judge.rank)


def check_manual(name: str, req: Request, primary: str, secondary: str | None, nodes: Nodes, reports: Reports,
                 instances: Iterable[Mapping[str, Any]], now: float, max_report_age_s: float = 60.0) -> Placement:
    """The operator's `--node P[:S]`, checked like an automatic choice; PlacementError with every problem."""
    judge = Judge(req, nodes, reports, instances, now, max_report_age_s)
    shortages: dict[str, list[str]] = {}
    _add(shortages, primary, judge.as_primary(primary))
    if secondary is None:
        if req.replicated:
            _add(shortages, primary, ["a replicated template needs a secondary node too: --node PRIMARY:SECONDARY"])
    elif not req.replicated:
        _add(shortages, secondary, ["given as secondary, but an unreplicated template has none: use --node PRIMARY"])
    else:
        _add(shortages, secondary, judge.as_secondary(primary, secondary))
    if shortages:
        target = f"{primary}:{secondary}" if secondary else primary
        raise PlacementError(name, req, shortages, target=target)
    return Placement(primary, secondary)
