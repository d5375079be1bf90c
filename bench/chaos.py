"""Chaos: randomized faults on a real 3-node cluster, with the cluster's promises checked after each.

Forms a 3-node harness cluster (bench/benchcluster.py: node lease TTL 12 s,
master lease 5 s), every node in a network namespace of its own on a bridge
(tests/integration/netns_support.py; `--no-netns`: on 127.x.y.1-3 instead,
without partitions), each node's file storage directory on a small ext4 file
system of its own (a loop-mounted image of `FS_MIB`). Auto-failover on; two
`mirror` instances whose guests (corral.seq=1) write an increasing number to
their disk every 100 ms and print it once synced (`CORRAL-GUEST-SEQ n=N`),
and at boot print the last number found on the disk
(`CORRAL-GUEST-SEQ-START last=L`).

Each fault, drawn with `--seed`, on a random node (or instance's primary):

  kill-agent     SIGKILL the agent (its etcd and Serf follow); restarted 0-5 s later
  kill-etcd      SIGKILL its etcd member (the agent restarts it)
  kill-serf      SIGKILL its Serf agent (the agent restarts it)
  kill-qemu      SIGKILL an instance's QEMU on its primary
  freeze-agent   SIGSTOP the agent alone for 1-10 s, then SIGCONT
  freeze-etcd    SIGSTOP its etcd member for 1-10 s
  freeze-serf    SIGSTOP its Serf agent for 1-10 s
  freeze-qemu    SIGSTOP an instance's QEMU for 1-10 s
  master-job     submit a live migration (slowed to 8-16 MiB/s) or a reboot, SIGKILL the master's
                 agent while the job runs, restart it 1-5 s later
  disk-full      fill the node's file storage file system to the last byte for 3-15 s
  partition      set the node's bridge port down for 2-20 s (beyond the 12 s lease: it must fence itself)

Then the cluster has `RECOVER_S` to recover: every agent answering, every
node online with its lease held and etcd healthy, quorum and a master, no job
queued or running, every instance marked up running with its copy in sync.
The recovery time runs from the end of the fault (thaw, heal, restart).
Checked, while the fault lasts and the cluster recovers, and once more after:

  double-qemu    a QEMU of one instance on two nodes (or twice on one), from the process
                 table (not while a migration job runs: source and target exist by design)
  agents-double  the same, as the agents themselves answer (/v1/drill/qemus, asked of
                 each node through its own socket), after recovery
  lost-write     a boot found on its disk a number below one the guest had printed before
                 (on any node): an acknowledged write lost
  not-recovered  the cluster did not recover within RECOVER_S (what was missing is printed)
  gave-up        the master gave up restarting an instance (its bounded attempts used up): the
                 runner then starts it as an operator would and gives the cluster RECOVER_S again
  copy-record-stuck  a mirror reports its copy in sync for STUCK_AFTER_S but the master's record
                 says out of date: the runner then soft-reboots the instance (a new copy), RECOVER_S again
  repair-needed  `cluster verify --repair` acted on something
  verify         `cluster verify` still lists findings after the repair (and 20 s more)

Printed: one line per fault, then totals. Every wait is bounded; everything
started is stopped by PID (SIGTERM, SIGHUP and Ctrl-C too): frozen processes
are thawed, cut links healed, fillers removed, file systems unmounted. The
cluster's files (agent.log and guest consoles per node) are kept for
analysis; their path is printed. Usage:
.venv/bin/python bench/chaos.py [--faults 200] [--seed N] [--no-netns] [--subnet 127.0.8] [--kinds a,b]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from benchcluster import AgentNode, Cluster, guest_hv, percentile, running_cluster
from netns_support import Switch, network  # benchcluster puts the tests on the path

from cli.client import AgentClient, AgentUnreachable, ApiError

SUBNET = "127.0.8"
INSTANCES = {"m1": "n1:n2", "m2": "n3:n1"}  # name: primary:secondary at creation
FS_MIB = 256
RECOVER_S = 180.0
FIRST_READY_S = 300.0
POLL_S = 0.5
VERIFY_SETTLE_S = 20.0
REPORT_FRESH_S = 5.0  # reports every 1 s here
FREEZE_S = (1.0, 10.0)
PARTITION_S = (2.0, 20.0)
DISK_FULL_S = (3.0, 15.0)
MAX_UNRECOVERED_IN_A_ROW = 3
GAVE_UP = "the master gave up restarting"
STUCK = "copy recorded out of date while in sync:"
STUCK_AFTER_S = 45.0  # the master records a copy in sync within seconds of its mirror saying so
KINDS = ("kill-agent", "kill-etcd", "kill-serf", "kill-qemu", "freeze-agent", "freeze-etcd", "freeze-serf",
         "freeze-qemu", "master-job", "disk-full", "partition")
SEQ = re.compile(rb"CORRAL-GUEST-SEQ(?:-START last=(\d+)| n=(\d+))|(CORRAL-GUEST-POWEROFF)")
CMD_TIMEOUT_S = 30


@dataclass
class Fault:
    index: int
    kind: str
    where: str = ""
    detail: str = ""
    recovered_s: float | None = None
    violations: list[str] = field(default_factory=list)
    back: Callable[[], bool] | None = None  # the killed process replaced (etcd, Serf, QEMU), where it says


def local(node: AgentNode, timeout_s: float = 10) -> AgentClient:
    """The node's own agent through its unix socket (reachable whether or not the node is cut off)."""
    return AgentClient(node.socket, timeout_s=timeout_s)


def get(node: AgentNode, path: str) -> Any:
    """GET `path` of the node's agent, or None if it did not answer (an outage is an answer to wait through)."""
    try:
        return local(node).get(path)["data"]
    except (ApiError, AgentUnreachable, OSError, ValueError):
        return None


# ---- the checks that run all the time ---------------------------------------------

class Sequence:
    """The guest's sequence of one instance across the consoles of every node; `poll` returns lost writes.

    A boot (START last=L) must find at least every number printed before it, on any node. Each poll reads
    what each console gained since the last one; numbers printed on another node before that node's own
    next boot in the same poll count as printed before (only a double run could print after).

    Numbers printed after the guest's power button (CORRAL-GUEST-POWEROFF, a soft reboot or stop) until
    its next boot do not count: the test guest's power-off script unmounts /mnt while the writer goes on,
    so those numbers are synced into the initramfs's /mnt, never to the disk (packaging/guest/power-button)."""

    def __init__(self, cluster: Cluster, name: str) -> None:
        self.name = name
        self.paths = {n.name: n.root / "log" / "console" / f"{name}.console.log" for n in cluster.nodes}
        self.offsets = dict.fromkeys(self.paths, 0)
        self.powering_off = dict.fromkeys(self.paths, False)
        self.after_poweroff = 0  # numbers printed after the power button, not counted
        self.acked = 0
        self.boots = 0

    def _gained(self, node: str) -> bytes:
        path = self.paths[node]
        try:
            with open(path, "rb") as f:
                f.seek(self.offsets[node])
                data = f.read()
        except FileNotFoundError:
            return b""
        end = data.rfind(b"\n") + 1  # whole lines only: the rest is read next time
        self.offsets[node] += end
        return data[:end]

    def poll(self) -> list[str]:
        events: dict[str, list[tuple[int | None, int]]] = {}
        for node in self.paths:  # (START's last, None) or (None, a number counted), in console order
            events[node] = []
            for start, n, poweroff in SEQ.findall(self._gained(node)):
                if poweroff:
                    self.powering_off[node] = True
                elif start:
                    self.powering_off[node] = False
                    events[node].append((int(start), 0))
                elif self.powering_off[node]:
                    self.after_poweroff += 1
                else:
                    events[node].append((None, int(n)))
        before = self.acked
        for seen in events.values():
            for start, n in seen:
                if start is not None:
                    break
                before = max(before, n)
        lost = []
        for node, seen in events.items():
            acked = before
            for start, n in seen:
                if start is None:
                    acked = max(acked, n)
                    continue
                self.boots += 1
                if start < acked:
                    lost.append(f"lost-write: {self.name} booted on {node} from a copy at {start}, "
                                f"{acked} had been printed")
                acked = max(acked, start)
            self.acked = max(self.acked, acked)
        return lost


def qemus_in_process_table(cluster: Cluster, names: list[str]) -> dict[str, list[str]]:
    """instance: the nodes (once per process) whose QEMU of it exists now, from the process table.

    A QEMU starting with -daemonize is two processes for a moment (the parent waits for its grandchild to
    be ready), so two on one node count once; two on one node for longer cannot happen anyway (the second
    cannot lock the pidfile)."""
    pidfiles = {f"{node.root}/run/instances/{name}/qemu.pid": (name, node.name)
                for node in cluster.nodes for name in names}
    seen: dict[int, tuple[str, str, int, str]] = {}  # pid: (instance, node, ppid, status)
    for proc in psutil.process_iter(["cmdline", "status", "ppid"]):
        argv = proc.info["cmdline"] or []
        if not argv or not argv[0].endswith("qemu-system-x86_64") or proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        for arg in argv:
            if arg in pidfiles:
                seen[proc.pid] = (*pidfiles[arg], proc.info["ppid"], proc.info["status"])
                break
    found: dict[str, dict[str, str]] = {name: {} for name in names}
    for pid, (name, node, _, status) in sorted(seen.items()):
        found[name][node] = f"{node}(pid {pid}{', stopped' if status == psutil.STATUS_STOPPED else ''})"
    return {name: list(nodes.values()) for name, nodes in found.items()}


class Watch:
    """What runs all along: the sequences and the process table, polled by `pause` instead of sleeping."""

    def __init__(self, cluster: Cluster, names: list[str]) -> None:
        self.cluster = cluster
        self.sequences = [Sequence(cluster, name) for name in names]
        self.names = names
        self.migrating = False  # a migration job runs: its source and target QEMUs both exist
        self.found: list[str] = []

    def poll(self) -> None:
        for seq in self.sequences:
            self.found += [v for v in seq.poll() if v not in self.found]
        if self.migrating:
            return
        for name, where in qemus_in_process_table(self.cluster, self.names).items():
            if len(where) > 1:
                v = f"double-qemu: {name} on {', '.join(where)}"
                if v not in self.found:
                    self.found.append(v)

    def pause(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while True:
            self.poll()
            left = end - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(POLL_S, left))

    def take(self) -> list[str]:
        found, self.found = self.found, []
        return found


# ---- recovery and the checks after it ---------------------------------------------

def observer(cluster: Cluster) -> AgentNode | None:
    for node in cluster.nodes:
        if get(node, "/v1/cluster") is not None:
            return node
    return None


def not_recovered(cluster: Cluster, since: float) -> list[str]:
    """What keeps the cluster from being recovered, as the first node that sees something missing sees it
    (every node is asked: a node just back may answer from a replica not yet caught up); empty once recovered.
    Every node must have reported since `since` (wall clock: the end of the fault), so that no view predates it."""
    missing = [f"agent {n.name} not running" for n in cluster.nodes if n.proc is None or n.proc.poll() is not None]
    if missing:
        return missing
    for node in cluster.nodes:
        missing = missing_as_seen_by(node, since)
        if missing:
            return [f"(as {node.name} sees it) {missing[0]}", *missing[1:]]
    return []


def missing_as_seen_by(asked: AgentNode, since: float) -> list[str]:
    missing = []
    info = get(asked, "/v1/cluster")
    if info is None:
        return [f"agent {asked.name} does not answer"]
    if not (info.get("quorum") or {}).get("ok"):
        missing.append("no quorum")
    if not info.get("master"):
        missing.append("no master")
    for row in get(asked, "/v1/nodes") or []:
        if row["status"] != "online" or row["lease"] != "held" or row["etcd"] not in ("healthy", "-") \
                or row["report_age_s"] is None or row["report_age_s"] > min(REPORT_FRESH_S, time.time() - since):
            missing.append(f"node {row['name']} {row['status']}, lease {row['lease']}, etcd {row['etcd']}, "
                           f"report age {row['report_age_s']} s")
    for job in get(asked, "/v1/jobs") or []:
        if job["status"] in ("queued", "running"):
            missing.append(f"job {job['id']} ({job['summary']}) {job['status']}")
    for inst in get(asked, "/v1/instances") or []:
        if inst["admin_state"] != "up":
            continue
        rep = inst.get("replication") or {}
        if inst["status"] == "failed":
            missing.append(f"{GAVE_UP} {inst['name']} on {inst['primary_node']}: {inst.get('reason')}")
        elif inst["status"] != "running":
            missing.append(f"{inst['name']} {inst['status']} on {inst['primary_node']} ({inst.get('reason')})")
        elif rep and rep.get("summary") == "in sync" and not rep.get("in_sync"):
            missing.append(f"{STUCK} {inst['name']} copy on {rep.get('secondary')}: the mirror reports it in sync, "
                           f"the master's record says {rep.get('record')} (generation {rep.get('generation')}, "
                           f"mirror {[d.get('gen') for d in rep.get('disks') or []]})")
        elif rep and not (rep.get("in_sync") and rep.get("summary") == "in sync"):
            missing.append(f"{inst['name']} copy on {rep.get('secondary')}: {rep.get('summary')}")
    return missing


def wait_recovered(cluster: Cluster, watch: Watch, timeout_s: float,
                   back: Callable[[], bool] | None = None) -> tuple[float | None, list[str]]:
    """Seconds until recovered (None: not within timeout_s) and what was missing at the end."""
    t0, since = time.monotonic(), time.time()
    missing: list[str] = []
    stuck_since: float | None = None
    while time.monotonic() - t0 < timeout_s:
        missing = not_recovered(cluster, since)
        if back is not None and not back():
            missing.insert(0, "the killed process has not been replaced")
        if not missing:
            return time.monotonic() - t0, []
        if any(GAVE_UP in m for m in missing):
            return None, missing  # the master stopped trying: only an operator's start brings it back
        if any(STUCK in m for m in missing):
            stuck_since = stuck_since or time.monotonic()
            if time.monotonic() - stuck_since > STUCK_AFTER_S:
                return None, missing
        else:
            stuck_since = None
        watch.pause(1.0)
    return None, missing


def agents_double(cluster: Cluster) -> list[str]:
    """Each node's agent asked directly (through its own socket) which QEMUs it runs."""
    said: dict[str, list[str]] = {}
    for node in cluster.nodes:
        qemus = get(node, f"/v1/drill/qemus?node={node.name}")
        for name in (qemus or {}).get("qemus") or []:
            said.setdefault(name, []).append(node.name)
    return [f"agents-double: {name} on {', '.join(nodes)} (the agents say)" for name, nodes in said.items()
            if len(nodes) > 1]


def verify(cluster: Cluster, watch: Watch) -> list[str]:
    """`cluster verify --repair`: what it repaired, then findings left (given VERIFY_SETTLE_S to clear)."""
    asked = observer(cluster)
    if asked is None:
        return ["verify: no agent answers"]
    out = []
    try:
        steps = local(asked, timeout_s=60).post("/v1/cluster/repair")["data"]
    except (ApiError, AgentUnreachable, OSError) as exc:
        return [f"verify: repair failed: {exc}"]
    out += [f"repair-needed: {s['outcome']}: {s['message']} ({s['action'] or 'no action'}: {s['detail']})"
            for s in steps]
    end = time.monotonic() + VERIFY_SETTLE_S
    findings: list[dict[str, Any]] = []
    while True:
        findings = get(asked, "/v1/cluster/verify")
        if findings == [] or time.monotonic() > end:
            break
        watch.pause(1.0)
    if findings is None:
        return out + ["verify: no answer"]
    return out + [f"verify: {f['severity']}: {f['message']}" for f in findings]


# ---- the faults -------------------------------------------------------------------

def signal_pid(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def child(node: AgentNode, name: str) -> int | None:
    """The agent's etcd or serf child."""
    try:
        return next((c.pid for c in psutil.Process(node.agent_pid()).children() if c.name() == name), None)
    except (psutil.Error, OSError, ValueError):
        return None


def qemu_of(node: AgentNode, name: str) -> int | None:
    """The instance's QEMU on the node by its pidfile, checked against its command line (pids recycle)."""
    pidfile = node.root / "run" / "instances" / name / "qemu.pid"
    try:
        pid = int(pidfile.read_text().strip())
        if str(pidfile).encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
            return pid
    except (OSError, ValueError):
        pass
    return None


def restart(node: AgentNode) -> None:
    """Start a killed agent again (its socket answering within 30 s, or AssertionError)."""
    node.proc = None
    node.start()


def kill_agent(node: AgentNode, watch: Watch, rng: random.Random) -> str:
    down_s = rng.uniform(0, 5)
    node.kill9()
    try:
        watch.pause(down_s)
    finally:
        restart(node)
    return f"down {down_s:.1f} s"


def freeze(pid: int, watch: Watch, seconds: float) -> None:
    signal_pid(pid, signal.SIGSTOP)
    try:
        watch.pause(seconds)
    finally:
        signal_pid(pid, signal.SIGCONT)


class Chaos:
    def __init__(self, cluster: Cluster, switch: Switch | None, mounts: dict[str, Path], watch: Watch,
                 rng: random.Random) -> None:
        self.cluster, self.switch, self.mounts, self.watch, self.rng = cluster, switch, mounts, watch, rng

    def instances(self) -> list[dict[str, Any]]:
        asked = observer(self.cluster)
        return (get(asked, "/v1/instances") or []) if asked else []

    def runs_again(self, name: str, killed: int) -> bool:
        return any(i["name"] == name and i["status"] == "running" and i["pid"] not in (None, killed)
                   for i in self.instances())

    def apply(self, fault: Fault) -> None:
        """Apply the fault; it has ended (thawed, healed, restarted) when this returns."""
        rng, watch = self.rng, self.watch
        node = rng.choice(self.cluster.nodes)
        kind = fault.kind
        fault.where = node.name
        if kind == "kill-agent":
            fault.detail = kill_agent(node, watch, rng)
        elif kind in ("kill-etcd", "kill-serf", "freeze-etcd", "freeze-serf"):
            what = kind.split("-")[1]
            pid = child(node, what)
            if pid is None:
                fault.detail = f"no {what} running: nothing done"
            elif kind.startswith("kill"):
                signal_pid(pid, signal.SIGKILL)
                fault.detail = f"pid {pid}"
                fault.back = lambda: child(node, what) not in (None, pid)
            else:
                seconds = rng.uniform(*FREEZE_S)
                freeze(pid, watch, seconds)
                fault.detail = f"pid {pid} for {seconds:.1f} s"
        elif kind == "freeze-agent":
            seconds = rng.uniform(*FREEZE_S)
            freeze(node.agent_pid(), watch, seconds)
            fault.detail = f"for {seconds:.1f} s"
        elif kind in ("kill-qemu", "freeze-qemu"):
            inst = rng.choice([i for i in self.instances() if i["status"] == "running"] or [{}])
            if not inst:
                fault.detail = "no instance running: nothing done"
                return
            node = self.cluster[inst["primary_node"]]
            pid = qemu_of(node, inst["name"])
            fault.where = f"{inst['name']}@{node.name}"
            if pid is None:
                fault.detail = "no QEMU found: nothing done"
            elif kind == "kill-qemu":
                signal_pid(pid, signal.SIGKILL)
                fault.detail = f"pid {pid}"
                fault.back = lambda: self.runs_again(inst["name"], pid)
            else:
                seconds = rng.uniform(*FREEZE_S)
                freeze(pid, watch, seconds)
                fault.detail = f"pid {pid} for {seconds:.1f} s"
        elif kind == "master-job":
            self.master_job(fault)
        elif kind == "disk-full":
            self.disk_full(node, fault)
        elif kind == "partition":
            assert self.switch is not None
            seconds = rng.uniform(*PARTITION_S)
            self.switch.cut(node.name)
            try:
                watch.pause(seconds)
            finally:
                self.switch.heal(node.name)
            fault.detail = f"cut for {seconds:.1f} s"
        else:
            raise ValueError(f"unknown fault kind {kind!r}")

    def master_job(self, fault: Fault) -> None:
        """Submit a migration or reboot, kill the master's agent while it runs, start it again."""
        rng, watch = self.rng, self.watch
        asked = observer(self.cluster)
        info = (get(asked, "/v1/cluster") if asked else None) or {}
        running = [i for i in self.instances() if i["status"] == "running"]
        if not info.get("master") or not running:
            fault.detail = "no master or no instance running: nothing done"
            return
        master = self.cluster[info["master"]]
        inst = rng.choice(running)
        op = rng.choice(["migrate", "reboot"])
        body: dict[str, Any] = {"type": rng.choice(["soft", "hard"])} if op == "reboot" else \
            {"node": None, "max_bandwidth_mib_s": float(rng.choice([8, 16]))}
        fault.where = master.name
        submit_via = next(n for n in self.cluster.nodes if n is not master)
        self.watch.migrating = op == "migrate"
        try:
            job_id = local(submit_via, timeout_s=60).post(f"/v1/instances/{inst['name']}/{op}", body)["data"]["job_id"]
        except (ApiError, AgentUnreachable, OSError) as exc:
            self.watch.migrating = False
            fault.detail = f"{op} {inst['name']} refused: {exc}"
            return
        what = f"{op}{'(' + body['type'] + ')' if op == 'reboot' else ''} {inst['name']} (job {job_id})"
        deadline = time.monotonic() + 30
        status = ""
        while time.monotonic() < deadline:
            status = (get(submit_via, f"/v1/jobs/{job_id}") or {}).get("status", "")
            if status != "queued" and status != "":
                break
            watch.pause(0.2)
        if status == "running":  # a migration at 8-16 MiB/s lasts 10-20 s, a reboot a few seconds at most
            watch.pause(rng.uniform(0, 3) if op == "migrate" else rng.uniform(0, 0.5))
            status = (get(submit_via, f"/v1/jobs/{job_id}") or {}).get("status", "")
        fault.detail = f"{what}, {status or 'unknown'} when the master was killed"
        fault.detail += f"; {kill_agent(master, watch, rng)}"

    def job_ended(self) -> None:
        self.watch.migrating = False

    def disk_full(self, node: AgentNode, fault: Fault) -> None:
        mount = self.mounts[node.name]
        filler = mount / "chaos-filler"
        seconds = self.rng.uniform(*DISK_FULL_S)
        written = 0
        try:
            with open(filler, "wb", buffering=0) as f:  # unbuffered: nothing left to fail at close
                free = os.statvfs(mount).f_bavail * os.statvfs(mount).f_frsize
                with contextlib.suppress(OSError):
                    os.posix_fallocate(f.fileno(), 0, max(free - 2**20, 2**20))
                written = os.fstat(f.fileno()).st_size
                f.seek(written)
                chunk = b"\0" * 65536
                try:
                    for _ in range(FS_MIB * 16 + 100):  # bounded: never more than the file system holds
                        written += f.write(chunk) or 0
                except OSError:
                    pass  # ENOSPC: full
            left = os.statvfs(mount).f_bavail * os.statvfs(mount).f_frsize
            self.watch.pause(seconds)
        finally:
            with contextlib.suppress(FileNotFoundError):
                filler.unlink()
        fault.detail = f"{written >> 20} MiB written, {left >> 10} KiB left, for {seconds:.1f} s"


# ---- the file systems -------------------------------------------------------------

def run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=CMD_TIMEOUT_S)


@contextlib.contextmanager
def storage_mounts(stack: contextlib.ExitStack) -> Iterator[tuple[dict[str, Path], Callable[[Cluster], None]]]:
    """A `before_form` hook that gives each node's file storage directory an ext4 file system of FS_MIB on
    a loop device; the file systems are unmounted when the block ends (after the cluster has stopped)."""
    mounts: dict[str, Path] = {}

    def mount_all(cluster: Cluster) -> None:
        for node in cluster.nodes:
            image = node.root.parent / f"{node.name}-storage.img"
            with open(image, "wb") as f:
                f.truncate(FS_MIB * 2**20)
            run("mkfs.ext4", "-q", "-m", "0", str(image))
            target = node.root / "state" / "file-storage"
            target.mkdir(parents=True, exist_ok=True)
            run("mount", "-o", "loop", str(image), str(target))  # `-o loop` detaches the device at umount
            mounts[node.name] = target
            stack.callback(unmount, target, image)

    yield mounts, mount_all


def unmount(target: Path, image: Path) -> None:
    result = subprocess.run(["umount", str(target)], check=False, capture_output=True, text=True, timeout=CMD_TIMEOUT_S)
    if result.returncode != 0:
        print(f"CLEANUP: umount {target}: {result.stderr.strip()}; detaching it lazily", flush=True)
        subprocess.run(["umount", "-l", str(target)], check=False, capture_output=True, timeout=CMD_TIMEOUT_S)
    with contextlib.suppress(OSError):
        image.unlink()


# ---- the run ----------------------------------------------------------------------

def setup(cluster: Cluster) -> None:
    n1 = cluster["n1"]
    n1.ok("cluster", "modify", "--auto-failover", "yes")
    for name, nodes in INSTANCES.items():
        n1.ok("instance", "add", name, "--os", "busybox-guest", "--disk-template", "mirror", "--node", nodes,
              "--disk", "64M", "--memory", "128M", "--hv", guest_hv("quiet corral.seq=1,shutdown_timeout_s=10"))


def error_lines(cluster: Cluster, offsets: dict[str, int]) -> dict[str, list[str]]:
    """ERROR lines and tracebacks each agent logged since `offsets`."""
    found = {}
    for node in cluster.nodes:
        with open(node.root / "agent.log", "rb") as f:
            f.seek(offsets[node.name])
            lines = f.read().decode(errors="replace").splitlines()
        bad = [ln for ln in lines if " ERROR " in ln or "Traceback" in ln or "please report" in ln]
        if bad:
            found[node.name] = bad
    return found


def operator_start(cluster: Cluster, watch: Watch, fault: Fault) -> list[str]:
    """What an operator does when the master gave up restarting an instance: `corral instance start`; then
    the cluster gets RECOVER_S again. Returns what is still missing after that."""
    asked = observer(cluster)
    if asked is None:
        return ["no agent answers"]
    failed = [i["name"] for i in get(asked, "/v1/instances") or [] if i["status"] == "failed"]
    for name in failed:
        try:
            local(asked, timeout_s=60).post(f"/v1/instances/{name}/start", {})
        except (ApiError, AgentUnreachable, OSError) as exc:
            fault.violations.append(f"not-recovered: operator start of {name} refused: {exc}")
    took, missing = wait_recovered(cluster, watch, RECOVER_S)
    fault.detail += f"; operator started {', '.join(failed)}: " + \
        (f"recovered {took:.1f} s later" if took is not None else "not recovered")
    return missing


def operator_reboot(cluster: Cluster, watch: Watch, fault: Fault, names: list[str]) -> list[str]:
    """An operator's way out of a copy the master keeps recording out of date: `corral instance reboot`
    (soft: power-down and start, which starts a new copy); then RECOVER_S again."""
    asked = observer(cluster)
    if asked is None:
        return ["no agent answers"]
    for name in names:
        try:
            local(asked, timeout_s=60).post(f"/v1/instances/{name}/reboot", {"type": "soft"})
        except (ApiError, AgentUnreachable, OSError) as exc:
            fault.violations.append(f"not-recovered: operator reboot of {name} refused: {exc}")
    took, missing = wait_recovered(cluster, watch, RECOVER_S)
    fault.detail += f"; operator rebooted {', '.join(names)}: " + \
        (f"recovered {took:.1f} s later" if took is not None else "not recovered")
    return missing


def revive(cluster: Cluster, fault: Fault) -> None:
    """After a fault that went wrong half-way: every agent that is not running started again."""
    for node in cluster.nodes:
        if node.proc is None or node.proc.poll() is not None:
            try:
                restart(node)
            except AssertionError as exc:
                fault.violations.append(f"fault-error: agent {node.name} does not start again: {exc}")


def chaos(cluster: Cluster, switch: Switch | None, mounts: dict[str, Path], args: argparse.Namespace,
          rng: random.Random, faults: list[Fault]) -> None:
    setup(cluster)
    watch = Watch(cluster, list(INSTANCES))
    t0 = time.monotonic()
    took, missing = wait_recovered(cluster, watch, FIRST_READY_S)
    if took is None:
        raise AssertionError(f"the instances did not come up in sync: {'; '.join(missing)}")
    print(f"instances {', '.join(INSTANCES)} running, copies in sync, after {time.monotonic() - t0:.0f} s",
          flush=True)
    watch.take()
    offsets = {n.name: (n.root / "agent.log").stat().st_size for n in cluster.nodes}
    kinds = [k for k in args.kinds.split(",")] if args.kinds else \
        [k for k in KINDS if switch is not None or k != "partition"]
    runner = Chaos(cluster, switch, mounts, watch, rng)
    unrecovered = 0
    for i in range(1, args.faults + 1):
        fault = Fault(i, rng.choice(kinds))
        began = time.monotonic()
        try:
            runner.apply(fault)
        except (AssertionError, OSError, subprocess.SubprocessError) as exc:
            fault.violations.append(f"fault-error: {exc}")
            revive(cluster, fault)
        fault.recovered_s, missing = wait_recovered(cluster, watch, RECOVER_S, fault.back)
        if any(GAVE_UP in m for m in missing):
            fault.violations += [f"gave-up: {m.split(GAVE_UP, 1)[1].strip()}" for m in missing if GAVE_UP in m]
            missing = operator_start(cluster, watch, fault)
        if any(STUCK in m for m in missing):
            fault.violations += [f"copy-record-stuck: {m.split(STUCK, 1)[1].strip()}" for m in missing if STUCK in m]
            missing = operator_reboot(cluster, watch, fault, [m.split(STUCK, 1)[1].split()[0] for m in missing
                                                              if STUCK in m])
        runner.job_ended()
        watch.poll()  # the process table once more, now that no migration runs
        fault.violations += watch.take()
        if missing:
            fault.violations.append(f"not-recovered: {'; '.join(missing)}")
        fault.violations += agents_double(cluster) + verify(cluster, watch) + watch.take()
        faults.append(fault)
        rec = f"{fault.recovered_s:5.1f} s" if fault.recovered_s is not None else " NEVER "
        print(f"{time.strftime('%H:%M:%S')} fault {i:3d} {fault.kind:<12} {fault.where:<7} recovered in {rec}  "
              f"({time.monotonic() - began:4.0f} s)  {fault.detail}", flush=True)
        for v in fault.violations:
            print(f"    VIOLATION {v}", flush=True)
        unrecovered = unrecovered + 1 if fault.recovered_s is None else 0
        if unrecovered >= MAX_UNRECOVERED_IN_A_ROW:
            print(f"the cluster did not recover from {unrecovered} faults in a row: stopping", flush=True)
            break
    for node, lines in error_lines(cluster, offsets).items():
        print(f"agent log {node}: {len(lines)} ERROR/traceback lines; first 5:")
        for ln in lines[:5]:
            print(f"    {ln[:300]}")
    print("guest boots seen: " + ", ".join(f"{s.name} {s.boots}" for s in watch.sequences)
          + "; last numbers printed: " + ", ".join(f"{s.name} {s.acked}" for s in watch.sequences))


def print_totals(faults: list[Fault]) -> None:
    if not faults:
        return
    kinds = Counter(f.kind for f in faults)
    violations = Counter(v.split(":")[0] for f in faults for v in f.violations)
    times = [f.recovered_s for f in faults if f.recovered_s is not None]
    print(f"\n{len(faults)} faults: " + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())))
    print(f"violations: {sum(violations.values())}" + (" (" + ", ".join(f"{k} {n}" for k, n in
                                                                       sorted(violations.items())) + ")"
                                                       if violations else "")
          + f" in {sum(1 for f in faults if f.violations)} faults")
    if times:
        print(f"recovery: median {statistics.median(times):.1f} s, p90 {percentile(times, 90):.1f} s, "
              f"max {max(times):.1f} s ({len(times)} recovered, {len(faults) - len(times)} not by themselves: "
              f"not within {RECOVER_S:.0f} s, or stuck until an operator's start or reboot)")
    by_kind = {k: [f.recovered_s for f in faults if f.kind == k and f.recovered_s is not None] for k in kinds}
    print("recovery by kind (median/max s): " + ", ".join(
        f"{k} {statistics.median(v):.1f}/{max(v):.1f}" for k, v in sorted(by_kind.items()) if v))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--faults", type=int, default=200)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--no-netns", action="store_true", help="nodes on --subnet, no partitions")
    parser.add_argument("--subnet", default=SUBNET, help="127.x.y of the nodes with --no-netns")
    parser.add_argument("--kinds", default="", help=f"comma-separated subset of {','.join(KINDS)}")
    args = parser.parse_args()
    unknown = set(filter(None, args.kinds.split(","))) - set(KINDS)
    if unknown:
        parser.error(f"unknown fault kinds: {', '.join(sorted(unknown))}")
    seed = args.seed if args.seed is not None else int(time.time())
    rng = random.Random(seed)
    print(f"seed {seed}", flush=True)
    faults: list[Fault] = []
    try:
        with contextlib.ExitStack() as stack:
            switch = None if args.no_netns else stack.enter_context(network())
            mounts, mount_all = stack.enter_context(storage_mounts(stack))
            cluster, _ = stack.enter_context(running_cluster(3, 3, keep=True, subnet=args.subnet, prefix="chaos-",
                                                             switch=switch, before_form=mount_all))
            chaos(cluster, switch, mounts, args, rng, faults)
    finally:
        print_totals(faults)
    return 1 if any(f.violations for f in faults) else 0


if __name__ == "__main__":
    sys.exit(main())
