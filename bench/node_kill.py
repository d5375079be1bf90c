"""Benchmark: power a node off under mirror instances with auto-failover; time until they run elsewhere.

Forms a 3-node harness cluster on 127.0.3.1-3 (tests/integration/conftest.py
via bench/benchcluster.py: node lease TTL 12 s, reports every 1 s, master
lease 5 s), sets `cluster modify --auto-failover yes` and adds --instances
`mirror` instances (the test guest under TCG, 128 MiB, one 64 MiB disk), all
with the same primary and secondary, neither of them the master (n1), so the
master that decides the failover survives every kill.

Each run waits until every instance's disks are in sync and its primary's
report lists it as guarded (`node info --json` -> fencing.guarded), then cuts
the primary's power as tests/integration/test_node_failure.py does: SIGKILL of
its agent (etcd and Serf follow), then of its QEMUs, disk exports and fence
keeper, found by pidfile. Times count from that SIGKILL, polled with the CLI on
n1, which never hosts them (each stamped when the command returns, so they are
upper bounds with the resolution of one poll, printed as "poll"):

  lease      `node list` first shows the killed node's lease as expired. etcd
             expires it up to one TTL (12 s) after the node's last renewal,
             so this is at most the TTL and usually a little less.
  node-lost  the master's own "node-lost" event (its clock; no poll delay).
  fail-over  the master's first "fail-over" event for the node (its decision).
  running    `instance list` first shows the instance running on another node.
             Dominated by the lease TTL: a node that stops answering is only
             called lost once its lease is gone, which is what makes the
             failover safe; "- TTL", "after lease" (node list) and "after
             node-lost" (the master's event) subtract it.
  booted     the guest printed its boot marker on the new primary (console log).

Then the killed node's agent is started again, and the run ends when every
instance is in sync again with the returned node as its secondary (the next
run kills the new primary). Usage:
.venv/bin/python bench/node_kill.py [--runs 10] [--instances 2] [--keep]
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from benchcluster import AgentNode, Cluster, ChildLedger, ask, guest_hv, is_gone, power_off, running_cluster, \
    summary, wait_for, wait_gone, wait_until

SUBNET = "127.0.3"
TMP_PREFIX = "nodekill-"  # the cluster's files: /tmp/nodekill-XXXX
WATCH_DEADLINE_S = 120  # from the kill: lease TTL (12 s) + failover, with room for a loaded machine
SYNC_TIMEOUT_S = 180
GUARD_TIMEOUT_S = 60
BOOT_DEADLINE_S = 120  # from the kill; a guest not booted by then is reported, not waited for
POLL_S = 0.1
BOOTED = re.compile(r"CORRAL-GUEST-BOOTED count=(\d+)")


class Failure(Exception):
    """Corral did not do what the benchmark waits for; the message says what, with log excerpts."""


@dataclass
class Run:
    index: int
    killed: str
    observer: str
    lease: float | None = None
    node_lost: float | None = None
    decided: float | None = None  # the master's first fail-over event for the node
    running: dict[str, float] = field(default_factory=dict)  # instance -> s from the kill
    moved_to: dict[str, str] = field(default_factory=dict)
    booted: dict[str, float] = field(default_factory=dict)
    polls: list[float] = field(default_factory=list)
    failed_polls: int = 0
    rejoin: float | None = None
    failovers: Counter[str] = field(default_factory=Counter)  # instance -> fail-over events (more than 1: retried)


def console(node: AgentNode, name: str) -> str:
    path = node.root / "log" / "console" / f"{name}.console.log"
    return path.read_text(errors="replace") if path.exists() else ""


def boots(node: AgentNode, name: str) -> int:
    """How many boot markers the instance's console log on `node` holds."""
    return len(BOOTED.findall(console(node, name)))


def placement(observer: AgentNode, names: list[str]) -> dict[str, tuple[str, str | None, str]]:
    rows = ask(observer, "instance", "list") or []
    return {r["name"]: (r["primary_node"], r["secondary_node"], r["status"]) for r in rows if r["name"] in names}


def in_sync(observer: AgentNode, name: str, secondary: str | None = None) -> bool:
    info = ask(observer, "instance", "info", name)
    if not info or not info.get("replication"):
        return False
    rep = info["replication"]
    return rep["summary"] == "in sync" and bool(rep["in_sync"]) and info["status"] == "running" and \
        (secondary is None or info["secondary_node"] == secondary)


def guarded(observer: AgentNode, node: str, name: str) -> bool:
    fencing = (ask(observer, "node", "info", node) or {}).get("fencing") or {}
    return bool(fencing.get("armed")) and name in fencing.get("guarded", [])


def wait_ready(observer: AgentNode, names: list[str]) -> str:
    """Every instance in sync and guarded by one common primary, which is not the master; returns it."""
    for name in names:
        wait_for(lambda name=name: in_sync(observer, name), SYNC_TIMEOUT_S, f"the disks of {name} to be in sync",
                 interval_s=0.5)
    where = placement(observer, names)
    primaries = {p for p, _, _ in where.values()}
    if len(primaries) != 1:
        raise Failure(f"the instances no longer share a primary: {where}; a failover must have been refused "
                      f"(see `corral events`)")
    primary = primaries.pop()
    master = (ask(observer, "cluster", "info") or {}).get("master")
    if master == primary:
        raise Failure(f"the master moved to {primary}, the instances' primary: killing it would measure a master "
                      "failover too")
    for name in names:
        wait_for(lambda name=name: guarded(observer, primary, name), GUARD_TIMEOUT_S,
                 f"node {primary} to report that it guards {name}", interval_s=0.5)
    return primary


def master_events(observer: AgentNode, node: str, since_wall: float) -> list[dict]:
    """The master's events about `node` since `since_wall`, each with "t" (s from then, the master's clock)."""
    events = ask(observer, "events", "--node", node, "--limit", "0") or []
    return sorted(({**e, "t": e["time"] - since_wall} for e in events if e["time"] >= since_wall),
                  key=lambda e: e["t"])


def first(events: list[dict], kind: str) -> float | None:
    return next((e["t"] for e in events if e["kind"] == kind), None)


class LeaseWatch(threading.Thread):
    """Polls `node list` on the observer, in parallel with the instance polls, until the node's lease shows
    expired; stamps that in s from t0."""

    def __init__(self, observer: AgentNode, node: str, t0: float, deadline: float) -> None:
        super().__init__(daemon=True)
        self.observer, self.node, self.t0, self.deadline = observer, node, t0, deadline
        self.expired: float | None = None
        self.stop_now = threading.Event()

    def run(self) -> None:
        for _ in range(int(WATCH_DEADLINE_S / POLL_S) + 1):
            if self.stop_now.is_set() or time.monotonic() > self.deadline:
                return
            rows = ask(self.observer, "node", "list", timeout_s=max(1.0, self.deadline - time.monotonic()))
            if rows and any(r["name"] == self.node and r["lease"] == "expired" for r in rows):
                self.expired = time.monotonic() - self.t0
                return
            time.sleep(POLL_S)


def measure(cluster: Cluster, ledger: ChildLedger, names: list[str], index: int) -> Run:
    observer = cluster["n1"]
    victim = cluster[wait_ready(observer, names)]
    run = Run(index, victim.name, observer.name)
    ledger.note(cluster)
    boots_before = {n.name: {name: boots(n, name) for name in names} for n in cluster.nodes}
    children = victim.child_pids()

    wall0, t0 = time.time(), time.monotonic()
    killed = power_off(victim)
    deadline = t0 + WATCH_DEADLINE_S
    watch = LeaseWatch(observer, victim.name, t0, deadline)
    watch.start()
    for _ in range(int(WATCH_DEADLINE_S / POLL_S) + 1):
        if time.monotonic() > deadline or len(run.running) == len(names):
            break
        started = time.monotonic()
        rows = ask(observer, "instance", "list", timeout_s=max(1.0, deadline - started))
        now = time.monotonic() - t0
        run.polls.append(time.monotonic() - started)
        if rows is None:
            run.failed_polls += 1
            continue
        for r in rows:
            if r["name"] in names and r["name"] not in run.running and r["status"] == "running" \
                    and r["primary_node"] != victim.name:
                run.running[r["name"]], run.moved_to[r["name"]] = now, r["primary_node"]
        time.sleep(POLL_S)
    watch.join(max(0.0, deadline - time.monotonic()) + 5)
    watch.stop_now.set()
    run.lease = watch.expired
    events = master_events(observer, victim.name, wall0)
    run.node_lost, run.decided = first(events, "node-lost"), first(events, "fail-over")
    run.failovers = Counter(e["instance"] for e in events if e["kind"] == "fail-over")
    wait_gone([*killed, *children], 10, f"the processes of the powered-off node {victim.name}")
    if len(run.running) < len(names):
        missing = sorted(set(names) - set(run.running))
        events = observer.corral("events", "--node", victim.name, timeout=30).stdout
        raise Failure(f"run {index + 1}: {', '.join(missing)} not running elsewhere within {WATCH_DEADLINE_S} s "
                      f"of powering off {victim.name}\n--- events ---\n{events}\n"
                      f"--- {observer.name}/agent.log (tail) ---\n{observer.log_tail(40)}")
    for name, node in run.moved_to.items():
        target = cluster[node]
        if wait_until(lambda name=name, target=target, node=node: boots(target, name) > boots_before[node][name],
                      max(0.0, t0 + BOOT_DEADLINE_S - time.monotonic()), interval_s=0.05):
            run.booted[name] = time.monotonic() - t0
    return run


def bring_back(cluster: Cluster, ledger: ChildLedger, run: Run, names: list[str]) -> None:
    """Restart the killed node's agent; wait until every instance is in sync with it as the secondary."""
    node, observer = cluster[run.killed], cluster[run.observer]
    t0 = time.monotonic()
    try:
        node.start()
        ledger.note(cluster)
        node.wait_fresh_report(60)
        for name in names:
            wait_for(lambda name=name: in_sync(observer, name, secondary=node.name), SYNC_TIMEOUT_S,
                     f"{name} to be in sync again with {node.name} as its secondary", interval_s=0.5)
    except (AssertionError, subprocess.TimeoutExpired) as exc:
        raise Failure(f"node {node.name} did not come back as the secondary after its restart: {exc}\n"
                      f"--- {node.name}/agent.log (tail) ---\n{node.log_tail(40)}") from None
    run.rejoin = time.monotonic() - t0
    stale = [name for name in names if _qemu_alive(node, name)]
    if stale:
        raise Failure(f"{', '.join(stale)} also run(s) on the returned node {node.name}: a double run")
    ledger.note(cluster)


def _qemu_alive(node: AgentNode, name: str) -> bool:
    try:
        pid = int((node.root / "run" / "instances" / name / "qemu.pid").read_text().strip())
    except (OSError, ValueError):
        return False
    return not is_gone(pid)


def describe(run: Run, ttl: float) -> str:
    def f(v: float | None) -> str:
        return "   -  " if v is None else f"{v:6.2f}"
    last = max(run.running.values()) if run.running else None
    after_lease = None if last is None or run.lease is None else last - run.lease
    line = (f"run {run.index + 1:2d}: killed {run.killed}  lease {f(run.lease)}  node-lost {f(run.node_lost)}  "
            f"fail-over {f(run.decided)}  running {f(last)} (- TTL {f(None if last is None else last - ttl)}, "
            f"after lease {f(after_lease)})  "
            f"booted {f(max(run.booted.values()) if run.booted else None)}  "
            f"| poll {statistics.median(run.polls) if run.polls else 0:.2f}  rejoin+resync {f(run.rejoin)}")
    line += "\n         " + ", ".join(f"{name} -> {run.moved_to[name]} at {t:.2f}"
                                      for name, t in sorted(run.running.items()))
    if run.failed_polls:
        line += f"\n         {run.failed_polls} CLI poll(s) on {run.observer} failed during the gap"
    missing = sorted(set(run.moved_to) - set(run.booted))
    if missing:
        line += (f"\n         NOT BOOTED within {BOOT_DEADLINE_S} s of the kill: {', '.join(missing)} "
                 "(see the console logs)")
    again = {name: n for name, n in run.failovers.items() if n > 1}
    if again:
        line += ("\n         FAILED OVER MORE THAN ONCE: " + ", ".join(f"{k} x{n}" for k, n in sorted(again.items()))
                 + " (`corral events --node " + run.killed + "` says why)")
    return line


def report(runs: list[Run], ttl: float) -> None:
    print(f"\n== node power-off under auto-failover mirror instances, {len(runs)} runs "
          f"(s from SIGKILL; CLI on n1) ==")
    last = [max(r.running.values()) for r in runs if r.running]
    per_instance = [t for r in runs for t in r.running.values()]
    after_lease = [max(r.running.values()) - r.lease for r in runs if r.running and r.lease is not None]
    rows = [("lease expired (node list)", [r.lease for r in runs if r.lease is not None]),
            ("node-lost event (master)", [r.node_lost for r in runs if r.node_lost is not None]),
            ("fail-over event (master)", [r.decided for r in runs if r.decided is not None]),
            ("running elsewhere, each", per_instance),
            ("running elsewhere, all", last),
            (f"  minus the TTL ({ttl:.0f} s)", [v - ttl for v in last]),
            ("  after lease expired", after_lease),
            ("  after node-lost event", [max(r.running.values()) - r.node_lost for r in runs
                                         if r.running and r.node_lost is not None]),
            ("guest booted there, all", [max(r.booted.values()) for r in runs
                                         if r.booted and len(r.booted) == len(r.moved_to)]),
            ("rejoin + resync", [r.rejoin for r in runs if r.rejoin is not None])]
    for label, values in rows:
        print(f"{label:28s} {summary(values)}")
    again = sum(1 for r in runs for n in r.failovers.values() if n > 1)
    unbooted = sum(len(set(r.moved_to) - set(r.booted)) for r in runs)
    print(f"instances failed over more than once: {again} of {sum(len(r.moved_to) for r in runs)}; "
          f"guests not booted within {BOOT_DEADLINE_S} s: {unbooted}")
    print(f"The failover figure is dominated by the node lease TTL ({ttl:.0f} s here, 20 s by default): the master "
          "calls a node lost only once etcd has expired its lease, which is what guarantees the node's own agent "
          "or fence keeper has stopped the instance first. What Corral adds is the 'after lease expired' figure.")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--instances", type=int, default=2, choices=(1, 2, 3, 4),
                        help="mirror instances on the node that is killed (default 2)")
    parser.add_argument("--keep", action="store_true", help="keep the cluster's files (agent logs) afterwards")
    args = parser.parse_args()
    runs: list[Run] = []
    failure: str | None = None
    ttl = 0.0
    names = [f"m{i + 1}" for i in range(args.instances)]
    try:
        with running_cluster(3, 3, keep=args.keep, subnet=SUBNET, prefix=TMP_PREFIX) as (cluster, ledger):
            n1 = cluster["n1"]
            if cluster.master(n1) != "n1":
                raise Failure(f"the master is {cluster.master(n1)}, not n1: the instances' nodes would include it")
            ttl = float(n1.json("node", "info", "n1")["fencing"]["lease_ttl_s"])
            n1.ok("cluster", "modify", "--auto-failover", "yes")
            t0 = time.monotonic()
            for name in names:
                n1.ok("instance", "add", name, "--os", "busybox-guest", "--disk-template", "mirror",
                      "--node", "n2:n3", "--disk", "64M", "--memory", "128M", "--hv", guest_hv())
            ledger.note(cluster)
            print(f"{len(names)} mirror instance(s) added on n2:n3 in {time.monotonic() - t0:.1f} s; "
                  f"node lease TTL {ttl:.0f} s", flush=True)
            for i in range(args.runs):
                try:
                    run = measure(cluster, ledger, names, i)
                    runs.append(run)
                    bring_back(cluster, ledger, run, names)
                except (AssertionError, subprocess.TimeoutExpired) as exc:
                    raise Failure(f"run {i + 1}: {type(exc).__name__}: {exc}") from None
                finally:
                    if runs and runs[-1].index == i:
                        print(describe(runs[-1], ttl), flush=True)
    except (Failure, AssertionError) as exc:  # AssertionError: the harness could not form the cluster
        failure = str(exc)
    except KeyboardInterrupt as exc:
        failure = f"interrupted ({exc or 'Ctrl-C'}); every process started was stopped"
    if runs:
        report(runs, ttl)
    if failure:
        print(f"\nFAILED: {failure}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
