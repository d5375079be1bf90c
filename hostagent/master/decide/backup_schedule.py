"""Scheduled backups: what is due now, what to prune, what is overdue. Pure; the duty runs it
(hostagent.master.duties.scheduled_backups), `instance modify` checks with it, `cluster verify` warns with it.

An instance's schedule (`instance modify --backup`) is a period: hourly, daily, weekly, or a duration of at
least `MIN_PERIOD_S` (90s, 30m, 6h: short ones are for tests and drills). It is due once its newest backup
(any the nodes report, made by the schedule or by hand, live or not) is a period old, or when it has none.
The duty exports at most `backup_max_per_node` (cluster setting, default 1) instances at once per node,
counting every export job queued or running that reads from the node (its instance's primary) or writes to
it (an export directory of another node), and none from or to a node that is not alive or is still
recovering from an outage (`recovering`). A failed scheduled export is tried again after a period, at most
`RETRY_MAX_S` later. After a scheduled export, the oldest backups of that instance in the same export
directory on that node beyond its keep count are removed, never the one just made. `cluster verify` warns
when the newest backup is older than two periods, or when there is none and the schedule was set more than
two periods ago.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

PERIODS = {"hourly": 3600.0, "daily": 86400.0, "weekly": 604800.0}
MIN_PERIOD_S = 20.0
MAX_PERIOD_S = 366 * 86400.0
UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
DEFAULT_KEEP = 7
MAX_KEEP = 1000
DEFAULT_MAX_PER_NODE = 1
RETRY_MAX_S = 3600.0  # a failed scheduled export is tried again after its period, at most this long after
RECOVERY_S = 300.0  # a node back from an outage takes no scheduled backup for this long
OVERDUE_PERIODS = 2.0  # `cluster verify` warns past this many periods without a backup
SCHEDULE_WORDS = (f"hourly, daily, weekly, a duration of at least {MIN_PERIOD_S:.0f} s such as 90s, 30m or 6h, "
                  "or none")
TARGET_WORDS = "NODE:DIR or an absolute DIR (an export directory of the node), or default"
_DURATION = re.compile(r"^([0-9]{1,7})([smh])\Z")
_NODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}\Z")


def parse_schedule(value: Any) -> str:
    """The schedule as stored ("" for none), from what the operator typed; ValueError says what is accepted."""
    if not isinstance(value, str):
        raise ValueError(f"backup schedule {value!r} is not accepted: give {SCHEDULE_WORDS}")
    text = value.strip().lower()
    if text in ("", "none"):
        return ""
    if text in PERIODS:
        return text
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"backup schedule {value!r} is not accepted: give {SCHEDULE_WORDS}")
    seconds = int(match.group(1)) * UNITS[match.group(2)]
    if not MIN_PERIOD_S <= seconds <= MAX_PERIOD_S:
        raise ValueError(f"backup schedule {value!r} is {seconds:.0f} s: a period must be from "
                         f"{MIN_PERIOD_S:.0f} s to {MAX_PERIOD_S / 86400:.0f} days ({SCHEDULE_WORDS})")
    return f"{match.group(1)}{match.group(2)}"


def period_s(schedule: str) -> float:
    """Seconds between backups of a stored schedule; 0.0 for none."""
    if not schedule:
        return 0.0
    if schedule in PERIODS:
        return PERIODS[schedule]
    return float(schedule[:-1]) * UNITS[schedule[-1]]


def parse_keep(value: Any) -> int | None:
    """A keep count (None: the cluster's default); ValueError says what is accepted."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_KEEP:
        raise ValueError(f"backup keep {value!r} is not accepted: give a whole number of backups to keep, from 1 "
                         f"to {MAX_KEEP} (or default: the cluster's, {DEFAULT_KEEP} unless changed)")
    return value


def parse_target(value: Any) -> str:
    """A backup target as stored ("" for the default): NODE:DIR or DIR, the directory absolute and normalized."""
    if value is None or (isinstance(value, str) and value.strip() in ("", "default")):
        return ""
    if not isinstance(value, str) or len(value) > 4096 or not value.isprintable():
        raise ValueError(f"backup target {str(value)[:60]!r} is not accepted: give {TARGET_WORDS}")
    node, sep, directory = value.strip().partition(":")
    if not sep:
        node, directory = "", value.strip()
    if sep and not _NODE.match(node):
        raise ValueError(f"backup target {value!r}: {node!r} is not a node name; give {TARGET_WORDS}")
    if not posixpath.isabs(directory) or posixpath.normpath(directory) == "/":
        raise ValueError(f"backup target {value!r}: the directory must be absolute (and not /); give {TARGET_WORDS}")
    directory = posixpath.normpath(directory)
    return f"{node}:{directory}" if node else directory


def split_target(target: str) -> tuple[str, str]:
    """(node or "", directory) of a stored target."""
    node, sep, directory = target.partition(":")
    return (node, directory) if sep else ("", target)


def check_modify(req: Mapping[str, Any], problems: list[str]) -> dict[str, Any]:
    """The record fields an `instance modify` request sets among backup_schedule, backup_keep and backup_to;
    each bad value appended to `problems` with what is accepted."""
    out: dict[str, Any] = {}
    for key, parse in (("backup_schedule", parse_schedule), ("backup_keep", parse_keep),
                       ("backup_to", parse_target)):
        if key in req:
            try:
                out[key] = parse(req[key])
            except ValueError as exc:
                problems.append(str(exc))
    return out


def keep_of(inst: Mapping[str, Any], cluster: Mapping[str, Any]) -> int:
    own = inst.get("backup_keep")
    return int(own) if own else int(cluster.get("backup_keep") or DEFAULT_KEEP)


def target_of(inst: Mapping[str, Any], cluster: Mapping[str, Any]) -> str:
    """NODE:DIR or DIR, or "" for the first export directory of the instance's node."""
    return str(inst.get("backup_to") or cluster.get("backup_to") or "")


def newest(reports: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """Instance -> when its newest backup was made, of every backup the nodes report (a report lists only
    finished backups: one cut short is a leftover)."""
    out: dict[str, float] = {}
    for report in reports.values():
        for backup in report.get("backups") or []:
            name, created = str(backup.get("instance")), float(backup.get("created") or 0.0)
            out[name] = max(out.get(name, 0.0), created)
    return out


def age_words(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def schedule_words(schedule: str) -> str:
    return schedule if schedule in PERIODS else f"every {age_words(period_s(schedule))}"


@dataclass(frozen=True)
class Run:
    """What the duty remembers of one instance's scheduled backups (stored, so a new master goes on)."""

    job: int | None = None  # the scheduled export job in flight
    made: float = 0.0  # when the last scheduled export that succeeded started
    failed_at: float = 0.0  # when the last one failed (or was refused at submit); 0: it did not
    error: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"job": self.job, "made": self.made, "failed_at": self.failed_at, "error": self.error}

    @staticmethod
    def from_dict(raw: Mapping[str, Any]) -> Run:
        job = raw.get("job")
        return Run(None if job is None else int(job), float(raw.get("made") or 0.0),
                   float(raw.get("failed_at") or 0.0), str(raw.get("error") or ""))


@dataclass(frozen=True)
class View:
    """What the decision needs of the cluster at `now`."""

    instances: tuple[Mapping[str, Any], ...]
    reports: Mapping[str, Mapping[str, Any]]
    cluster: Mapping[str, Any]
    alive: frozenset[str]  # nodes with a fresh report holding their node lease
    busy: frozenset[str]  # instances a queued or running job holds (or whose last job's effect is not reported)
    exporting: Mapping[str, int] = field(default_factory=dict)  # node -> export jobs queued or running that read
    #                                                               from it (the instance's node) or write to it
    recovering: Mapping[str, str] = field(default_factory=dict)  # node -> why it is still recovering


@dataclass(frozen=True)
class Export:
    """One scheduled export to submit."""

    instance: str
    node: str  # the instance's primary, whose disks are read
    live: bool  # the instance runs (its node's report shows its QEMU)
    to: str | None  # NODE:DIR or DIR; None: the node's first export directory
    why: str


@dataclass(frozen=True)
class Plan:
    exports: list[Export]
    held: dict[str, str]  # instance -> why a due backup waits


def due_at(inst: Mapping[str, Any], last: float, run: Run) -> float:
    """When the instance's next backup is due (0.0: no schedule); `last`: its newest reported backup."""
    period = period_s(str(inst.get("backup_schedule") or ""))
    if not period:
        return 0.0
    at = max(last, run.made) + period if max(last, run.made) else 0.0
    if run.failed_at:
        at = max(at, run.failed_at + min(period, RETRY_MAX_S))
    return at


def plan(view: View, runs: Mapping[str, Run], now: float) -> Plan:
    """The scheduled exports to submit now, most overdue first, paced per node."""
    last = newest(view.reports)
    per_node = max(1, int(view.cluster.get("backup_max_per_node") or DEFAULT_MAX_PER_NODE))
    exporting = dict(view.exporting)
    candidates: list[tuple[float, str, Mapping[str, Any], str]] = []
    held: dict[str, str] = {}
    for inst in view.instances:
        name, schedule = str(inst["name"]), str(inst.get("backup_schedule") or "")
        if not schedule:
            continue
        run = runs.get(name, Run())
        at = due_at(inst, last.get(name, 0.0), run)
        if at > now:
            continue
        if run.job is not None:
            held[name] = f"its scheduled export (job {run.job}) has not ended"
            continue
        newest_at = max(last.get(name, 0.0), run.made)
        why = (f"newest backup {age_words(now - newest_at)} old, schedule {schedule_words(schedule)}" if newest_at
               else f"no backup yet, schedule {schedule_words(schedule)}")
        candidates.append((at, name, inst, why))
    exports: list[Export] = []
    for _, name, inst, why in sorted(candidates, key=lambda c: (c[0], c[1])):
        node, to = str(inst["primary_node"]), target_of(inst, view.cluster)
        nodes = sorted({node, split_target(to)[0] or node})  # the instance's node, and the one written to
        down = [n for n in nodes if n not in view.alive]
        healing = [n for n in nodes if n in view.recovering]
        full = [n for n in nodes if exporting.get(n, 0) >= per_node]
        if name in view.busy:
            held[name] = "a job is working on it"
        elif down:
            held[name] = f"node '{down[0]}' is not up (no fresh report, or no node lease)"
        elif healing:
            held[name] = f"node '{healing[0]}' is recovering: {view.recovering[healing[0]]}"
        elif full:
            held[name] = (f"node '{full[0]}' already has {exporting[full[0]]} export(s) under way, at most {per_node} "
                          "at once (`corral cluster modify --backup-max-per-node`)")
        else:
            for n in nodes:
                exporting[n] = exporting.get(n, 0) + 1
            live = name in ((view.reports.get(node) or {}).get("instances") or {})
            exports.append(Export(name, node, live, to or None, why))
    return Plan(exports, held)


def recovering(instances: Iterable[Mapping[str, Any]], reports: Mapping[str, Mapping[str, Any]],
               failed: Iterable[str], back: Mapping[str, float], now: float) -> dict[str, str]:
    """Node -> why it is still recovering from an outage, so that no scheduled backup adds to its load:
    it came back from a loss (its node lease expired; `back`: when it held it again, from the failover
    duty's state) less than `RECOVERY_S` ago; the restart duty still has instances marked up to bring back
    on it (those given up, `failed`, do not count); or its report shows disk copies resyncing."""
    out: dict[str, str] = {}
    given_up = set(failed)
    for node, since in back.items():
        if now - since < RECOVERY_S:
            out[node] = (f"back from an outage {age_words(now - since)} ago (scheduled backups wait "
                         f"{RECOVERY_S:.0f} s)")
    waiting: dict[str, list[str]] = {}
    for inst in instances:
        node, name = str(inst["primary_node"]), str(inst["name"])
        report = reports.get(node)
        if report is None or inst.get("admin_state") != "up" or name in given_up:
            continue
        if name not in (report.get("instances") or {}):
            waiting.setdefault(node, []).append(name)
    for node, names in waiting.items():
        out.setdefault(node, f"instances marked up are not running yet ({', '.join(sorted(names)[:5])}"
                             + (", ..." if len(names) > 5 else "") + ")")
    for node, report in reports.items():
        states = [s for per in (report.get("mirrors") or {}).values() for s in per]
        if any(s.get("status") in ("syncing", "resyncing") for s in states):
            out.setdefault(node, "disk copies are resyncing")
    return out


def to_prune(backups: Iterable[Mapping[str, Any]], instance: str, node: str, made_path: str,
             keep: int) -> list[Mapping[str, Any]]:
    """The backups to remove after a scheduled export made `made_path` on `node`: the oldest of `instance` in
    the same export directory there beyond `keep` (the one just made counts, and is never among them).
    `backups`: rows with node, path, instance, created (they may not list the new one yet)."""
    directory = posixpath.dirname(posixpath.dirname(posixpath.normpath(made_path)))
    same = sorted((b for b in backups if b["node"] == node and b["instance"] == instance
                   and posixpath.normpath(b["path"]) != posixpath.normpath(made_path)
                   and posixpath.dirname(posixpath.dirname(posixpath.normpath(b["path"]))) == directory),
                  key=lambda b: (float(b["created"]), str(b["path"])))
    return same[:max(0, len(same) - max(1, keep) + 1)]


def overdue(instances: Iterable[Mapping[str, Any]], reports: Mapping[str, Mapping[str, Any]],
            now: float) -> list[tuple[str, str]]:
    """(instance, message) for each scheduled instance whose newest backup is older than two periods, or
    that has none although its schedule was set more than two periods ago."""
    last = newest(reports)
    out: list[tuple[str, str]] = []
    for inst in sorted(instances, key=lambda i: str(i["name"])):
        name, schedule = str(inst["name"]), str(inst.get("backup_schedule") or "")
        period = period_s(schedule)
        if not period:
            continue
        hint = f"`corral events --instance {name}` says what the master tried"
        if name in last:
            age = now - last[name]
            if age > OVERDUE_PERIODS * period:
                out.append((name, f"instance '{name}': its newest backup is {age_words(age)} old, more than two "
                                  f"periods of its schedule ({schedule_words(schedule)}); {hint}"))
        elif inst.get("backup_since") and now - float(inst["backup_since"]) > OVERDUE_PERIODS * period:
            out.append((name, f"instance '{name}': no backup at all, although its schedule "
                              f"({schedule_words(schedule)}) was set {age_words(now - float(inst['backup_since']))} "
                              f"ago; {hint}"))
    return out


def describe(inst: Mapping[str, Any], reports: Mapping[str, Mapping[str, Any]], cluster: Mapping[str, Any],
             run: Mapping[str, Any] | None, now: float) -> dict[str, Any]:
    """What `instance info` shows of an instance's backups: its schedule (own settings and what applies),
    its newest backup, when the next is due, the last scheduled failure."""
    schedule = str(inst.get("backup_schedule") or "")
    name = str(inst["name"])
    last = newest(reports).get(name)
    state = Run.from_dict(run or {})
    next_due = due_at(inst, last or 0.0, state) if schedule else None
    return {"schedule": schedule or None, "period_s": period_s(schedule) or None,
            "words": schedule_words(schedule) if schedule else None,
            "keep": keep_of(inst, cluster), "keep_own": inst.get("backup_keep"),
            "to": target_of(inst, cluster) or None, "to_own": inst.get("backup_to") or None,
            "since": inst.get("backup_since") or None, "last": last,
            "next_due": (next_due or now) if schedule else None,
            "count": sum(1 for r in reports.values() for b in r.get("backups") or [] if b.get("instance") == name),
            "job": state.job, "last_error": state.error or None, "failed_at": state.failed_at or None}


def _within(path: str, dirs: Iterable[str]) -> bool:
    path = posixpath.normpath(path)
    return any(path == posixpath.normpath(d) or path.startswith(posixpath.normpath(d).rstrip("/") + "/")
               for d in dirs)


def target_problem(inst: Mapping[str, Any], cluster: Mapping[str, Any],
                   export_dirs: Mapping[str, list[str] | None]) -> str:
    """Why an instance's scheduled exports could not run as set (checked at `instance modify`); "" when they
    can, as far as the nodes' reports tell (each export is judged again when it is submitted).
    `export_dirs`: node -> the export directories its report lists (None: its report does not say)."""
    primary = str(inst["primary_node"])
    if not inst.get("backup_schedule"):
        return ""
    node, directory = split_target(target_of(inst, cluster))
    node = node or primary
    if node not in export_dirs:
        return f"backup target {target_of(inst, cluster)}: no node named '{node}' reports to the cluster"
    dirs = export_dirs[node]
    if dirs is None:
        return ""
    if not dirs:
        return f"node '{node}' has no export directory (export_dirs in [paths] of its agent.toml)"
    if directory and not _within(directory, dirs):
        return (f"{directory} is not an export directory of node '{node}' (it has: {', '.join(dirs)}; "
                "export_dirs in [paths] of its agent.toml)")
    return ""
