"""What an instance's status is, from the wanted state and the node's report.

Pure: the same function serves `instance list`, `cluster verify` and later
the master's restart decisions. Vocabulary follows Ganeti's so operators
coming from it read it at once: running, stopped, error (should run but does
not), error-up (runs but should not), node-down, unknown. A guest whose boot
the node judged (hostagent.node.boothealth) runs while it is "waiting" and is an
error once it timed out; the reason words are shared with the restarts.

A replicated instance's copies under way read the same everywhere (`instance info`, `instance list`, verify,
the jobs' refusals): percent, what is left, the recent rate and an ETA from it; "ETA being measured" only
before a rate exists, "stalled" once it is 0, never "unknown".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


REPORT_STALE_AFTER_S = 30.0


@dataclass(frozen=True)
class ObservedStatus:
    status: str
    reason: str
    pid: int | None = None


def report_age_s(report: Mapping[str, Any] | None, now: float) -> float | None:
    if not report:
        return None
    return max(0.0, now - float(report.get("time", 0.0)))


def report_fresh(report: Mapping[str, Any] | None, now: float) -> bool:
    """The node reported within REPORT_STALE_AFTER_S: what it says may be acted on."""
    age = report_age_s(report, now)
    return age is not None and age <= REPORT_STALE_AFTER_S


# QEMU run states (and the agent's own "migrating") while a live migration is under way.
MIGRATING = ("migrating", "inmigrate", "finish-migrate", "postmigrate")


def instance_status(instance: dict[str, Any], report: dict[str, Any] | None,
                    now: float) -> ObservedStatus:
    """Combine the config record with the primary node's latest report."""
    node = instance["primary_node"]
    age = report_age_s(report, now)
    if report is None or age is None:
        return ObservedStatus("unknown", f"no report from node '{node}' yet")
    if age > REPORT_STALE_AFTER_S:
        return ObservedStatus("node-down", f"node '{node}' has not reported for {age:.0f} s")
    seen = report.get("instances", {}).get(instance["name"])
    running = bool(seen) and seen.get("status") in ("running", "paused", "guest-panicked", "unknown",
                                                    *MIGRATING)
    pid = seen.get("pid") if seen else None
    if instance.get("admin_state") == "up":
        if not running:
            return ObservedStatus("error", "marked up but not running")
        if seen.get("status") == "guest-panicked":
            return ObservedStatus("error", "the guest kernel panicked", pid)
        if seen.get("boot") == "timeout":
            return ObservedStatus("error", boot_timeout_reason(seen), pid)
        if seen.get("status") in MIGRATING:
            return ObservedStatus("running", f"live migration under way ({seen['status']})", pid)
        if seen.get("boot") == "waiting":
            return ObservedStatus("running", booting_reason(seen, now), pid)
        return ObservedStatus("running", "", pid)
    if running:
        return ObservedStatus("error-up", "running but marked down", pid)
    return ObservedStatus("stopped", "")


def boot_timeout_reason(seen: Mapping[str, Any]) -> str:
    """Why a node report's QEMU counts as not booted (hostagent.node.boothealth judged it)."""
    return (f"did not boot: no console line matching '{seen.get('boot_pattern', '')}' "
            f"within {float(seen.get('boot_timeout_s', 0)):.0f} s")


def booting_reason(seen: Mapping[str, Any], now: float) -> str:
    waited = max(0.0, now - float(seen.get("boot_started_at", now)))
    return (f"booting: waiting for console line matching '{seen.get('boot_pattern', '')}' "
            f"({waited:.0f} s of {float(seen.get('boot_timeout_s', 0)):.0f} s)")


def eta_words(seconds: float | None) -> str:
    """The time left in words; None: no rate measured yet (a copy's first seconds), never "unknown"."""
    if seconds is None:
        return "ETA being measured"
    if seconds < 1:
        return "almost done"
    return f"about {seconds:.0f} s left" if seconds < 120 else f"about {seconds / 60:.0f} min left"


def short_duration(seconds: float) -> str:
    """45s, 12m, 2h05m: for a column."""
    if seconds < 60:
        return f"{max(1.0, seconds):.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    return f"{seconds // 3600:.0f}h{seconds % 3600 // 60:02.0f}m"


def size_words(mib: float) -> str:
    """0.4 MiB, 38 MiB, 1.5 GiB: what is left to copy, or was copied."""
    if mib >= 1024:
        return f"{mib / 1024:.1f} GiB"
    return f"{mib:.1f} MiB" if mib < 10 else f"{mib:.0f} MiB"


# The states of a copy under way (the others: in sync, or not copying at all).
COPYING = ("syncing", "resyncing", "converged")
# A copy under way that made no progress for a while (kvm.blockmirror: `degraded` still busy, `stalled` idle).
NO_PROGRESS = ("stalled", "degraded")


def copy_rate_mib_s(state: Mapping[str, Any]) -> float | None:
    """The copy's recent rate: the node's own (a catch-up's, DRBD's), else what its ETA implies; None unknown."""
    if state.get("rate_mib_s") is not None:
        return float(state["rate_mib_s"])
    if state.get("rate_kib_s") is not None:
        return float(state["rate_kib_s"]) / 1024
    eta, left = state.get("eta_s"), state.get("remaining_mib")
    if eta and left:
        return float(left) / float(eta)
    return None


def copy_verdict(state: Mapping[str, Any]) -> str:
    """How a copy under way goes: "eta" (a time left can be said), "measuring" (no rate yet: its first
    seconds), "stalled" (no progress: a rate of 0 measured), "paused" (DRBD holds it behind another resync)."""
    if state.get("status") in NO_PROGRESS:
        return "stalled"
    if copy_eta_s(state) is not None:
        return "eta"
    rate = copy_rate_mib_s(state)
    if rate is None or rate > 0:
        return "measuring"
    if str(state.get("drbd") or "").startswith("Paused"):
        return "paused"
    if "drbd" in state or float(state.get("percent") or 0) > 0:
        return "stalled"  # DRBD measured 0, or a catch-up that copied some and then nothing for its rate window
    return "measuring"  # a catch-up before its second sample


def copy_eta_s(state: Mapping[str, Any]) -> float | None:
    """Seconds until this disk's copy is in sync, from its recent rate; None while that is not measured
    (or the copy makes no progress: copy_verdict says which)."""
    status = state.get("status")
    if status == "in_sync" or status == "converged":
        return 0.0
    if status in NO_PROGRESS:
        return None
    if state.get("eta_s") is not None:
        return float(state["eta_s"])
    rate, left = copy_rate_mib_s(state), state.get("remaining_mib")
    if rate and rate > 0 and left is not None:
        return float(left) / rate
    return None


def eta_phrase(state: Mapping[str, Any]) -> str:
    """The time left of one disk's copy under way, or why none is said."""
    verdict = copy_verdict(state)
    if verdict == "stalled":
        return "stalled: no progress"
    if verdict == "paused":
        return "paused: DRBD finishes another resync first"
    return eta_words(copy_eta_s(state))


def _verb(state: Mapping[str, Any]) -> str:
    if state.get("mode") == "incremental":
        return "resyncing only the changes"
    return "resyncing" if state.get("status") == "resyncing" else "syncing"


def disk_copy_words(state: Mapping[str, Any]) -> str:
    """One disk's copy for `instance info`: percent, what is left, the rate and the time left."""
    status = str(state.get("status"))
    left = state.get("remaining_mib")
    if status in NO_PROGRESS and left:
        return f"{status} at {float(state.get('percent') or 0):.1f} %, {size_words(float(left))} to copy: no progress"
    if status in ("syncing", "resyncing"):
        # A resyncing mirror's percent counts the guest's new writes too (kvm.blockmirror): only what is left.
        percent = state.get("percent")
        parts = [_verb(state) + (f" {percent:.1f} %" if percent is not None and status != "resyncing" else "")]
        if left is not None:
            rate = copy_rate_mib_s(state)
            parts.append(f"{size_words(float(left))} to copy" + (f" at {rate:.1f} MiB/s" if rate else ""))
        parts.append(eta_phrase(state))
        return ", ".join(parts)
    if status == "in_sync":
        return "in sync"
    if status == "blocked":
        return "writes held: the secondary failed a write, its copy is being recorded out of date"
    if status == "converged":
        return "copied, joining"
    if status == "disconnected":
        return f"not connected: {state.get('error') or 'DRBD has no connection to the secondary'}"
    if status == "failed" and state.get("error"):
        return f"failed: {state['error']}"
    return status.replace("_", " ")


def last_sync_words(last: Mapping[str, Any] | None) -> str:
    """The disk's last finished resync: 'last resync: only the changes, 3.2 MiB in 0.4 s (...)'; '' if none."""
    if not last:
        return ""
    mode = {"incremental": "only the changes", "full": "a full copy"}.get(str(last.get("mode")), str(last.get("mode")))
    if last.get("failed"):
        return f"last resync ({mode}) failed: {last['failed']}"
    text = f"last resync: {mode}"
    if last.get("copied_mib") is not None:
        text += f", {size_words(float(last['copied_mib']))}"
        if last.get("seconds") is not None:
            text += f" in {float(last['seconds']):.1f} s"
    if last.get("pause_ms"):
        text += f" (guest paused {last['pause_ms']} ms to join)"
    return text


def copy_eta_of(states: list[dict[str, Any]]) -> tuple[str, float | None]:
    """The copies of all disks at once: ("eta", seconds until the last is in sync), or the verdict of the disk
    that keeps a time from being said ("not copying", "stalled", "paused", "measuring"); ("in_sync", 0) when
    all are."""
    behind = [s for s in states if s.get("status") != "in_sync"]
    if not behind:
        return "in_sync", 0.0
    if any(s.get("status") not in COPYING + NO_PROGRESS for s in behind):
        return "not copying", None
    verdicts = [copy_verdict(s) for s in behind]
    for verdict in ("stalled", "paused", "measuring"):
        if verdict in verdicts:
            return verdict, None
    return "eta", max(copy_eta_s(s) or 0.0 for s in behind)


# Worst first: the state that decides what the operator is told.
_SEVERITY = ("failed", "blocked", "stalled", "degraded", "stopping", "stopped", "syncing", "resyncing", "converged",
             "in_sync")


def _worst(states: list[dict[str, Any]]) -> dict[str, Any]:
    return min(states, key=lambda s: _SEVERITY.index(s["status"]) if s["status"] in _SEVERITY else 0)


def describe_mirrors(states: list[dict[str, Any]]) -> str:
    """One phrase for the operator: 'in sync', 'syncing 45.0 %, about 12 s left', ...

    While disks are copied, the time left is that of the last of them to be in sync."""
    if not states:
        return "not mirrored"
    worst = _worst(states)
    status: str = worst["status"]
    if status in ("syncing", "resyncing"):
        verdict, eta = copy_eta_of(states)
        when = {"stalled": "stalled: no progress", "paused": "paused: DRBD finishes another resync first"}.get(
            verdict) or eta_words(eta)
        if status == "resyncing":
            return f"resyncing, {size_words(float(worst.get('remaining_mib') or 0))} to copy, {when}"
        verb = "resyncing only the changes" if worst.get("mode") == "incremental" else "syncing"
        return f"{verb} {float(worst.get('percent') or 0):.1f} %, {when}"
    return disk_copy_words(worst)


def short_copy_words(states: list[dict[str, Any]]) -> str:
    """A word or three for the `instance list` column: 'in sync', 'sync 45% 2m', 'resync 3s', 'stalled'."""
    if not states:
        return "no copy"
    worst = _worst(states)
    status = str(worst["status"])
    if status in ("syncing", "resyncing"):
        verb = "resync" if status == "resyncing" or worst.get("mode") == "incremental" else "sync"
        percent = "" if status == "resyncing" else f" {float(worst.get('percent') or 0):.0f}%"
        verdict, eta = copy_eta_of(states)
        when = {"eta": short_duration(eta or 0.0), "stalled": "stalled", "paused": "paused"}.get(verdict, "")
        return f"{verb}{percent}" + (f" {when}" if when else "")
    return {"in_sync": "in sync", "blocked": "writes held", "converged": "joining",
            "disconnected": "disconnected"}.get(status, status.replace("_", " "))
