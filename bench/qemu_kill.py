"""Benchmark: a guest's QEMU killed with -9; time until it runs again and until the guest has booted again.

Forms a 3-node harness cluster on 127.0.15.1-3 with the production timing (reports every 5 s, the default
master lease: what an operator runs, not the tests' faster settings), adds --instances `file` instances (the test guest
under TCG, 128 MiB) on a node that is not the master, waits for their boot markers, then --kills times: SIGKILL
of one's QEMU, found by its pidfile, in turn, each instance killed again only once it has run longer than the
restart policy's stable time (60 s: a quicker second death is a crash loop, restarted after a backoff, which is
not what this measures). From that kill:

  running  a new QEMU of the instance is up (its pidfile names a new live process): the node saw the death,
           reported it, and the master ordered the restart
  booted   the guest printed its next boot marker on the console (the test kernel's boot under TCG included)
  boot     booted - running: the guest's own boot, the floor no cluster manager can go below

Printed: each kill, then median, p90 and max, and the detection part (running) against the 1.5 s goal. For
reference, Ganeti 3.0's watcher restarts a dead instance when cron runs it (every 5 min; 2.6 s when run by
hand at that moment, measured on this machine: ../shared/MEASURED.md). Usage:
.venv/bin/python bench/qemu_kill.py [--kills 10] [--keep]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import time
from pathlib import Path

from benchcluster import AgentNode, Cluster, ask, guest_hv, running_cluster, summary, wait_for

SUBNET = "127.0.15"
BOOTED = re.compile(r"CORRAL-GUEST-BOOTED count=(\d+)")
POLL_S = 0.01
WAIT_S = 120.0  # one kill's bound: a restart not seen by then is a failure, reported
GOAL_S = 1.5
STABLE_S = 61.0  # hostagent.master.decide.restarts.Policy.stable_s, and a second


def production_timing(cluster: Cluster) -> None:
    """The agents' default report interval and master lease, instead of the test harness's faster ones."""
    for node in cluster.nodes:
        text = node.config.read_text().replace("report_interval_s = 1.0", "report_interval_s = 5.0")
        node.config.write_text("\n".join(line for line in text.splitlines()
                                         if not line.startswith("master_lease_ttl_s")) + "\n")


def qemu_pid(node: AgentNode, name: str) -> int | None:
    """The live QEMU of `name` on `node`, by its pidfile (checked against the process's command line)."""
    pidfile = node.root / "run" / "instances" / name / "qemu.pid"
    try:
        pid = int(pidfile.read_text().strip())
        return pid if str(pidfile).encode() in Path(f"/proc/{pid}/cmdline").read_bytes() else None
    except (OSError, ValueError):
        return None


def boots(node: AgentNode, name: str) -> int:
    path = node.root / "log" / "console" / f"{name}.console.log"
    return len(BOOTED.findall(path.read_text(errors="replace"))) if path.exists() else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--instances", type=int, default=5)
    parser.add_argument("--keep", action="store_true", help="keep the cluster's files (agent logs)")
    args = parser.parse_args()
    with running_cluster(3, 3, keep=args.keep, subnet=SUBNET, prefix="qemukill-",
                         before_form=production_timing) as (cluster, _):
        n1 = cluster["n1"]
        master = (ask(n1, "cluster", "info") or {}).get("master")
        node = next(n for n in cluster.nodes if n.name != master)
        names = [f"k{i}" for i in range(1, args.instances + 1)]
        for name in names:
            n1.ok("instance", "add", name, "--os", "busybox-guest", "--memory", "128M", "--disk", "64M",
                  "--node", node.name, "--hv", guest_hv())
        for name in names:
            wait_for(lambda name=name: boots(node, name) >= 1, WAIT_S, f"{name} to boot")
        started = {name: time.monotonic() for name in names}
        running, booted = [], []
        for kill in range(1, args.kills + 1):
            name = names[(kill - 1) % len(names)]
            time.sleep(max(1.0, started[name] + STABLE_S - time.monotonic()))  # a duration to let pass
            pid, seen = qemu_pid(node, name), boots(node, name)
            assert pid is not None, f"{name} has no QEMU"
            t0 = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            wait_for(lambda: qemu_pid(node, name) not in (None, pid), WAIT_S, f"kill {kill}: a new QEMU of {name}",
                     interval_s=POLL_S)
            t_run = time.monotonic()
            started[name] = t_run
            wait_for(lambda: boots(node, name) > seen, WAIT_S, f"kill {kill}: {name}'s guest to boot again",
                     interval_s=POLL_S)
            t_boot = time.monotonic()
            running.append(t_run - t0)
            booted.append(t_boot - t0)
            print(f"kill {kill:2d} ({name}): running again {running[-1]:5.2f} s, booted {booted[-1]:5.2f} s "
                  f"(guest boot {t_boot - t_run:5.2f} s)", flush=True)
        print(f"\nQEMU killed -9 -> running again: {summary(running)}")
        print(f"QEMU killed -9 -> guest booted:  {summary(booted)}")
        print(f"the guest's own boot (floor):    {summary([b - r for b, r in zip(booted, running)])}")
        median = statistics.median(running)
        print(f"running again, median {median:.2f} s: {median / GOAL_S:.2f}x the {GOAL_S} s goal "
              f"({'met' if median <= GOAL_S else 'NOT met'})")


if __name__ == "__main__":
    main()
