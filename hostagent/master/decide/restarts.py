"""Which instances the master restarts now: a pure decision, replayed by the scenario tests.

`decide(view, tracks, now, policy)` looks at what the config wants (instances
marked up), what the nodes report (running QEMUs, free memory, load) and what
it decided before (one `Track` per instance: attempts, next try, given up),
and returns the new tracks, the starts to order and the events that say why.
It reads no clock and does no I/O; `hostagent.master.duties.restarter` runs it.

Rules: an instance marked up whose node is alive (fresh report, lease held)
but whose QEMU is not running is started again, at once the first time, then
after a doubling backoff, each judged on a node report made after the
start; when the last of `max_attempts` starts did not last, it is given up
("failed", with the reason). A QEMU whose boot the node judged timed out
(no console line matching the instance's boot pattern in time, see
hostagent.node.boothealth) counts as not running, whoever started it: it is
stopped and started again, and stopped for good when given up. Attempts
count from zero once it has run `stable_s` after a start, not while its
boot is still awaited. Candidates go by
priority (critical, high, normal, low), then name; one waits for the
instances it names in `after` to run (and to have booted, if they are
judged). A node takes at most `max_starts_per_node` starts at once,
counting the boots still under way: a judged boot until its pattern
matched (at most `boot_slot_max_s`), an unjudged one for `boot_window_s`
after the start. While its load per CPU (over the last 10 s, hostagent.node.loadgauge) is past the limit a node boots
one guest at a time (never none: a node kept busy by the guests it already
runs must still bring the rest back), and nothing while its free memory
is short.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from hostagent.status import boot_timeout_reason

PRIORITIES = ("critical", "high", "normal", "low")
# What a node report says of a QEMU that is there and not dead.
ALIVE = ("running", "paused", "inmigrate", "finish-migrate", "postmigrate", "migrating", "unknown", "prelaunch")


@dataclass(frozen=True)
class Policy:
    max_attempts: int = 5
    backoff_s: float = 2.0  # before the second attempt; doubles up to max_backoff_s
    max_backoff_s: float = 60.0
    stable_s: float = 60.0  # running this long after a start: the attempts count from zero again
    max_starts_per_node: int = 4
    max_load_per_cpu: float = 4.0  # a node this busy boots guests slowly: one at a time
    boot_window_s: float = 10.0  # an instance without a boot pattern counts as booting this long after its start
    boot_slot_max_s: float = 60.0  # a judged boot holds its start slot at most this long (a hung one must not
    #                                stall the node until its boot timeout)
    memory_reserve_mib: int = 256  # free memory a node keeps beyond the instance's own


@dataclass(frozen=True)
class Track:
    """What the master remembers about restarting one instance."""

    attempts: int = 0
    next_try_at: float = 0.0
    last_start_at: float = 0.0
    last_error: str = ""
    failed: str = ""  # non-empty: given up, with this reason, until the operator starts it
    waits_for: str = ""  # what holds its start now (a load, memory or `after` cause), "" when nothing does

    def to_dict(self) -> dict[str, Any]:
        return {"attempts": self.attempts, "next_try_at": self.next_try_at, "last_start_at": self.last_start_at,
                "last_error": self.last_error, "failed": self.failed, "waits_for": self.waits_for}

    @staticmethod
    def from_dict(raw: Mapping[str, Any]) -> Track:
        return Track(int(raw.get("attempts", 0)), float(raw.get("next_try_at", 0.0)),
                     float(raw.get("last_start_at", 0.0)), str(raw.get("last_error", "")), str(raw.get("failed", "")),
                     str(raw.get("waits_for", "")))


@dataclass(frozen=True)
class View:
    """The cluster as the master sees it for this decision."""

    instances: tuple[Mapping[str, Any], ...]
    reports: Mapping[str, Mapping[str, Any]]  # node -> its report (time, instances, memory_free_mib, load_10s, cpus)
    alive_nodes: frozenset[str]  # fresh report and node lease held
    busy: frozenset[str] = frozenset()  # instances with a job, or a start order in flight
    starting_on: Mapping[str, int] = field(default_factory=dict)  # node -> start orders in flight


@dataclass(frozen=True)
class Event:
    instance: str
    node: str
    kind: str  # restart | give-up | wait | recovered
    message: str
    console: tuple[str, ...] = ()  # give-up of a boot that timed out: the last console lines the node saw


@dataclass(frozen=True)
class Decision:
    tracks: dict[str, Track]
    starts: list[tuple[str, str]]  # (instance, node)
    events: list[Event]
    stops: list[tuple[str, str]] = field(default_factory=list)  # given up, their QEMU still there: stop it


def decide(view: View, tracks: Mapping[str, Track], now: float, policy: Policy = Policy()) -> Decision:
    new = dict(tracks)
    events: list[Event] = []
    starts: list[tuple[str, str]] = []
    stops: list[tuple[str, str]] = []
    running = {name for report in view.reports.values()
               for name, seen in report.get("instances", {}).items() if seen.get("status") in ALIVE}
    boots = {i["name"]: _boot(view, i) for i in view.instances}
    by_name = {i["name"]: i for i in view.instances}
    for name in list(new):
        if name not in by_name:
            del new[name]  # the instance is gone
    wanted = sorted((i for i in view.instances if i.get("admin_state") == "up"),
                    key=lambda i: (priority_rank(i), i["name"]))
    under_way = _booting(view, tracks, boots, now, policy)
    for node, count in view.starting_on.items():
        under_way[node] = under_way.get(node, 0) + count
    for inst in wanted:
        name, node = inst["name"], inst["primary_node"]
        track = new.get(name, Track())
        if name in view.busy:
            continue
        timed_out = name in running and boots[name] == "timeout"
        if name in running and not timed_out:
            if track.attempts and boots[name] != "waiting" and now - track.last_start_at >= policy.stable_s:
                new[name] = Track()
                events.append(Event(name, node, "recovered",
                                    f"instance '{name}' has run on node '{node}' for {policy.stable_s:.0f} s "
                                    "since its restart: counting attempts from zero again"))
            continue
        if track.failed or node not in view.alive_nodes:
            continue
        if track.attempts and view.reports.get(node, {}).get("time", 0.0) <= track.last_start_at:
            continue  # judge the last start on a report made after it, never on an older one
        seen = view.reports[node]["instances"][name] if timed_out else {}
        boot_failure = boot_timeout_reason(seen) if timed_out else ""
        if track.attempts >= policy.max_attempts:
            last_error = boot_failure or track.last_error
            reason = (f"gave up after {track.attempts} start attempts on node '{node}'"
                      + (f": {last_error}" if last_error else ""))
            new[name] = replace(track, failed=reason, last_error=last_error)
            events.append(Event(name, node, "give-up", f"instance '{name}': {reason}",
                                tuple(seen.get("boot_console", []))))
            if timed_out:
                stops.append((name, node))
            continue
        if now < track.next_try_at:
            continue
        waiting = [a for a in inst.get("after", []) if a in by_name and by_name[a].get("admin_state") == "up"
                   and (a not in running or boots[a] in ("waiting", "timeout"))]
        cause, short = _node_short(node, view.reports.get(node, {}), inst, policy, under_way.get(node, 0))
        if waiting or short or under_way.get(node, 0) >= policy.max_starts_per_node:
            why = f"waits for {', '.join(waiting)} to run first" if waiting else f"waits: {short}" if short else ""
            cause = f"after {','.join(waiting)}" if waiting else cause
            if why and track.waits_for != cause:  # said once per cause, not again as its figures change
                new[name] = replace(track, last_error=why, waits_for=cause)
                events.append(Event(name, node, "wait", f"instance '{name}' {why} before it starts"))
            continue
        under_way[node] = under_way.get(node, 0) + 1
        attempt = track.attempts + 1
        delay = min(policy.backoff_s * 2 ** (attempt - 1), policy.max_backoff_s)
        failure = "" if track.last_error.startswith("waits") else track.last_error  # a wait is not a failure
        new[name] = replace(track, attempts=attempt, next_try_at=now + delay, last_start_at=now,
                            last_error=boot_failure or failure, waits_for="")
        starts.append((name, node))
        why = boot_failure or ("its QEMU is not running" + (f" (last attempt: {failure})" if failure else ""))
        events.append(Event(name, node, "restart", f"instance '{name}' is marked up but {why}: starting it on "
                                                   f"node '{node}' (attempt {attempt} of {policy.max_attempts})"))
    return Decision(new, starts, events, stops)


def priority_rank(inst: Mapping[str, Any]) -> int:
    priority = inst.get("priority", "normal")
    return PRIORITIES.index(priority) if priority in PRIORITIES else PRIORITIES.index("normal")


def _boot(view: View, inst: Mapping[str, Any]) -> str | None:
    """The boot verdict of the instance's QEMU on its primary node: waiting, up, timeout, or None (not judged)."""
    seen = view.reports.get(inst["primary_node"], {}).get("instances", {}).get(inst["name"]) or {}
    return seen.get("boot") if seen.get("status") in ALIVE else None


def _booting(view: View, tracks: Mapping[str, Track], boots: Mapping[str, str | None], now: float,
             policy: Policy) -> dict[str, int]:
    """Node -> boots under way there: judged and still waiting (for at most boot_slot_max_s), unjudged
    and started by the master within boot_window_s, or started by the master after the node's last report
    (its start order answered, the report that shows its QEMU not made yet; counted in `starting_on`
    while the order is in flight). Without the last, a node whose report lags got twice its starts."""
    out: dict[str, int] = {}
    for inst in view.instances:
        name, node = inst["name"], inst["primary_node"]
        report = view.reports.get(node, {})
        seen = report.get("instances", {}).get(name, {})
        track = tracks.get(name)
        if boots[name] == "waiting":
            under_way = now - float(seen.get("boot_started_at", now)) < policy.boot_slot_max_s
        elif (track is not None and track.attempts > 0 and name not in view.busy
              and float(report.get("time", 0.0)) <= track.last_start_at
              and now - track.last_start_at < policy.boot_slot_max_s):
            under_way = True
        else:
            under_way = (boots[name] is None and seen.get("status") in ALIVE and track is not None
                         and track.attempts > 0 and now - track.last_start_at < policy.boot_window_s)
        if under_way:
            out[node] = out.get(node, 0) + 1
    return out


def _node_short(node: str, report: Mapping[str, Any], inst: Mapping[str, Any], policy: Policy,
                under_way: int) -> tuple[str, str]:
    """(cause, why) the node is too loaded or too short of memory to start this instance now (("", "") if it is
    not). The cause stays the same while only the figures change, so that a wait is told once."""
    measured = report.get("load_10s")  # None from an older agent, or before its first sample
    load = float(report.get("load_1m", 0.0) if measured is None else measured)
    load /= max(int(report.get("cpus", 1)), 1)
    free = int(report.get("memory_free_mib", 0))
    need = int(inst.get("memory_mib", 0)) + policy.memory_reserve_mib
    if load > policy.max_load_per_cpu and under_way:
        return (f"load {node}", f"node '{node}' is loaded ({load:.1f} per CPU, past {policy.max_load_per_cpu:.1f}): "
                "it boots one guest at a time")
    if free < need:
        return f"memory {node}", f"node '{node}' has {free} MiB free, it needs {need} MiB"
    return "", ""
