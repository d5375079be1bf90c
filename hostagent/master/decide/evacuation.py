"""Planning `corral node evacuate N`: pure, so every step and every refusal is unit-tested.

What moves where follows Ganeti's `gnt-node evacuate` (primary and secondary
instances, the default), with the tools Corral has:

- a running `mirror` primary of N is live-migrated to its secondary (Ganeti's
  "migrate, failover allowed": migration when it runs) ...
- ... a stopped one is failed over to its secondary (the same op when it does
  not run; refused while its copy is not known to be in sync, as
  `instance failover` refuses); either way it then has N as secondary, so it
  also gets
- a new secondary by replace-secondary, like every instance whose copy is on N;
- a stopped unreplicated (`file`) instance is moved with its disks to a node
  placement picks; a running one cannot move live, so the whole evacuation is
  refused up front until it is stopped (Ganeti refuses the same).

Steps run in that order: the guests leave N first (migrations are short),
the long disk copies come last. The plan is simulated step by step on a copy
of the config, N counted as drained, and each target is checked with
placement's `check_manual`, the check the step's own job makes, so a plan that
fits here is one the jobs accept; the node reports' free memory and disk are
lowered by what the earlier steps put on a node. Anything that does not fit
becomes a problem, and a plan with problems starts nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from hostagent import model
from hostagent.master.decide.placement import Nodes, PlacementError, Reports, Request, check_manual
from hostagent.status import REPORT_STALE_AFTER_S
from hostagent.units import format_mib
from hostagent.status import describe_mirrors

# Mirror states a live migration accepts (hostagent.master.moves: the switchover waits for writes in flight).
MIGRATABLE = ("in_sync", "converged", "resyncing")


@dataclass(frozen=True)
class Step:
    """One existing instance job: `instance.<action>` of `instance` from `source` to `target`."""

    action: str
    instance: str
    source: str
    target: str

    @property
    def op(self) -> str:
        return f"instance.{self.action}"

    def job_args(self) -> dict[str, Any]:
        """The args the instance job takes; a migrate or failover names its target only to check it."""
        if self.action == "failover":
            return {"name": self.instance, "ignore_consistency": False}
        return {"name": self.instance, "node": self.target}

    def describe(self) -> str:
        name, source, target = self.instance, self.source, self.target
        if self.action == "migrate":
            return f"live-migrate instance '{name}' from node '{source}' to its secondary node '{target}'"
        if self.action == "failover":
            return f"fail over stopped instance '{name}' from node '{source}' to its secondary node '{target}'"
        if self.action == "move":
            return f"move stopped instance '{name}' with its disks from node '{source}' to node '{target}'"
        return f"replace the secondary of instance '{name}': node '{source}' by node '{target}'"

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Step:
        return cls(str(raw["action"]), str(raw["instance"]), str(raw["source"]), str(raw["target"]))


@dataclass(frozen=True)
class Plan:
    """The steps that empty `node`, or the problems (each says what would fix it) that stop it."""

    node: str
    steps: tuple[Step, ...]
    problems: tuple[str, ...]

    @property
    def fits(self) -> bool:
        return not self.problems

    def instances(self) -> list[str]:
        return sorted({step.instance for step in self.steps})

    def to_dict(self) -> dict[str, Any]:
        return {"node": self.node, "fits": self.fits, "problems": list(self.problems),
                "steps": [{**s.to_dict(), "description": s.describe()} for s in self.steps]}


def plan_evacuation(node: str, nodes: Nodes, reports: Reports, instances: Iterable[Mapping[str, Any]],
                    now: float, max_report_age_s: float = REPORT_STALE_AFTER_S) -> Plan:
    """The steps that leave `node` neither primary nor secondary of any instance."""
    if node not in nodes:
        return Plan(node, (), (f"no node named '{node}' (nodes: {', '.join(sorted(nodes)) or 'none'})",))
    sim = _Simulation(node, nodes, reports, instances, now, max_report_age_s)
    report = reports.get(node) or {}
    age = now - float(report.get("time", 0.0)) if report.get("time") is not None else None
    hosted = sorted(name for name, inst in sim.instances.items() if inst["primary_node"] == node)
    if hosted and (age is None or age > max_report_age_s):
        seen = "has never reported" if age is None else f"has not reported for {age:.0f} s"
        sim.problems.append(
            f"node '{node}' {seen}, so nothing can be migrated or copied from it (primary of "
            f"{_names(hosted)}): bring its agent back, or if the node is lost, `corral node failover {node} "
            "--ignore-consistency` restarts its replicated instances on their secondaries")
    else:
        running = set(report.get("instances", {}))
        replicated = [n for n in hosted if _replicated(sim.instances[n])]
        unmovable = [n for n in hosted if n not in replicated
                     and (n in running or sim.instances[n].get("admin_state") == "up")]
        if unmovable:
            sim.problems.append(
                f"{_names(unmovable)} on node '{node}': not replicated and running (or set to run), so it cannot "
                f"move live; stop it first (`corral instance stop {' '.join(unmovable)}`) and evacuate again: "
                "a stopped instance moves with its disks")
        mirrors = report.get("mirrors", {})
        for name in (n for n in replicated if n in running):
            sim.migrate(name, mirrors.get(name, []))
        for name in (n for n in replicated if n not in running):
            sim.failover(name)
        for name in (n for n in hosted if n not in replicated and n not in unmovable):
            sim.move(name)
    for name in sorted(n for n, inst in sim.instances.items() if inst.get("secondary_node") == node):
        sim.replace_secondary(name)
    return Plan(node, tuple(sim.steps), tuple(sim.problems))


def _replicated(inst: Mapping[str, Any]) -> bool:
    return inst.get("disk_template") in model.REPLICATED and bool(inst.get("secondary_node"))


def _names(names: list[str]) -> str:
    quoted = ", ".join(f"'{n}'" for n in names)
    return f"instance {quoted}" if len(names) == 1 else f"instances {quoted}"


def _disk_mib(inst: Mapping[str, Any]) -> int:
    return sum(int(d["size_mib"]) for d in inst.get("disks", []))


def _shortages(exc: PlacementError) -> str:
    return "; ".join(f"{node}: {' and '.join(why)}" for node, why in sorted(exc.shortages.items()))


class _Simulation:
    """The config as the plan leaves it after each step; `node` counts as drained."""

    def __init__(self, node: str, nodes: Nodes, reports: Reports, instances: Iterable[Mapping[str, Any]],
                 now: float, max_report_age_s: float) -> None:
        self.node = node
        self.nodes = {**nodes, node: {**nodes[node], "drained": True}}
        self.reports = {name: dict(report) for name, report in reports.items()}
        self.instances = {inst["name"]: dict(inst) for inst in instances}
        self.now = now
        self.max_report_age_s = max_report_age_s
        self.steps: list[Step] = []
        self.problems: list[str] = []

    def _check(self, name: str, req: Request, primary: str, secondary: str | None) -> None:
        """Placement's own check, this instance left out of the count; PlacementError if it does not fit."""
        others = [inst for other, inst in self.instances.items() if other != name]
        check_manual(name, req, primary, secondary, self.nodes, self.reports, others, self.now, self.max_report_age_s)

    def _use(self, node: str, memory_mib: int, disk_mib: int) -> None:
        report = self.reports[node]
        report["memory_free_mib"] = report.get("memory_free_mib", 0) - memory_mib
        report["disk_free_mib"] = report.get("disk_free_mib", 0) - disk_mib

    def _load(self, node: str) -> int:
        return sum(1 for inst in self.instances.values() if node in (inst["primary_node"], inst.get("secondary_node")))

    def _to_secondary(self, name: str, action: str, memory_mib: int) -> None:
        """Migrate or fail over to the secondary: it must have the memory, keeping N+1 for its other primaries."""
        inst = self.instances[name]
        target = str(inst["secondary_node"])
        try:
            self._check(name, Request(memory_mib, 0, replicated=False), target, None)
        except PlacementError as exc:
            verb = "live-migrate" if action == "migrate" else "fail over"
            self.problems.append(f"instance '{name}' cannot {verb} to its secondary node '{target}' "
                                 f"({format_mib(memory_mib)} memory): {_shortages(exc)}")
            return
        self.steps.append(Step(action, name, self.node, target))
        inst.update(primary_node=target, secondary_node=self.node)
        self._use(target, memory_mib, 0)

    def migrate(self, name: str, mirror_states: list[dict[str, Any]]) -> None:
        inst = self.instances[name]
        if not mirror_states or any(s.get("status") not in MIGRATABLE for s in mirror_states):
            self.problems.append(f"instance '{name}' cannot live-migrate yet: its disks are not in sync on node "
                                 f"'{inst['secondary_node']}' ({describe_mirrors(mirror_states)}); wait until "
                                 f"`corral instance info {name}` says in sync, then evacuate again")
            return
        self._to_secondary(name, "migrate", int(inst["memory_mib"]))

    def failover(self, name: str) -> None:
        inst = self.instances[name]
        if not inst.get("replica_in_sync"):
            self.problems.append(
                f"instance '{name}' is stopped and its copy on node '{inst['secondary_node']}' is not known to be "
                f"in sync, so failing it over could lose writes: start it until `corral instance info {name}` says "
                f"in sync (or move it: `corral instance move {name} --node NODE`), then evacuate again")
            return
        running = inst.get("admin_state") == "up"  # the failover job starts it on the secondary
        self._to_secondary(name, "failover", int(inst["memory_mib"]) if running else 0)

    def move(self, name: str) -> None:
        inst = self.instances[name]
        req = Request(int(inst["memory_mib"]), _disk_mib(inst), replicated=False)
        target = self._best(lambda node: self._check(name, req, node, None), (self.node,),
                            f"no node can take stopped instance '{name}' ({req.describe()})")
        if target is not None:
            self.steps.append(Step("move", name, self.node, target))
            inst["primary_node"] = target
            self._use(target, 0, req.disk_mib)

    def replace_secondary(self, name: str) -> None:
        inst = self.instances[name]
        primary = str(inst["primary_node"])
        req = Request(int(inst["memory_mib"]), _disk_mib(inst), replicated=True)
        target = self._best(lambda node: self._check(name, req, primary, node), (self.node, primary),
                            f"no node can hold the copy of instance '{name}' (primary '{primary}', {req.describe()})")
        if target is not None:
            self.steps.append(Step("replace-secondary", name, self.node, target))
            inst["secondary_node"] = target
            self._use(target, 0, req.disk_mib)

    def _best(self, check: Callable[[str], None], excluded: tuple[str, ...], refusal: str) -> str | None:
        """The least loaded node that passes `check` (then by name); None with a problem naming every shortage."""
        candidates = sorted(n for n in self.nodes if n not in excluded)
        fitting: list[str] = []
        shortages: dict[str, list[str]] = {}
        for node in candidates:
            try:
                check(node)
            except PlacementError as exc:
                for where, reasons in exc.shortages.items():
                    known = shortages.setdefault(where, [])
                    known += [why for why in reasons if why not in known]
                continue
            fitting.append(node)
        if fitting:
            return min(fitting, key=lambda node: (self._load(node), node))
        if not candidates:
            self.problems.append(f"{refusal}: the cluster has no node besides {', '.join(map(repr, excluded))}; "
                                 "add one (`corral node add`)")
        else:
            self.problems.append(f"{refusal}: " + "; ".join(f"{node}: {' and '.join(why)}"
                                                          for node, why in sorted(shortages.items())))
        return None
