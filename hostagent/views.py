"""Read models for the CLI and API, computed from the local replica only.

Pure functions of (config records, node reports, now), so every node answers
the same way and `cluster verify` findings are testable without processes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hostagent.status import REPORT_STALE_AFTER_S, instance_status, report_age_s
from hostagent.units import format_mib

JOB_STUCK_AFTER_S = 3600.0


def instance_row(inst: dict[str, Any], reports: dict[str, dict[str, Any]], now: float) -> dict[str, Any]:
    observed = instance_status(inst, reports.get(inst["primary_node"]), now)
    restart = inst.get("restart") or {}
    status, reason = observed.status, observed.reason
    if status == "error" and restart.get("failed"):
        status, reason = "failed", restart["failed"]
    elif status == "error" and restart.get("attempts"):
        reason += f"; restarting (attempt {restart['attempts']})"
    mirrors = (reports.get(inst["primary_node"]) or {}).get("mirrors", {}).get(inst["name"], [])
    replication = None
    if inst.get("secondary_node"):
        replication = {"secondary": inst["secondary_node"], "disks": mirrors,
                       "in_sync": bool(inst.get("replica_in_sync")),
                       "summary": describe_mirrors(mirrors) if observed.pid else
                       ("in sync when last running" if inst.get("replica_in_sync") else "not known to be in sync")}
    return {"name": inst["name"], "status": status, "reason": reason,
            "pid": observed.pid, "admin_state": inst["admin_state"],
            "primary_node": inst["primary_node"], "secondary_node": inst.get("secondary_node"),
            "disk_template": inst["disk_template"], "memory": inst["memory_mib"], "vcpus": inst["vcpus"],
            "os": inst["os"], "disks": inst["disks"], "nics": inst["nics"], "hvparams": inst["hvparams"],
            "uuid": inst["uuid"], "ctime": inst["ctime"], "mtime": inst["mtime"], "replication": replication,
            "priority": inst.get("priority", "normal"), "after": inst.get("after", []),
            "console_tail": restart.get("console", []) if status == "failed" else []}


def eta_words(seconds: float | None) -> str:
    if seconds is None:
        return "ETA unknown"
    return f"about {seconds:.0f} s left" if seconds < 120 else f"about {seconds / 60:.0f} min left"


# Worst first: the state that decides what the operator is told.
_SEVERITY = ("failed", "stalled", "degraded", "stopping", "stopped", "syncing", "resyncing", "in_sync")


def describe_mirrors(states: list[dict[str, Any]]) -> str:
    """One phrase for the operator: 'in sync', 'syncing 45.0 %, about 12 s left', ..."""
    if not states:
        return "not mirrored"
    worst = min(states, key=lambda s: _SEVERITY.index(s["status"]) if s["status"] in _SEVERITY else 0)
    status = worst["status"]
    if status == "syncing":
        return f"syncing {worst['percent']:.1f} %, {eta_words(worst.get('eta_s'))}"
    if status == "resyncing":
        return f"resyncing, {format_mib(worst.get('remaining_mib', 0))} to copy, {eta_words(worst.get('eta_s'))}"
    return status.replace("_", " ")


def node_row(node: dict[str, Any], report: dict[str, Any] | None, master: str | None,
             gossip: dict[str, dict[str, Any]], instances: list[dict[str, Any]], lease_held: bool,
             now: float) -> dict[str, Any]:
    """One line of `node list`: what the node is, and why anything is wrong with it."""
    age = report_age_s(report, now)
    problems: list[str] = []
    if age is None:
        status, problems = "unknown", ["no report received yet"]
    elif age > REPORT_STALE_AFTER_S:
        status, problems = "down", [f"no report for {age:.0f} s"]
    else:
        status = "online"
    seen = gossip.get(node["name"])
    if gossip and seen is None:
        problems.append("not in the gossip membership")
    elif seen is not None and seen["status"] != "alive":
        problems.append(f"gossip: {seen['reason']}")
    if not lease_held:
        problems.append("node lease expired (agent not renewing it)")
    etcd = (report or {}).get("etcd") or {}
    if node.get("candidate") and etcd and not etcd.get("healthy"):
        problems.append(f"etcd member unhealthy: {etcd.get('reason')}")
    if node.get("offline"):
        status = "offline"
    role = "master" if node["name"] == master else ("candidate" if node.get("candidate") else "regular")
    report = report or {}
    return {"name": node["name"], "role": role, "status": status, "problems": problems,
            "address": node["address"], "gossip": seen["status"] if seen else "unknown",
            "etcd": ("-" if not node.get("candidate") else "unknown" if status != "online"
                     else "healthy" if etcd.get("healthy") else "unhealthy"),
            "lease": "held" if lease_held else "expired",
            "drained": node.get("drained", False), "offline": node.get("offline", False),
            "master_capable": node.get("master_capable", True),
            "memory_total": report.get("memory_total_mib"), "memory_free": report.get("memory_free_mib"),
            "cpus": report.get("cpus"), "load_1m": report.get("load_1m"),
            "disk_total": report.get("disk_total_mib"), "disk_free": report.get("disk_free_mib"),
            "primary_instances": sum(1 for i in instances if i["primary_node"] == node["name"]),
            "secondary_instances": sum(1 for i in instances if i.get("secondary_node") == node["name"]),
            "report_age_s": None if age is None else round(age, 1), "version": report.get("version"),
            "lvm": report.get("lvm")}


@dataclass(frozen=True)
class Finding:
    severity: str  # "error" | "warning"
    message: str


def verify(nodes: list[dict[str, Any]], instances: list[dict[str, Any]],
           reports: dict[str, dict[str, Any]], jobs: list[dict[str, Any]], master: str | None,
           now: float) -> list[Finding]:
    """Everything an operator should know is wrong; one finding per problem."""
    out: list[Finding] = []
    if master is None:
        out.append(Finding("error", "no node holds the master lease"))
    by_name = {i["name"]: i for i in instances}
    running_on: dict[str, list[str]] = {}
    for node in nodes:
        name = node["name"]
        report = reports.get(name)
        age = report_age_s(report, now)
        if report is None or age is None:
            out.append(Finding("error", f"node '{name}': has never reported"))
            continue
        if age > REPORT_STALE_AFTER_S:
            out.append(Finding("error", f"node '{name}': no report for {age:.0f} s (agent down?)"))
            continue
        for problem in report.get("os_problems", []):
            out.append(Finding("warning", f"node '{name}': OS definition problem: {problem}"))
        for inst_name, seen in report.get("instances", {}).items():
            running_on.setdefault(inst_name, []).append(name)
            inst = by_name.get(inst_name)
            if inst is None:
                out.append(Finding("error", f"node '{name}': QEMU for unknown instance '{inst_name}' "
                                            f"is running (pid {seen.get('pid')})"))
            elif inst["primary_node"] != name:
                out.append(Finding("error", f"instance '{inst_name}' runs on node '{name}' but its "
                                            f"primary is '{inst['primary_node']}'"))
        for vol in report.get("volumes", []):
            inst = by_name.get(vol["instance"])
            if inst is None or name not in (inst["primary_node"], inst.get("secondary_node")):
                out.append(Finding("warning", f"node '{name}': orphan disk {vol['path']} "
                                              f"(no instance '{vol['instance']}' here)"))
    for inst in instances:
        row = instance_row(inst, reports, now)
        if row["status"] in ("error", "failed"):
            out.append(Finding("error", f"instance '{inst['name']}': {row['reason']} "
                                        f"on node '{inst['primary_node']}'"))
        elif row["status"] == "error-up":
            out.append(Finding("warning", f"instance '{inst['name']}': {row['reason']}"))
        rep = row["replication"]
        if rep and row["pid"] and rep["summary"] != "in sync":
            bad = not rep["disks"] or any(d["status"] in ("degraded", "stalled", "failed") for d in rep["disks"])
            out.append(Finding("error" if bad else "warning",
                               f"instance '{inst['name']}': its copy on node '{rep['secondary']}' is "
                               f"{rep['summary']}" + (" (no current copy: a failover now would lose writes)"
                                                      if bad else "")))
        if len(running_on.get(inst["name"], [])) > 1:
            out.append(Finding("error", f"instance '{inst['name']}' runs on several nodes: "
                                        f"{', '.join(running_on[inst['name']])}"))
    for job in jobs:
        if job["status"] == "running" and now - (job.get("started") or now) > JOB_STUCK_AFTER_S:
            out.append(Finding("warning", f"job {job['id']} ({job['summary']}) has been running for "
                                          f"{(now - job['started']) / 60:.0f} min"))
    return out
