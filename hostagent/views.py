"""Read models for the CLI and API, computed from the local replica only.

Pure functions of (config records, node reports, now), so every node answers
the same way and `cluster verify` findings are testable without processes.

Over 400 lines: `instance list`, `node list`, `cluster info` and `cluster verify` read a record and a report
the same way here, so a status never differs between them.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from storage.drbdconf import RESOURCE_PREFIX

from hostagent.master.decide import backup_schedule, networks
from hostagent.node.clocks import ClockReading
from hostagent.master.decide.placement import Request, Judge
from hostagent.node.looplag import WARN_MS as LOOP_LAG_WARN_MS
from hostagent.model import DEFAULT_BOOT_TIMEOUT_S, ON_LVM
from hostagent.master.decide.replicas import out_of_date_words
from hostagent.master.decide.syncpace import queued_words
from hostagent.status import (COPYING, NO_PROGRESS, REPORT_STALE_AFTER_S, copy_eta_of, describe_mirrors,
                              disk_copy_words, instance_status, last_sync_words, report_age_s, report_fresh,
                              short_copy_words)

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
    seen = ((reports.get(inst["primary_node"]) or {}).get("instances") or {}).get(inst["name"]) or {}
    # Snapshots stay on the node that made them: a migrated instance's are on its secondary until it is back.
    snapshots = [{**s, "node": node} for node in filter(None, (inst["primary_node"], inst.get("secondary_node")))
                 for s in ((reports.get(node) or {}).get("snapshots") or {}).get(inst["name"]) or []]
    replication = None
    if inst.get("secondary_node"):
        record = inst.get("replica") or {}
        standing = copy_standing(inst, reports, now) or {}
        replication = {"secondary": inst["secondary_node"],
                       "disks": [{**s, "words": disk_copy_words(s),
                                  "last_sync_words": last_sync_words(s.get("last_sync"))} for s in mirrors],
                       # right now, from both nodes' reports: the `instance list` column, and when it is in sync again
                       "redundant": standing.get("redundant"), "short": standing.get("short"),
                       "eta_s": standing.get("eta_s"), "why": standing.get("why"),
                       "in_sync": bool(inst.get("replica_in_sync")),
                       "summary": describe_mirrors(mirrors) if observed.pid or inst["disk_template"] == "drbd" else
                       ("in sync when last running" if inst.get("replica_in_sync") else "not known to be in sync"),
                       "record": ("in sync" if record.get("in_sync") else out_of_date_words(record)),
                       "record_since": record.get("since"), "generation": record.get("gen"),
                       "last_degraded": record.get("last_degraded"),
                       # DRBD resources without their secrets
                       "drbd": [{k: s[k] for k in ("index", "minor", "port")} for s in inst.get("drbd") or []]}
    return {"name": inst["name"], "status": status, "reason": reason,
            "pid": observed.pid, "admin_state": inst["admin_state"],
            "primary_node": inst["primary_node"], "secondary_node": inst.get("secondary_node"),
            "disk_template": inst["disk_template"], "memory": inst["memory_mib"], "vcpus": inst["vcpus"],
            "pending": inst.get("pending") or {}, "osparams": inst.get("osparams") or {},
            "owner": inst.get("owner", ""), "description": inst.get("description", ""),
            "tags": inst.get("tags") or [],
            "os": inst["os"], "disks": inst["disks"], "nics": inst["nics"], "hvparams": inst["hvparams"],
            "uuid": inst["uuid"], "ctime": inst["ctime"], "mtime": inst["mtime"], "replication": replication,
            "priority": inst.get("priority", "normal"), "after": inst.get("after", []),
            "boot_pattern": inst.get("boot_pattern", ""), "auto_failover": inst.get("auto_failover"),
            "cdrom": inst.get("cdrom"), "snapshots": snapshots, "backup_schedule": inst.get("backup_schedule") or "",
            "snapshot_bytes": sum(int(s.get("used_bytes", 0)) for s in snapshots),
            "boot_timeout_s": (inst.get("boot_timeout_s") or DEFAULT_BOOT_TIMEOUT_S) if inst.get("boot_pattern")
            else 0.0, "boot": seen.get("boot"), "vnc_socket": seen.get("vnc_socket") if observed.pid else None,
            "console_tail": restart.get("console", []) if status == "failed" else
            seen.get("boot_console", []) if status == "error" else []}


def copy_standing(inst: Mapping[str, Any], reports: Mapping[str, Mapping[str, Any]],
                  now: float) -> dict[str, Any] | None:
    """Whether a replicated instance has its second copy in sync right now (its replica record says so and
    every disk the primary reports is in sync), and if not, whether it is being copied and when it should be
    in sync again; None for an instance without a secondary.

    `verdict`: "in_sync", "eta" (`eta_s` says when), "measuring" (a copy in its first seconds), "stalled",
    "paused" (DRBD waits for another resync), "queued" (the copy waits its turn,
    hostagent.master.decide.syncpace), "not copying" (`why` says why).
    """
    secondary = inst.get("secondary_node")
    if not secondary:
        return None
    name, primary = inst["name"], inst["primary_node"]
    for role, node in (("primary", primary), ("secondary", secondary)):
        report = reports.get(node)
        if not report_fresh(report, now):
            age = report_age_s(report, now)
            return _standing("not copying", None, f"{role} node '{node}' down: "
                             + ("it never reported" if age is None else f"no report for {age:.0f} s"), f"{node} down")
    report = reports[primary]
    states: list[dict[str, Any]] = ((report.get("mirrors") or {}).get(name)) or []
    record = inst.get("replica") or {}
    if record.get("in_sync") and all(s.get("status") == "in_sync" for s in states):
        return {**_standing("in_sync", 0.0, "", "in sync"), "redundant": True}
    queued = record.get("queued")
    if queued and not any(s.get("status") in COPYING for s in states):
        place, of = queued
        return _standing("queued", None, f"{queued_words(place, of)}: the master copies a few at a time per node, "
                         "critical first", f"queued {place}/{of}")
    if not states:
        if inst.get("disk_template") == "drbd":
            return _standing("not copying", None, "its DRBD devices are not up on the primary", "not up")
        if name not in (report.get("instances") or {}):
            return _standing("not copying", None, f"stopped, its copy {out_of_date_words(record)}: it is brought "
                             "up to date once the instance runs", "out of date")
        return _standing("not copying", None, "no copy under way", "no copy")
    verdict, eta = copy_eta_of(states)
    if verdict == "in_sync":
        return _standing("eta", 0.0, "copied: the master is recording it in sync", "joining")
    short = short_copy_words(states)
    if verdict in ("eta", "measuring"):
        return _standing(verdict, eta, describe_mirrors(states), short)
    worst = next((s for s in states if s.get("status") not in COPYING + NO_PROGRESS + ("in_sync",)), None) \
        or next(s for s in states if s.get("status") != "in_sync" and copy_eta_of([s])[0] == verdict)
    return _standing(verdict, None, f"disk {worst.get('index')} {disk_copy_words(worst)}", short)


def _standing(verdict: str, eta_s: float | None, why: str, short: str) -> dict[str, Any]:
    return {"redundant": False, "verdict": verdict, "copying": verdict in ("eta", "measuring"),
            "eta_s": None if eta_s is None else round(eta_s, 1), "why": why, "short": short}


def redundancy(instances: Iterable[Mapping[str, Any]], reports: Mapping[str, Mapping[str, Any]],
               now: float) -> dict[str, Any]:
    """`cluster info`: how many replicated instances have no second copy in sync right now, which, and when the
    last of those being copied should be in sync again (`eta_s`, `eta_at`: the latest of their ETAs, those in
    `measuring` left out until their copy has a rate); those not being copied at all are in `unknown`, each with
    why."""
    standings = {i["name"]: s for i in instances for s in [copy_standing(i, reports, now)] if s is not None}
    behind = {name: s for name, s in sorted(standings.items()) if not s["redundant"]}
    copying = {name: s for name, s in behind.items() if s["copying"]}
    measuring = [name for name, s in copying.items() if s["eta_s"] is None]
    timed = [s["eta_s"] for s in copying.values() if s["eta_s"] is not None]
    eta = max(timed) if timed else None
    return {"replicated": len(standings), "not_redundant": list(behind),
            "copying": {name: s["why"] for name, s in copying.items()},
            "measuring": measuring, "eta_s": eta, "eta_at": None if eta is None else round(now + eta, 1),
            "unknown": {name: s["why"] for name, s in behind.items() if not s["copying"]}}


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
    lag = (report or {}).get("loop_lag_ms")
    if status == "online" and isinstance(lag, (int, float)) and lag >= LOOP_LAG_WARN_MS:
        problems.append(f"its agent's event loop was held {lag / 1000:.1f} s in the last minute "
                        "(lease renewals and answers waited that long)")
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
            "cpus": report.get("cpus"),
            "load_1m": None if report.get("load_1m") is None else round(float(report["load_1m"]), 2),
            "load_10s": report.get("load_10s"),
            "disk_total": report.get("disk_total_mib"), "disk_free": report.get("disk_free_mib"),
            "snapshot_bytes": sum(int(s.get("used_bytes", 0)) for snaps in (report.get("snapshots") or {}).values()
                                  for s in snaps),
            "primary_instances": sum(1 for i in instances if i["primary_node"] == node["name"]),
            "secondary_instances": sum(1 for i in instances if i.get("secondary_node") == node["name"]),
            "report_age_s": None if age is None else round(age, 1), "version": report.get("version"),
            "lvm": report.get("lvm"), "loop_lag_ms": report.get("loop_lag_ms"), "tags": node.get("tags") or []}


@dataclass(frozen=True)
class Finding:
    """One problem. `code` and the fields below say what it is about, so `--repair` can act on it."""

    severity: str  # "error" | "warning"
    message: str
    code: str = ""
    node: str = ""
    instance: str = ""
    pid: int | None = None
    disk: int | None = None
    subject: str = ""  # the disk path or DRBD resource the finding is about


CLOCK_WARN_S = 1.0
CLOCK_ERROR_S = 10.0


def jobs_in_flight(jobs: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """Instance name -> the queued or running job working on it, in words.

    Half-done work looks like trouble (a migration's second QEMU, a move's
    export), so verify says which job it is and repair leaves it alone.
    """
    out: dict[str, str] = {}
    for job in jobs:
        if job.get("status") not in ("queued", "running"):
            continue
        args = job.get("args") or {}
        names = [args.get("name") or (args.get("instance") or {}).get("name"), *(args.get("instances") or [])]
        for name in filter(None, names):  # "instances": a node evacuation moves each of them
            out.setdefault(str(name), f"job {job['id']} ({job.get('summary') or job.get('op')}) is {job['status']}")
    return out


def drbd_owner(resource: str) -> tuple[str, int] | None:
    """(instance, disk index) of a Corral DRBD resource name; None for a resource Corral did not name."""
    if not resource.startswith(RESOURCE_PREFIX):
        return None
    instance, sep, index = resource[len(RESOURCE_PREFIX):].rpartition("-")
    return (instance, int(index)) if sep and instance and index.isdigit() else None


def verify(nodes: list[dict[str, Any]], instances: list[dict[str, Any]],
           reports: dict[str, dict[str, Any]], jobs: list[dict[str, Any]], master: str | None,
           now: float, *, cluster: Mapping[str, Any] | None = None,
           leases: Mapping[str, Mapping[str, Any]] | None = None,
           tracks: Iterable[Mapping[str, Any]] | None = None,
           clocks: Mapping[str, ClockReading] | None = None,
           addresses: tuple[Iterable[str], Mapping[str, str]] | None = None) -> list[Finding]:
    """Everything an operator should know is wrong; one finding per problem.

    Each keyword input turns checks on; a caller that cannot know one leaves it
    out: `cluster` (the cluster record: alert, fencing), `leases` (node -> its
    node lease record), `tracks` (the master's restart tracks, to find those of
    deleted instances), `clocks` (node -> its clock as read from the node
    verify runs on), `addresses` (the network names and the held address
    records, "<network>/<ip>" -> instance uuid).
    """
    out: list[Finding] = []
    if master is None:
        out.append(Finding("error", "no node holds the master lease", "no-master"))
    out += _cluster_findings(cluster or {})
    if (cluster or {}).get("require_owner"):
        out += [Finding("warning", f"instance '{i['name']}': has no owner, and this cluster asks for one "
                                   f"(`corral instance modify {i['name']} --owner NAME`)", "no-owner",
                        instance=i["name"]) for i in instances if not i.get("owner")]
    by_name = {i["name"]: i for i in instances}
    busy = jobs_in_flight(jobs)
    fresh: dict[str, dict[str, Any]] = {}
    running_on: dict[str, list[str]] = {}
    for node in nodes:
        name = node["name"]
        if leases is not None and name not in leases and not node.get("offline"):
            out.append(Finding("error", f"node '{name}': holds no node lease: its agent is not renewing it, "
                                        "so the master counts the node as lost", "no-lease", name))
        report = reports.get(name)
        age = report_age_s(report, now)
        if report is None or age is None:
            out.append(Finding("error", f"node '{name}': has never reported", "no-report", name))
            continue
        if age > REPORT_STALE_AFTER_S:
            out.append(Finding("error", f"node '{name}': no report for {age:.0f} s (agent down?)", "stale-report",
                               name))
            continue
        fresh[name] = report
        for inst_name in report.get("instances", {}):
            running_on.setdefault(inst_name, []).append(name)
        out += _node_findings(name, report, by_name, busy)
    for inst in instances:
        out += _instance_findings(inst, reports, running_on.get(inst["name"], []), now)
    out += [Finding("warning", message, "backup-overdue", by_name[name]["primary_node"], name)
            for name, message in backup_schedule.overdue(instances, reports, now)]
    out += _n_plus_1(nodes, fresh, instances, now)
    out += _clock_findings(clocks or {})
    if addresses is not None:
        out += [Finding("error" if code == "missing-network" else "warning", message, code, instance=inst)
                for code, message, inst in networks.leftovers(instances, *addresses)]
    for track in tracks or ():
        if track["name"] not in by_name:
            out.append(Finding("warning", f"the master's restart track of deleted instance '{track['name']}' "
                                          "is left over", "stale-track", instance=track["name"]))
    for job in jobs:
        if job["status"] == "running" and now - (job.get("started") or now) > JOB_STUCK_AFTER_S:
            out.append(Finding("warning", f"job {job['id']} ({job['summary']}) has been running for "
                                          f"{(now - job['started']) / 60:.0f} min", "job-stuck"))
    return out


def _while(job: str | None) -> str:
    return f"; {job}" if job else ""


def _when(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def _cluster_findings(cluster: Mapping[str, Any]) -> list[Finding]:
    out: list[Finding] = []
    alert = cluster.get("alert")
    if alert:
        since = f" since {_when(alert['since'])}" if alert.get("since") else ""
        out.append(Finding("error", f"cluster alert{since}: {alert.get('reason') or 'no reason recorded'}", "alert"))
    if cluster.get("fencing", "armed") == "disarmed":
        since = f" since {_when(cluster['fencing_since'])}" if cluster.get("fencing_since") else ""
        out.append(Finding("warning", f"fencing is disarmed{since}: nothing fails over automatically",
                           "fencing-disarmed"))
    return out


def _node_findings(name: str, report: Mapping[str, Any], by_name: Mapping[str, Mapping[str, Any]],
                   busy: Mapping[str, str]) -> list[Finding]:
    """What one node's fresh report shows: unknown or misplaced QEMUs, orphans, DRBD trouble."""
    out = [Finding("warning", f"node '{name}': OS definition problem: {p}", "os-problem", name)
           for p in report.get("os_problems", [])]
    running = report.get("instances", {})
    for inst_name, seen in running.items():
        inst, pid, job = by_name.get(inst_name), seen.get("pid"), busy.get(inst_name)
        if inst is None:
            out.append(Finding("warning" if job else "error", f"node '{name}': QEMU for unknown instance "
                               f"'{inst_name}' is running (pid {pid})" + _while(job), "unknown-qemu", name,
                               inst_name, pid))
        elif inst["primary_node"] != name:
            out.append(Finding("warning" if job else "error", f"instance '{inst_name}' runs on node '{name}' but "
                               f"its primary is '{inst['primary_node']}' (pid {pid})" + _while(job), "wrong-node",
                               name, inst_name, pid))
    for stray in report.get("stray_qemus", []):
        inst_name, pid = stray["instance"], stray["pid"]
        tracked = running.get(inst_name)
        if tracked:
            out.append(Finding("error", f"node '{name}': two QEMUs for instance '{inst_name}': pid "
                                        f"{tracked.get('pid')} (named by its pidfile) and pid {pid}",
                               "duplicate-qemu", name, inst_name, pid))
        else:
            out.append(Finding("error", f"node '{name}': QEMU pid {pid} of instance '{inst_name}' is not the "
                                        "one its pidfile names, so the agent neither sees nor stops it",
                               "untracked-qemu", name, inst_name, pid))
    for vol in report.get("volumes", []):
        why = _volume_orphaned(name, vol, by_name.get(vol["instance"]))
        if why:
            out.append(Finding("warning", f"node '{name}': orphan disk {vol['path']} ({why})"
                               + _while(busy.get(vol["instance"])),
                               "orphan-disk", name, vol["instance"], disk=vol.get("index"), subject=vol["path"]))
    out += _missing_lvs(name, report, by_name.values(), busy)
    for inst_name, snaps in (report.get("snapshots") or {}).items():
        inst = by_name.get(inst_name)
        if inst is None or name not in (inst["primary_node"], inst.get("secondary_node")):
            out.append(Finding("warning", f"node '{name}': orphan snapshot(s) {', '.join(s['name'] for s in snaps)} "
                               f"of '{inst_name}', " + ("not an instance of the cluster" if inst is None else
                                                        "whose disks are no longer on this node")
                               + f" ({sum(int(s.get('used_bytes', 0)) for s in snaps) >> 20} MiB; in the snapshots "
                               f"directory of '{inst_name}' in the node's file storage, or LVs tagged "
                               f"corral-snapshot={inst_name}/...)" + _while(busy.get(inst_name)),
                               "orphan-snapshot", name, inst_name))
    out += [Finding("warning", f"node '{name}': {p}", "snapshot-problem", name)
            for p in report.get("snapshot_problems", [])]
    out += [Finding("warning", f"node '{name}': {path} was left by a snapshot (or its removal) of "
                    f"'{inst_name}' cut short and takes space; delete it" + _while(busy.get(inst_name)),
                    "snapshot-leftover", name, inst_name, subject=path)
            for inst_name, paths in (report.get("snapshot_leftovers") or {}).items() for path in paths]
    out += [Finding("warning", f"node '{name}': {p}", "backup-problem", name)
            for p in report.get("backup_problems", [])]
    out += [Finding("warning", f"node '{name}': {path} was left by an export (or a backup's removal) of "
                    f"'{owner}' cut short and takes space; delete it" + _while(busy.get(owner)),
                    "backup-leftover", name, owner, subject=path)
            for path in report.get("backup_leftovers", []) for owner in [path.rsplit("/", 2)[-2]]]
    for export in report.get("exports", []):
        why = _export_orphaned(name, export, by_name.get(export["instance"]))
        if why:
            out.append(Finding("warning", f"node '{name}': orphan NBD export of disk {export['disk']} of "
                                          f"'{export['instance']}' (pid {export['pid']}): {why}"
                               + _while(busy.get(export["instance"])), "orphan-export", name,
                               export["instance"], export["pid"], export["disk"]))
    out += _drbd_findings(name, report.get("drbd") or {}, by_name)
    return out


def _volume_orphaned(node: str, vol: Mapping[str, Any], inst: Mapping[str, Any] | None) -> str:
    """Why no instance needs this disk here; '' when one does. A logical volume (its path under /dev) serves
    only an instance whose disks are LVs, a file only one whose disks are files."""
    if inst is None or node not in (inst["primary_node"], inst.get("secondary_node")):
        return f"no instance '{vol['instance']}' here"
    if vol.get("index") not in {d["index"] for d in inst["disks"]}:
        return f"instance '{vol['instance']}' has no disk {vol.get('index')}"
    if str(vol["path"]).startswith("/dev/") != (inst["disk_template"] in ON_LVM):
        kind = "logical volumes" if inst["disk_template"] in ON_LVM else "files"
        return f"instance '{vol['instance']}' keeps its disks in {kind} ({inst['disk_template']})"
    return ""


def _missing_lvs(node: str, report: Mapping[str, Any], instances: Iterable[Mapping[str, Any]],
                 busy: Mapping[str, str]) -> list[Finding]:
    """The disks of `plain` instances whose primary is `node` (and `drbd` ones it holds a copy of) and whose LV its
    volume group lacks. Judged only
    when the node could read its volume group (the report's `lvm` has no error): its LV list is then complete."""
    lvm = report.get("lvm") or {}
    if not lvm.get("vg") or lvm.get("error"):
        return []
    present = {(v["instance"], v.get("index")) for v in report.get("volumes", []) if str(v["path"]).startswith("/dev/")}
    out: list[Finding] = []
    for inst in instances:
        holders = {"plain": (inst["primary_node"],), "drbd": (inst["primary_node"], inst.get("secondary_node"))}
        if node not in holders.get(inst["disk_template"], ()):
            continue
        for disk in inst["disks"]:
            if (inst["name"], disk["index"]) in present:
                continue
            job = busy.get(inst["name"])
            out.append(Finding("warning" if job else "error",
                               f"instance '{inst['name']}': disk {disk['index']} is missing: no logical volume "
                               f"for it in volume group {lvm['vg']} on its "
                               f"{'primary' if node == inst['primary_node'] else 'secondary'} node '{node}'"
                               + _while(job),
                               "missing-disk", node, inst["name"], disk=disk["index"]))
    return out


def _export_orphaned(node: str, export: Mapping[str, Any], inst: Mapping[str, Any] | None) -> str:
    """Why no mirror needs this export; '' when one does."""
    if inst is None:
        return "no such instance"
    if inst["disk_template"] != "mirror":
        return f"the instance is not mirrored (template {inst['disk_template']})"
    if inst.get("secondary_node") != node:
        secondary = inst.get("secondary_node")
        return f"its secondary is node '{secondary}'" if secondary else "it has no secondary"
    if export["disk"] not in {d["index"] for d in inst["disks"]}:
        return f"the instance has no disk {export['disk']}"
    return ""


def _drbd_findings(name: str, drbd: Mapping[str, Any], by_name: Mapping[str, Mapping[str, Any]]) -> list[Finding]:
    """Resources no instance uses here, and (seen from the primary) copies not in sync."""
    out: list[Finding] = []
    if drbd.get("error"):
        out.append(Finding("warning", f"node '{name}': DRBD state unreadable: {drbd['error']}", "drbd-unreadable",
                           name))
    for res in drbd.get("resources", []):
        owner = drbd_owner(res["name"])
        if owner is None:
            continue
        inst_name, index = owner
        inst = by_name.get(inst_name)
        if inst is None:
            why = "no such instance"
        elif inst["disk_template"] != "drbd":
            why = f"instance '{inst_name}' does not use DRBD (template {inst['disk_template']})"
        elif name not in (inst["primary_node"], inst.get("secondary_node")):
            why = f"instance '{inst_name}' is not on this node"
        elif index not in {d["index"] for d in inst["disks"]}:
            why = f"instance '{inst_name}' has no disk {index}"
        else:
            why = ""
        if why:
            out.append(Finding("warning", f"node '{name}': orphan DRBD resource {res['name']} ({why})",
                               "orphan-drbd", name, inst_name, disk=index, subject=res["name"]))
        elif inst is not None and res.get("connection") == "StandAlone":
            out.append(Finding("error", f"instance '{inst_name}' disk {index}: DRBD on node '{name}' refuses to "
                                        f"connect to its peer ({res.get('summary')}): a split brain (both sides "
                                        "wrote while apart) or a peer still Primary", "drbd-split-brain", name,
                               inst_name, disk=index, subject=res["name"]))
        elif inst is not None and inst["primary_node"] == name and not res.get("up_to_date"):
            out.append(Finding("error", f"instance '{inst_name}' disk {index}: DRBD on node '{name}' is not in "
                                        f"sync: {res.get('summary')}", "drbd-degraded", name, inst_name,
                               disk=index, subject=res["name"]))
    return out


def _instance_findings(inst: dict[str, Any], reports: dict[str, dict[str, Any]], where: list[str],
                       now: float) -> list[Finding]:
    """`where`: the nodes whose fresh report shows a QEMU for this instance."""
    name, primary = inst["name"], inst["primary_node"]
    row = instance_row(inst, reports, now)
    out: list[Finding] = []
    if inst.get("admin_state") == "up" and not where:
        out.append(Finding("error", _runs_nowhere(inst, row, now), "runs-nowhere", primary, name))
    elif row["status"] in ("error", "failed") and primary in where:
        out.append(Finding("error", f"instance '{name}': {row['reason']} on node '{primary}'", "instance-error",
                           primary, name, row["pid"]))
    elif row["status"] == "error-up":
        out.append(Finding("warning", f"instance '{name}': {row['reason']}", "error-up", primary, name, row["pid"]))
    rep = row["replication"]
    if rep and row["pid"] and rep["summary"] != "in sync":
        bad = not rep["disks"] or any(d["status"] in ("degraded", "stalled", "failed") for d in rep["disks"])
        out.append(Finding("error" if bad else "warning",
                           f"instance '{name}': its copy on node '{rep['secondary']}' is {rep['summary']}"
                           + (" (no current copy: a failover is refused until one is in sync)" if bad else ""),
                           "replication", primary, name))
    elif rep and not row["pid"] and not rep["in_sync"] and inst.get("admin_state") == "up":
        out.append(Finding("warning", f"instance '{name}': its copy on node '{rep['secondary']}' is "
                           f"{rep['record']}: a failover is refused until it runs with a new copy",
                           "replication", primary, name))
    if len(where) > 1:
        out.append(Finding("error", f"instance '{name}' runs on several nodes: {', '.join(where)}", "multi-node",
                           instance=name))
    return out


def _runs_nowhere(inst: Mapping[str, Any], row: Mapping[str, Any], now: float) -> str:
    """Marked up, no QEMU anywhere: say what the master's restart duty is doing about it."""
    name, primary = inst["name"], inst["primary_node"]
    track = inst.get("restart") or {}
    if track.get("failed"):
        return (f"instance '{name}': {track['failed']} (marked up, running nowhere; "
                f"`corral instance start {name}` tries again)")
    if row["status"] in ("node-down", "unknown"):
        return f"instance '{name}': marked up but running nowhere: {row['reason']}"
    text = f"instance '{name}': marked up but running nowhere (primary node '{primary}')"
    if track.get("attempts"):
        text += f"; {track['attempts']} restart attempt(s) so far"
        if track.get("next_try_at", 0.0) > now:
            text += f", next in {track['next_try_at'] - now:.0f} s"
        if track.get("last_error"):
            text += f", last error: {track['last_error']}"
    elif track.get("last_error"):
        text += f"; {track['last_error']}"
    else:
        text += "; the master has not tried to restart it yet"
    return text


def _n_plus_1(nodes: list[dict[str, Any]], fresh: Mapping[str, Mapping[str, Any]],
              instances: list[dict[str, Any]], now: float) -> list[Finding]:
    """Placement's own N+1 rule, applied to the cluster as it is (no new instance).

    Only nodes whose report says how much memory they have are judged."""
    judge = Judge(Request(memory_mib=0, disk_mib=0, replicated=False), {n["name"]: n for n in nodes}, fresh,
                   instances, now, REPORT_STALE_AFTER_S)
    return [Finding("error", f"node '{node}': {text}", "n-plus-1", node)
            for node in sorted(fresh) if "memory_total_mib" in fresh[node]
            for text in judge._n_plus_1(node, judge.free_memory(node))]


def _clock_findings(clocks: Mapping[str, ClockReading]) -> list[Finding]:
    out: list[Finding] = []
    for node, clock in sorted(clocks.items()):
        if clock.offset_s is None:
            out.append(Finding("warning", f"node '{node}': clock not measured: {clock.error}", "clock-unmeasured",
                               node))
            continue
        skew = abs(clock.offset_s) - clock.uncertainty_s  # certainly at least this far off
        if skew > CLOCK_WARN_S:
            side = "ahead of" if clock.offset_s > 0 else "behind"
            out.append(Finding("error" if skew > CLOCK_ERROR_S else "warning",
                               f"node '{node}': clock is {abs(clock.offset_s):.1f} s {side} the clock of node "
                               f"'{clock.reference}' (±{clock.uncertainty_s:.2f} s); leases and reports compare "
                               "clocks across nodes: keep every node in sync with NTP (e.g. chrony)",
                               "clock-skew", node))
    return out
