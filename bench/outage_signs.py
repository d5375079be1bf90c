"""What the outage benchmark reads besides the guests (bench/outage_recovery.py): the agents' and etcd's logs,
the processes' CPU time and niceness, and etcd's Raft term; it shows whether the control plane kept up."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

import psutil

from benchcluster import AgentNode, Cluster, etcdctl, pidfile_pids

LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) corral-agent\[\d+\] (\w+) (.*)$")
# What the agents' logs say, by what it means for the recovery (hostagent.master.duties.restarter, election, executor).
LOG_SIGNS = {
    "start ordered": re.compile(r"is marked up but .*: starting it on node"),
    "  of which a retry": re.compile(r"starting it on node '[^']+' \(attempt [2-9]"),
    "start failed": re.compile(r"start on node '[^']+' failed"),
    "wait (load/memory)": re.compile(r" waits: node "),
    "master lease acquired": re.compile(r"acquired the master lease"),
    "master stopped acting": re.compile(r"could not renew the master lease in time|master lease expired"
                                        r"|lost contact with etcd|lost the master lease|stepped back"),
    "master lease not renewed in time": re.compile(r"could not renew the master lease in time"),
    "master renewal failed, retried": re.compile(r"could not renew the master lease \("),
    "QMP failed on a live QEMU": re.compile(r"QEMU is alive but QMP failed"),
    "task exception never retrieved": re.compile(r"Task exception was never retrieved"),
}
ACQUIRED = re.compile(r"acquired the master lease; node '([^']+)' is master")
ETCD_SIGNS = 8  # the most frequent etcd warnings printed
ETCD_NOISE = ("ignoring common name in gRPC-gateway proxy request", "simple token is not cryptographically signed")
RESTARTED = re.compile(r"instance '([^']+)' restarted on node '[^']+' \(pid (\d+)\)")
REDUNDANT_START = "  start that found its QEMU running"


def cpu_seconds(cluster: Cluster) -> dict[int, tuple[str, float]]:
    """pid -> (process kind, CPU seconds it has used) for the agents, their etcd/Serf and the QEMUs."""
    kinds: dict[int, str] = {}
    for node in cluster.alive():
        kinds[node.agent_pid()] = "agents"
        kinds.update({pid: "etcd+serf" for pid in node.child_pids()})
        kinds.update({pid: "QEMUs" for pid in pidfile_pids(node)})
    out = {}
    for pid, kind in kinds.items():
        try:
            cpu = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        out[pid] = (kind, cpu.user + cpu.system)
    return out


def cpu_by_kind(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds used between two cpu_seconds readings, by kind (a process born meanwhile counts whole)."""
    used: dict[str, float] = {}
    for pid, (kind, cpu) in after.items():
        used[kind] = used.get(kind, 0.0) + cpu - before.get(pid, (kind, 0.0))[1]
    return used


def idle_cpu(cluster: Cluster, seconds: float) -> dict[str, float]:
    """CPU the cluster uses once every instance runs, in % of one CPU over `seconds`, by process kind
    (what keeps the host's load up when nothing is booting)."""
    before, t0 = cpu_seconds(cluster), time.monotonic()
    time.sleep(seconds)
    used = cpu_by_kind(before, cpu_seconds(cluster))
    elapsed = time.monotonic() - t0
    return {kind: sec / elapsed * 100 for kind, sec in used.items()}


def log_signs(cluster: Cluster, offsets: dict[str, int], wall0: float,
              masters: list[tuple[float, str]] | None = None) -> dict[str, list[float]]:
    """When each LOG_SIGNS line appeared in any agent's log since the restart, in s from t=0; also
    REDUNDANT_START: start orders that found the QEMU of the instance's previous start still running.
    `masters` gets (t, node) of each master lease acquisition."""
    found: dict[str, list[float]] = {name: [] for name in LOG_SIGNS}
    started: list[tuple[float, str, str]] = []  # (t, instance, pid) of each "restarted on node" line
    for node in cluster.nodes:
        with open(node.root / "agent.log", "rb") as f:
            f.seek(offsets[node.name])
            text = f.read().decode(errors="replace")
        for line in text.splitlines():
            m = LOG_LINE.match(line)
            if not m:
                continue
            t = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp() - wall0
            for name, pattern in LOG_SIGNS.items():
                if pattern.search(m.group(3)):
                    found[name].append(t)
            acquired = ACQUIRED.search(m.group(3))
            if acquired and masters is not None:
                masters.append((t, acquired.group(1)))
            restarted = RESTARTED.search(m.group(3))
            if restarted:
                started.append((t, restarted.group(1), restarted.group(2)))
    last_pid: dict[str, str] = {}
    found[REDUNDANT_START] = []
    for t, name, pid in sorted(started):
        if last_pid.get(name) == pid:
            found[REDUNDANT_START].append(t)
        last_pid[name] = pid
    order = [*list(LOG_SIGNS)[:3], REDUNDANT_START, *list(LOG_SIGNS)[3:]]
    if masters is not None:
        masters.sort()
    return {name: sorted(found[name]) for name in order}


def etcd_offsets(cluster: Cluster) -> dict[str, int]:
    out = {}
    for node in cluster.nodes:
        try:
            out[node.name] = (node.root / "log" / "etcd.log").stat().st_size
        except FileNotFoundError:
            out[node.name] = 0
    return out


def etcd_warnings(cluster: Cluster, offsets: dict[str, int]) -> Counter[str]:
    """etcd's warnings (it logs at warn level) since the offsets, by message: late heartbeats, slow applies."""
    out: Counter[str] = Counter()
    for node in cluster.nodes:
        try:
            with open(node.root / "log" / "etcd.log", "rb") as f:
                f.seek(offsets.get(node.name, 0))
                text = f.read().decode(errors="replace")
        except FileNotFoundError:
            continue
        for line in text.splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(entry, dict) and entry.get("level") in ("warn", "error") \
                    and entry.get("msg") not in ETCD_NOISE:
                out[f"{entry.get('level')}: {entry.get('msg')}"] += 1
    return out


def raft_term(n1: AgentNode, endpoints: list[str]) -> int | None:
    """The highest Raft term among the candidates' etcd members (it rises by one or more per election)."""
    try:
        result = etcdctl(n1, endpoints, "endpoint", "status", "-w", "json", timeout_s=20)
    except subprocess.TimeoutExpired:
        return None
    if result.returncode != 0 and not result.stdout.strip():
        return None
    try:
        return max(int(row["Status"]["raft_term"]) for row in json.loads(result.stdout))
    except (ValueError, KeyError, TypeError):
        return None


def niceness(cluster: Cluster) -> dict[str, set[str]]:
    """Niceness of the agents, their etcd/Serf children and the QEMUs (what priority.py arranged), and of
    their scheduler autogroups (one per session where the kernel has them: across groups only the group's
    nice counts, not the threads')."""
    out: dict[str, set[str]] = {}
    for node in cluster.alive():
        qemus = [int(p.read_text().strip()) for p in (node.root / "run" / "instances").glob("*/qemu.pid")
                 if p.read_text().strip().isdigit()]
        kinds = [("agents", [node.agent_pid()]), ("etcd+serf", node.child_pids()), ("QEMUs", qemus)]
        for kind, pids in kinds:
            for pid in pids:
                try:
                    nice = psutil.Process(pid).nice()
                except psutil.Error:
                    continue
                try:
                    group, _, group_nice = Path(f"/proc/{pid}/autogroup").read_text().split()
                    seen = f"{nice} (autogroup {group_nice}{'' if kind == 'QEMUs' else ' ' + group})"
                except (OSError, ValueError):
                    seen = str(nice)
                out.setdefault(kind, set()).add(seen)
    return out
