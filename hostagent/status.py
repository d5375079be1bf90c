"""What an instance's status is, from the wanted state and the node's report.

Pure: the same function serves `instance list`, `cluster verify` and later
the master's restart decisions. Vocabulary follows Ganeti's so operators
coming from it read it at once: running, stopped, error (should run but does
not), error-up (runs but should not), node-down, unknown. A guest whose boot
the node judged (hostagent.node.boothealth) runs while it is "waiting" and is an
error once it timed out; the reason words are shared with the restarts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hostagent.units import format_mib

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
    if seconds is None:
        return "ETA unknown"
    return f"about {seconds:.0f} s left" if seconds < 120 else f"about {seconds / 60:.0f} min left"


# Worst first: the state that decides what the operator is told.
_SEVERITY = ("failed", "blocked", "stalled", "degraded", "stopping", "stopped", "syncing", "resyncing", "converged",
             "in_sync")


def describe_mirrors(states: list[dict[str, Any]]) -> str:
    """One phrase for the operator: 'in sync', 'syncing 45.0 %, about 12 s left', ..."""
    if not states:
        return "not mirrored"
    worst = min(states, key=lambda s: _SEVERITY.index(s["status"]) if s["status"] in _SEVERITY else 0)
    status: str = worst["status"]
    if status == "syncing":
        return f"syncing {worst['percent']:.1f} %, {eta_words(worst.get('eta_s'))}"
    if status == "blocked":
        return "writes held: the secondary failed a write, its copy is being recorded out of date"
    if status == "converged":
        return "copied, joining"
    if status == "disconnected":
        return f"not connected: {worst.get('error') or 'DRBD has no connection to the secondary'}"
    if status == "resyncing":
        return f"resyncing, {format_mib(worst.get('remaining_mib', 0))} to copy, {eta_words(worst.get('eta_s'))}"
    return status.replace("_", " ")
