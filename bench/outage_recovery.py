"""Benchmark: a whole-cluster power loss under N running instances; time until every one runs again.

Forms a harness cluster of --nodes nodes on 127.0.4.x (tests/integration/conftest.py
via bench/benchcluster.py: node lease 12 s; the master lease and the reports are
the agent's own defaults, 2 s with etcd's heartbeat 50 ms and election 500 ms, reports every 5 s, unless
--timing harness keeps the harness's 5 s lease and 1 s reports) and adds --instances tiny `file` instances, round-robin over the nodes: the
test guest (kernel and busybox initramfs as hypervisor parameters) under TCG
with one 64 MiB qcow2 disk cloned from the image (Corral has no diskless
template; 64 MiB is the image's own size) and --memory 96M. Smaller boots
alone but not reliably: at 64M the kernel's decompressor resets the machine in
a loop, at 72M the initramfs runs out of memory, at 80M 5 of 60 guests hung in
a boot storm (kcompactd blocked); at 96M one in 60 may still hang in its early
timer check when the host is that overloaded.

Once every guest has booted (its console shows the boot marker) and the host's
1-minute load has had up to --settle s to come down from creating them, the
power goes: every agent is SIGKILLed (etcd and Serf follow), then every QEMU,
disk export and fence keeper (by pidfile), and the benchmark checks that all
are gone. Then every agent is started again at once, as the nodes' init
systems would, and from that moment (t=0) it reads n1's instance list once a
second (the cluster's until it shows quorum and a master) through n1's local
socket from this process (a `corral` command a second would take CPU from the
guests being measured), and reads each console log:

  agents      every agent answers on its socket again
  quorum      `cluster info` shows etcd quorum
  master      `cluster info` names a master
  first/last  the first / the last instance shows running in `instance list`
              with a new QEMU pid (right after the restart the list can still
              show the dead QEMUs as running, from the nodes' last reports
              before the power cut; that is printed as "stale")
  booted      every guest printed a new boot marker (the wait ends once all
              run and no marker came for 90 s: under this load a guest now
              and then hangs in early boot, in its timer check)

The CPU seconds the agents, etcd/Serf, the QEMUs and this benchmark's polling
used from t=0 to the end are printed against the CPU seconds there were (what
neither the guests nor Corral used was idle). Afterwards the CPU the agents,
etcd/Serf and QEMUs use with nothing booting is sampled for 20 s. The restart decisions are counted from the agents' logs (the
master logs each one), because `corral events` keeps only the newest 1000
events; the events' own counts are printed too. "start that found its QEMU
running" counts start orders whose QEMU pid was the one the instance's previous
start had launched: that start had worked, but was judged failed. A timeline shows starts ordered and instances
running against the host's 1-minute load, which the restart policy
(hostagent/master/decide/restarts.py) compares with max_load_per_cpu x CPUs: while the load
is past it, no node starts anything. All nodes share this machine, so each one
reports the whole host's load. The figure to beat is Ganeti's watcher (30
minutes in the seeds' outage); the aim is under one minute.

Master changes: every "acquired the master lease" line in the agents' logs after
t=0 but the first is a change of master during the recovery (the aim is none),
printed with what would show a starved control plane: etcd's Raft term before
the cut and at the end (each election raises it), each agent's worst event-loop
delay (its reports, polled every 10 s), etcd's own warnings (late heartbeats,
slow applies) and the niceness of agents, etcd/Serf and QEMUs.

The floor (unless --no-floor): Corral's recovery is compared with the same guests
started by a plain script on the same machine in the same run. Before the power cut
each QEMU's command line is read from /proc; after the recovery the power goes
again, and the same command lines (same binary, accel, machine, memory, kernel,
initrd and disk files; only the pidfile, sockets and console log moved to a fresh
directory) are started with no agent, etcd or Serf running: (a) all at once, (b)
paced per node as the restart policy paces them (at most max_starts_per_node boots
under way per node, a boot under way until its marker, at most boot_slot_max_s;
one at a time while the load is past the gate). Each floor waits for the host
load to come back to what it was at Corral's power cut (at most --settle s) and
times from its first launch until every console shows the boot marker (bounded
like Corral's: --deadline, or BOOT_STALL_S without a new marker). Corral's
"booted" time, from the agents' start, is printed as a ratio to each floor and
to the better one (aim: at most 1.2x).

Experiments (what-if runs for a proposed fix; Corral's code is not changed):
--policy KEY=VALUE,... gives the restarted agents other hostagent.master.decide.restarts.Policy
defaults (through a sitecustomize module in a temp dir on their PYTHONPATH);
--nice-qemu N renices every thread of every QEMU to N as soon as its pidfile
appears, as if QEMUs ran at a lower CPU priority than the control plane (where
the kernel has autogroups, a thread's nice counts only inside its session's
group, and every QEMU leads a session of its own: see hostagent/node/priority.py).
The restarted agents each lead a session of their own, as under systemd.

Usage: .venv/bin/python bench/outage_recovery.py [--instances 60] [--nodes 3] [--keep]
       [--timing production|harness] [--no-floor] [--policy max_load_per_cpu=1000] [--nice-qemu 10]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path


from benchcluster import AgentNode, Cluster, ChildLedger, api, ask, etcd_endpoints, guest_hv, is_gone, \
    pidfile_pids, power_off, running_cluster, wait_for, wait_gone

from outage_floor import BOOT_STALL_S, BOOTED, GONE_TIMEOUT_S, Failure, Floor, floor_guests, floor_report, fmt, \
    qemu_argvs, run_floor

from outage_signs import ETCD_NOISE, ETCD_SIGNS, cpu_by_kind, cpu_seconds, etcd_offsets, \
    etcd_warnings, idle_cpu, log_signs, niceness, raft_term

from hostagent.config import load_config
from hostagent.master.decide.restarts import Policy
from hostagent.node.loadgauge import LoadGauge

SUBNET = "127.0.4"
TMP_PREFIX = "outage-"  # the cluster's files: /tmp/outage-XXXX
MEMORY = "96M"
DISK = "64M,format=qcow2"
POLL_S = 1.0
BOOT_TIMEOUT_S = 600  # all N guests booted after they were added
TIMELINE_EVERY_S = 10.0
RENICE_EVERY_S = 0.1
IDLE_SAMPLE_S = 20.0
BOOT_PATTERN_TIMEOUT_S = 300  # --judge-boots: a boot slower than this under the storm counts as failed
HARNESS_LEASE_LINE = re.compile(r"^master_lease_ttl_s = .*\n", re.MULTILINE)
HARNESS_REPORT_LINE = re.compile(r"^report_interval_s = .*\n", re.MULTILINE)
LOOP_LAG_EVERY_S = 10.0  # `node list` (each node's worst event-loop delay over the last minute) this often
SITECUSTOMIZE = '''"""Written by bench/outage_recovery.py --policy: other restart Policy defaults, for a what-if run."""
import dataclasses, json, os
_overrides = json.loads(os.environ.get("CORRAL_BENCH_POLICY") or "{}")
if _overrides:
    import hostagent.master.duties.restarter as _restarter
    import hostagent.master.decide.restarts as _restarts
    _restarter.Policy = dataclasses.make_dataclass(
        "Policy", [(k, type(v), dataclasses.field(default=v)) for k, v in _overrides.items()],
        bases=(_restarts.Policy,), frozen=True)
'''


@dataclass
class Sample:
    t: float
    running: int
    booted: int
    load_1m: float
    load_10s: float  # what the agents' restart gate reads (hostagent.node.loadgauge), sampled by this bench


@dataclass
class Recovery:
    instances: int
    nodes: int
    load_at_cut: float
    agents: float | None = None
    quorum: float | None = None
    master: float | None = None
    master_name: str | None = None
    first: float | None = None
    last: float | None = None
    booted: float | None = None
    samples: list[Sample] = field(default_factory=list)
    stale_max: int = 0  # instances `instance list` showed running with their dead pre-outage QEMU's pid
    stale_until: float | None = None
    events: Counter[str] = field(default_factory=Counter)  # `corral events` since t=0, by kind
    events_truncated: bool = False
    signs: dict[str, list[float]] = field(default_factory=dict)  # LOG_SIGNS name -> t of each line
    statuses: Counter[str] = field(default_factory=Counter)
    idle_cpu: dict[str, float] = field(default_factory=dict)  # after the recovery: % of one CPU, by process kind
    recovery_cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds from t=0 to the end, by process kind
    own_cpu: float = 0.0  # CPU seconds this benchmark (and the commands it ran) used meanwhile, polling
    masters: list[tuple[float, str]] = field(default_factory=list)  # (t, node) of each "acquired the master lease"
    loop_lag_ms: dict[str, float] = field(default_factory=dict)  # node -> worst event-loop delay its reports gave
    etcd_warnings: Counter[str] = field(default_factory=Counter)  # etcd.log warnings since t=0, by message
    raft_terms: tuple[int | None, int | None] = (None, None)  # etcd's Raft term before the power cut, after it
    nice: dict[str, set[str]] = field(default_factory=dict)  # process kind -> niceness seen after the recovery
    timing: str = ""
    idle_load: float = 0.0

    def end(self) -> float:
        return self.samples[-1].t if self.samples else 0.0

    def master_changes(self) -> int:
        """Master lease acquisitions after the first one (the election that follows the power cut)."""
        return max(0, len(self.masters) - 1)


def console_boots(node: AgentNode, name: str) -> int:
    path = node.root / "log" / "console" / f"{name}.console.log"
    try:
        return len(BOOTED.findall(path.read_text(errors="replace")))
    except FileNotFoundError:
        return 0


def boot_counts(cluster: Cluster, placement: dict[str, str]) -> dict[str, int]:
    return {name: console_boots(cluster[node], name) for name, node in placement.items()}


def add_instances(cluster: Cluster, count: int, memory: str, judge_boots: bool) -> dict[str, str]:
    """`count` instances round-robin over the nodes; returns instance -> node.

    With judge_boots each has the boot marker as its boot pattern, so the restart pacing counts a boot as
    under way until the marker shows (without one, for the policy's boot_window_s after the start).
    """
    n1 = cluster["n1"]
    placement = {f"o{i:03d}": cluster.nodes[i % len(cluster.nodes)].name for i in range(count)}
    t0 = time.monotonic()
    for i, (name, node) in enumerate(placement.items()):
        result = n1.corral("instance", "add", name, "--os", "busybox-guest", "--node", node, "--memory", memory,
                           "--disk", DISK, "--hv", guest_hv(),
                           *(("--boot-pattern", BOOTED.pattern, "--boot-timeout", str(BOOT_PATTERN_TIMEOUT_S))
                             if judge_boots else ()), timeout=300)
        if result.returncode != 0:
            raise Failure(f"instance add {name} on {node} failed (rc {result.returncode}): {result.stderr.strip()}")
        if (i + 1) % 10 == 0 or i + 1 == count:
            print(f"  added {i + 1}/{count} in {time.monotonic() - t0:.0f} s, load {os.getloadavg()[0]:.1f}",
                  flush=True)
    return placement


def wait_all_up(cluster: Cluster, placement: dict[str, str]) -> None:
    n1 = cluster["n1"]

    def up() -> bool:
        rows = ask(n1, "instance", "list") or []
        running = {r["name"] for r in rows if r["status"] == "running"}
        return running >= set(placement) and all(boot_counts(cluster, placement).values())
    wait_for(up, BOOT_TIMEOUT_S, f"all {len(placement)} instances to run and print their boot marker",
             interval_s=2.0)


def settle(limit: float, settle_s: float) -> float:
    """Give the host's 1-minute load up to `settle_s` to come under `limit`; returns the load then."""
    deadline = time.monotonic() + settle_s
    for _ in range(int(settle_s) + 1):
        if os.getloadavg()[0] <= limit or time.monotonic() >= deadline:
            break
        time.sleep(1.0)
    return os.getloadavg()[0]


# ---- the outage --------------------------------------------------------------------

def qemu_pids(n1: AgentNode, names: set[str]) -> dict[str, int | None]:
    rows = ask(n1, "instance", "list")
    if rows is None:
        raise Failure("`corral instance list` on n1 failed before the power cut")
    return {r["name"]: r.get("pid") for r in rows if r["name"] in names}


def outage(cluster: Cluster, ledger: ChildLedger) -> int:
    """Every agent, then every QEMU/export/fence keeper, SIGKILLed; waits until all are gone; returns how many."""
    ledger.note(cluster)
    pids = [pid for node in cluster.alive() for pid in (node.agent_pid(), *node.child_pids())]
    for node in cluster.nodes:
        if node.proc is not None and node.proc.poll() is None:
            node.kill9()
    qemus = [pid for node in cluster.nodes for pid in power_off(node)]
    wait_gone(pids + qemus, GONE_TIMEOUT_S, "every agent, etcd, Serf, QEMU and fence keeper after the power cut")
    survivors = [pid for node in cluster.nodes for pid in pidfile_pids(node) if not is_gone(pid)]
    if survivors:
        raise Failure(f"processes still listed in pidfiles after the power cut: {survivors}")
    return len(pids) + len(qemus)


@contextmanager
def agent_env(policy: dict[str, float | int], scratch: Path) -> Iterator[None]:
    """While agents start: the --policy experiment's sitecustomize on their PYTHONPATH (none without it)."""
    if not policy:
        yield
        return
    (scratch / "sitecustomize.py").write_text(SITECUSTOMIZE)
    before = {k: os.environ.get(k) for k in ("PYTHONPATH", "CORRAL_BENCH_POLICY")}
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(scratch), before["PYTHONPATH"]) if p)
    os.environ["CORRAL_BENCH_POLICY"] = json.dumps(policy)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class Renicer(threading.Thread):
    """The --nice-qemu experiment: every thread of every QEMU of the cluster reniced as soon as it is seen."""

    def __init__(self, cluster: Cluster, nice: int) -> None:
        super().__init__(daemon=True)
        self.cluster, self.nice = cluster, nice
        self.done: set[tuple[int, int]] = set()  # (pid, tid)
        self.stop_now = threading.Event()

    def run(self) -> None:
        while not self.stop_now.wait(RENICE_EVERY_S):
            for node in self.cluster.nodes:
                for pidfile in (node.root / "run" / "instances").glob("*/qemu.pid"):
                    self._renice(node, pidfile)

    def _renice(self, node: AgentNode, pidfile: Path) -> None:
        try:
            pid = int(pidfile.read_text().strip())
            if str(node.root).encode() not in Path(f"/proc/{pid}/cmdline").read_bytes():
                return
            tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        except (OSError, ValueError):
            return
        for tid in tids:
            if (pid, tid) not in self.done:
                try:
                    os.setpriority(os.PRIO_PROCESS, tid, self.nice)
                except OSError:
                    continue
                self.done.add((pid, tid))


# ---- the recovery ------------------------------------------------------------------

def start_agents(cluster: Cluster, policy: dict[str, float | int], scratch: Path) -> None:
    """Every agent at once, each in a session of its own as its node's systemd would start it (so that each has
    its own scheduler autogroup, not the benchmark's)."""
    with agent_env(policy, scratch), ThreadPoolExecutor(len(cluster.nodes)) as pool:
        for future in [pool.submit(node.start, False, True) for node in cluster.nodes]:
            future.result()  # AssertionError if an agent did not answer within 30 s


def recover(cluster: Cluster, ledger: ChildLedger, placement: dict[str, str], deadline_s: float,
            load_at_cut: float, old_pids: dict[str, int | None], policy: dict[str, float | int],
            scratch: Path) -> Recovery:
    n1 = cluster["n1"]
    before = boot_counts(cluster, placement)
    offsets = {node.name: (node.root / "agent.log").stat().st_size for node in cluster.nodes}
    etcd_at = etcd_offsets(cluster)
    rec = Recovery(len(placement), len(cluster.nodes), load_at_cut)
    next_lag = 0.0
    wall0, t0, own0 = time.time(), time.monotonic(), own_cpu()
    start_agents(cluster, policy, scratch)
    rec.agents = time.monotonic() - t0
    ledger.note(cluster)
    deadline = t0 + deadline_s
    gauge = LoadGauge()
    for _ in range(int(deadline_s / POLL_S) + 1):
        gauge.sample()
        began = time.monotonic()
        if began > deadline:
            break
        if rec.master is None:
            info = api(n1, "/v1/cluster", timeout_s=max(1.0, deadline - time.monotonic())) or {}
            now = time.monotonic() - t0
            if rec.quorum is None and (info.get("quorum") or {}).get("ok"):
                rec.quorum = now
            if info.get("master"):
                rec.master, rec.master_name = now, info["master"]
        rows = api(n1, "/v1/instances", timeout_s=max(1.0, deadline - time.monotonic()))
        now = time.monotonic() - t0
        shown = [r for r in rows or [] if r["name"] in placement and r["status"] == "running"]
        running = sum(1 for r in shown if r.get("pid") not in (None, old_pids.get(r["name"])))
        if len(shown) > running:
            rec.stale_max, rec.stale_until = max(rec.stale_max, len(shown) - running), now
        if rows is not None:
            rec.statuses = Counter(r["status"] for r in rows if r["name"] in placement)
        booted = sum(1 for name, n in boot_counts(cluster, placement).items() if n > before[name])
        gauge.sample()
        rec.samples.append(Sample(now, running, booted, os.getloadavg()[0], gauge.value() or 0.0))
        if rec.first is None and running:
            rec.first = now
        if rec.last is None and running == len(placement):
            rec.last = now
        if rec.booted is None and booted == len(placement):
            rec.booted = now
        if now >= next_lag:
            next_lag = now + LOOP_LAG_EVERY_S
            for row in api(n1, "/v1/nodes", timeout_s=10) or []:
                lag = row.get("loop_lag_ms")
                if isinstance(lag, (int, float)):
                    rec.loop_lag_ms[row["name"]] = max(rec.loop_lag_ms.get(row["name"], 0.0), float(lag))
        ledger.note(cluster)
        if rec.last is not None and (rec.booted is not None or booting_stalled(rec.samples)):
            break
        time.sleep(max(0.0, POLL_S - (time.monotonic() - began)))
    rec.recovery_cpu = cpu_by_kind({}, cpu_seconds(cluster))  # every process there was born after t=0
    rec.own_cpu = own_cpu() - own0
    events = ask(n1, "events", "--limit", "0") or []
    recent = [e for e in events if e["time"] >= wall0]
    rec.events = Counter(e["kind"] for e in recent)
    rec.events_truncated = len(recent) == len(events) and len(events) >= 1000
    rec.signs = log_signs(cluster, offsets, wall0, rec.masters)
    rec.etcd_warnings = etcd_warnings(cluster, etcd_at)
    return rec


def own_cpu() -> float:
    """CPU seconds this process and its ended children (CLI calls) have used."""
    return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                 resource.getrusage(resource.RUSAGE_CHILDREN)))


def booting_stalled(samples: list[Sample]) -> bool:
    """No guest printed its boot marker for BOOT_STALL_S while all ran: the rest hang (see their consoles)."""
    if not samples or samples[-1].t - samples[0].t < BOOT_STALL_S:
        return False
    recent = [s.booted for s in samples if s.t >= samples[-1].t - BOOT_STALL_S]
    return recent[0] == recent[-1]


# ---- the floor: the same guests, a plain script, no cluster manager ----------------

def floors(cluster: Cluster, ledger: ChildLedger, placement: dict[str, str], argvs: dict[str, list[str]],
           deadline_s: float, load_limit: float, settle_s: float, cpus: int) -> list[Floor]:
    """Both floors, each after the host's load had up to `settle_s` to come under `load_limit` (what it was
    when Corral's power went, or the restart gate if lower), each in fresh run/log directories."""
    policy = Policy()
    out: list[Floor] = []
    paced = f"paced: {policy.max_starts_per_node} per node, 1 past 10 s load {policy.max_load_per_cpu * cpus:g}"
    # paced first: the all-at-once run leaves a load that takes minutes to come down
    runs: list[tuple[str, int | None, float | None]] = [
        (paced, policy.max_starts_per_node, policy.max_load_per_cpu * cpus), ("all at once", None, None)]
    for label, per_node, gate in runs:
        load = settle(load_limit, settle_s)
        root = cluster.nodes[0].root.parent / f"floor-{len(out) + 1}"
        guests = floor_guests(cluster, placement, argvs, root)
        print(f"floor ({label}): starting {len(guests)} QEMUs, load_1m {load:.1f}", flush=True)
        floor = run_floor(label, guests, ledger, deadline_s, per_node, gate)
        print(f"  {floor.booted_count}/{floor.instances} booted, the last of them at "
              f"{'-' if floor.last_marker is None else f'{floor.last_marker:.1f} s'}"
              + (f"; {floor.panicked} kernel panics" if floor.panicked else ""), flush=True)
        out.append(floor)
    return out


# ---- the report --------------------------------------------------------------------


def report(rec: Recovery, cpus: int, policy: Policy, memory: str, experiment: str) -> None:
    gate = policy.max_load_per_cpu * cpus
    print(f"\n== whole-cluster power loss: {rec.instances} instances ({memory}, TCG) on {rec.nodes} nodes sharing "
          f"{cpus} CPUs; host load_1m {rec.load_at_cut:.1f} at the power cut ==")
    print(f"agents' timing: {rec.timing}")
    print(f"restart policy: {policy.max_starts_per_node} starts or boots under way per node (a boot without a "
          f"pattern: {policy.boot_window_s:g} s), one at a time past a 10 s load of {gate:g} "
          f"({policy.max_load_per_cpu:g} per CPU); {experiment}")
    print(f"agents answering          {fmt(rec.agents)}")
    print(f"quorum                    {fmt(rec.quorum)}")
    print(f"master ({rec.master_name or '-'})               {fmt(rec.master)}")
    print(f"first instance running    {fmt(rec.first)}")
    print(f"last instance running     {fmt(rec.last)}   (Ganeti's watcher: 30 min; aim: < 60 s)")
    print(f"every guest booted again  {fmt(rec.booted)}"
          + (f"  ({rec.samples[-1].booted} did; the rest printed nothing for {BOOT_STALL_S:.0f} s: hung in "
             "early boot, see their console logs)" if rec.booted is None and rec.samples else ""))
    if rec.stale_max:
        print(f"stale: `instance list` showed up to {rec.stale_max} dead QEMUs (pre-outage pids) as running, "
              f"last at t={rec.stale_until:.1f} s")
    if rec.last is None and rec.statuses:
        print(f"statuses at the deadline: {dict(rec.statuses)}")
    print("from the agents' logs since t=0:")
    for name, times in rec.signs.items():
        span = f"  (t={times[0]:.0f}..{times[-1]:.0f} s)" if times else ""
        print(f"    {name:34s} {len(times):5d}{span}")
    print(f"`corral events` since t=0: {dict(sorted(rec.events.items())) or 'none'}"
          + ("  TRUNCATED: older events were pruned (1000 kept)" if rec.events_truncated else ""))
    timeline(rec, gate)
    analysis(rec, gate)
    if rec.recovery_cpu:
        print(f"CPU used from t=0 to {rec.end():.0f} s ({rec.end() * cpus:.0f} CPU seconds there were): "
              + ", ".join(f"{k} {v:.1f} s" for k, v in sorted(rec.recovery_cpu.items()))
              + f", this benchmark's polling {rec.own_cpu:.1f} s")
    if rec.idle_cpu:
        print(f"afterwards, nothing booting, over {IDLE_SAMPLE_S:.0f} s: "
              + ", ".join(f"{k} {v:.0f}%" for k, v in sorted(rec.idle_cpu.items()))
              + f" of one CPU; host load_1m {rec.idle_load:.1f}")
    control_plane(rec)


def control_plane(rec: Recovery) -> None:
    """Was the control plane starved while the guests booted: master changes, loop lag, etcd's complaints."""
    print(f"master changes during the recovery (t=0..{rec.end():.0f} s): {rec.master_changes()}  (lease "
          "acquisitions: " + (", ".join(f"{node} at {t:.1f} s" for t, node in rec.masters) or "none") + ")")
    before, after = rec.raft_terms
    if before is not None and after is not None:
        print(f"etcd Raft term {before} before the power cut, {after} at the end: {after - before} election "
              "round(s) (the first after the restart is expected)")
    if rec.loop_lag_ms:
        print("agents' worst event-loop delay (reports, every ~10 s, each over the last minute): "
              + ", ".join(f"{n} {ms:.0f} ms" for n, ms in sorted(rec.loop_lag_ms.items())))
    total = sum(rec.etcd_warnings.values())
    print(f"etcd warnings since t=0 (not counting {' / '.join(ETCD_NOISE)}): {total}" + ("" if not total else ":"))
    for msg, count in rec.etcd_warnings.most_common(ETCD_SIGNS):
        print(f"    {count:5d}  {msg}")
    if rec.nice:
        print("niceness: " + ", ".join(f"{k} {sorted(v)}" for k, v in sorted(rec.nice.items())))


def timeline(rec: Recovery, gate: float) -> None:
    print(f"timeline (t from the agents' start; load = host load_1m / over 10 s, * past the gate {gate:g}):")
    starts = rec.signs.get("start ordered", [])
    next_at = 0.0
    for s in rec.samples:
        if s.t < next_at and s is not rec.samples[-1]:
            continue
        next_at = s.t + TIMELINE_EVERY_S
        ordered = sum(1 for t in starts if t <= s.t)
        print(f"  t={s.t:6.1f}  starts ordered {ordered:3d}  running {s.running:3d}/{rec.instances}  "
              f"booted {s.booted:3d}  load {s.load_1m:5.1f} / {s.load_10s:5.1f}{' *' if s.load_10s > gate else ''}")


def analysis(rec: Recovery, gate: float) -> None:
    """Where the time went: seconds with instances down and no start ordered, split by the load gate."""
    starts = rec.signs.get("start ordered", [])
    end = rec.last if rec.last is not None else (rec.samples[-1].t if rec.samples else 0.0)
    gated = other = 0.0
    for prev, cur in zip(rec.samples, rec.samples[1:]):
        if cur.t > end:
            break
        if any(prev.t < t <= cur.t for t in starts):
            continue
        if prev.load_10s > gate:
            gated += cur.t - prev.t
        else:
            other += cur.t - prev.t
    print(f"until the last instance ran ({end:.0f} s): {gated:.0f} s with no start ordered while the load was "
          f"past the gate, {other:.0f} s with no start ordered under it")


# ---- main --------------------------------------------------------------------------

def parse_policy(text: str) -> dict[str, float | int]:
    """--policy KEY=VALUE,...: Policy fields, each checked against hostagent.master.decide.restarts.Policy."""
    known = {f.name: f.type for f in dataclasses.fields(Policy)}
    out: dict[str, float | int] = {}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        if key not in known:
            raise argparse.ArgumentTypeError(f"{key!r} is not a restart Policy field; one of: {', '.join(known)}")
        try:
            out[key] = int(value) if known[key] == "int" else float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{key}={value!r}: not a number") from None
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=60)
    parser.add_argument("--nodes", type=int, default=3, choices=(1, 2, 3, 4, 5))
    parser.add_argument("--memory", default=MEMORY, help=f"guest memory (default {MEMORY})")
    parser.add_argument("--deadline", type=float, default=900.0,
                        help="seconds after the agents' restart to wait for every instance (default 900)")
    parser.add_argument("--settle", type=float, default=120.0,
                        help="seconds the host load may take to come under Corral's restart gate before the "
                             "power cut (default 120)")
    parser.add_argument("--policy", type=parse_policy, default={},
                        help="experiment: restart Policy defaults for the restarted agents, e.g. "
                             "max_load_per_cpu=1000,max_starts_per_node=8")
    parser.add_argument("--nice-qemu", type=int, default=None, metavar="N",
                        help="experiment: renice every QEMU thread to N after the restart")
    parser.add_argument("--no-judge-boots", dest="judge_boots", action="store_false",
                        help="add the instances without a boot pattern (the pacing then counts a boot as under "
                             "way for the policy's boot_window_s after its start)")
    parser.add_argument("--timing", choices=("production", "harness"), default="production",
                        help="the agents' master lease: production (the agent's default, 2 s, etcd heartbeat 50 ms / "
                             "election 500 ms; default) or harness (the test harness's 5 s)")
    parser.add_argument("--no-floor", dest="floor", action="store_false",
                        help="skip the floor (the same guests started by a plain script after Corral's recovery)")
    parser.add_argument("--keep", action="store_true", help="keep the cluster's files (agent logs) afterwards")
    args = parser.parse_args()
    if args.instances < 1:
        parser.error("--instances must be at least 1")
    candidates = 3 if args.nodes >= 3 else 1
    policy, cpus = dataclasses.replace(Policy(), **args.policy), os.cpu_count() or 1
    experiment = ", ".join(filter(None, [f"EXPERIMENT --policy {args.policy}" if args.policy else "",
                                         f"EXPERIMENT --nice-qemu {args.nice_qemu}"
                                         if args.nice_qemu is not None else ""])) or "Corral's defaults"
    rec: Recovery | None = None
    floor_runs: list[Floor] = []
    failure: str | None = None
    renicer: Renicer | None = None
    try:
        with tempfile.TemporaryDirectory(prefix=f"{TMP_PREFIX}site-") as scratch, \
                running_cluster(args.nodes, candidates, keep=args.keep, subnet=SUBNET, prefix=TMP_PREFIX,
                                before_form=production_timing if args.timing == "production" else None) \
                as (cluster, ledger):
            timing = agent_timing(cluster["n1"])
            print(f"agents' timing: {timing}", flush=True)
            t0 = time.monotonic()
            placement = add_instances(cluster, args.instances, args.memory, args.judge_boots)
            ledger.note(cluster)
            wait_all_up(cluster, placement)
            ledger.note(cluster)
            print(f"{args.instances} instances added, running and booted in {time.monotonic() - t0:.0f} s",
                  flush=True)
            settle_limit = Policy().max_load_per_cpu * cpus
            load = settle(settle_limit, args.settle)
            old_pids = qemu_pids(cluster["n1"], set(placement))
            argvs = qemu_argvs(cluster, placement) if args.floor else {}
            endpoints = etcd_endpoints(cluster)
            term_before = raft_term(cluster["n1"], endpoints)
            killed = outage(cluster, ledger)
            print(f"power cut: {killed} processes SIGKILLed and gone (load_1m {load:.1f}); starting every agent",
                  flush=True)
            if args.nice_qemu is not None:
                renicer = Renicer(cluster, args.nice_qemu)
                renicer.start()
            rec = recover(cluster, ledger, placement, args.deadline, load, old_pids, args.policy, Path(scratch))
            rec.timing = timing
            rec.raft_terms = (term_before, raft_term(cluster["n1"], endpoints))
            rec.nice = niceness(cluster)
            if rec.last is not None:
                rec.idle_cpu = idle_cpu(cluster, IDLE_SAMPLE_S)
                rec.idle_load = os.getloadavg()[0]
            if args.floor:
                if renicer is not None:
                    renicer.stop_now.set()
                gone = outage(cluster, ledger)
                print(f"Corral's recovery measured; power cut again ({gone} processes gone) for the floor",
                      flush=True)
                floor_runs = floors(cluster, ledger, placement, argvs, args.deadline, min(load, settle_limit),
                                    args.settle, cpus)
            if rec.last is None:
                print(n1_diagnostics(cluster["n1"]))
                raise Failure(f"only {rec.samples[-1].running if rec.samples else 0} of {args.instances} "
                              f"instances running {args.deadline:.0f} s after the restart; see the timeline, and "
                              "the agent logs kept")
    except (Failure, AssertionError, subprocess.TimeoutExpired) as exc:
        failure = f"{type(exc).__name__}: {exc}"
    except KeyboardInterrupt as exc:
        failure = f"interrupted ({exc or 'Ctrl-C'}); every process started was stopped"
    finally:
        if renicer is not None:
            renicer.stop_now.set()
            print(f"--nice-qemu {args.nice_qemu}: reniced {len(renicer.done)} threads of "
                  f"{len({pid for pid, _ in renicer.done})} QEMUs")
    if rec is not None:
        report(rec, cpus, policy, args.memory, experiment)
    floor_report(rec.booted if rec is not None else None, rec.master_changes() if rec is not None else None, floor_runs)
    if failure:
        print(f"\nFAILED: {failure}")
        return 1
    return 0


def production_timing(cluster: Cluster) -> None:
    """Drop the harness's short master lease and its 1 s reports from every node's config, so the agent's
    defaults apply (as bench/master_failover.py does for the lease): reports every 5 s, a boot's end
    reported at once (hostagent/node/reportloop.py)."""
    for node in cluster.nodes:
        text = node.config.read_text()
        for line in (HARNESS_LEASE_LINE, HARNESS_REPORT_LINE):
            text, found = line.subn("", text)
            if not found:
                raise Failure(f"{node.config} has no {line.pattern!r} line to drop: has the harness changed?")
        node.config.write_text(text)


def agent_timing(node: AgentNode) -> str:
    cfg = load_config(str(node.config))
    return (f"master lease TTL {cfg.master_lease_ttl_s} s, etcd heartbeat {cfg.etcd_heartbeat_ms} ms, "
            f"election timeout {cfg.etcd_election_timeout_ms} ms, reports every {cfg.report_interval_s:g} s, "
            f"node lease {cfg.node_lease_ttl_s} s")


def n1_diagnostics(n1: AgentNode) -> str:
    out = []
    for what in (("node", "list"), ("events", "--limit", "20")):
        result = n1.corral(*what, timeout=60)
        out.append(f"--- corral {' '.join(what)} ---\n{result.stdout}{result.stderr}")
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
