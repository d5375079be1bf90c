"""Benchmark: live migration of `mirror` instances through the real CLI, 256 MiB and 1 GiB of RAM.

A two-node harness cluster (one master candidate; tests/integration/conftest.py
via bench/benchcluster.py) on 127.0.0.1-2 runs one mirror instance of each
size, the test guest booted under TCG. Each is migrated back and forth
--rounds times with `corral --json instance migrate`, whose job result gives
QEMU's own figures: migration time (start of the RAM copy to the destination
running, guest pause included), guest pause (QEMU's "downtime": from the stop
of the vCPUs through the switchover, while Corral ends the disk mirror and the
export, to the resume on the destination) and throughput. The CLI wall time
adds job scheduling, starting the destination QEMU and re-attaching the
mirror; "back in sync" is until `instance info` says so again (the new
primary's mirror copies the whole disk to the old one, then reports once a
second).

The guest only idles: a TCG guest that booted a busybox initramfs has touched
little of its RAM, so most pages are zero pages, which QEMU sends as a flag
each, and the figures are close to the floor for a guest of that size; a busy
guest would send more and be paused longer.

Prints figures only (the machine is shared and noisy). Usage:
.venv/bin/python bench/migration.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import time
from collections.abc import Callable, Sequence

from benchcluster import running_cluster, wait_for
from conftest import GUEST_DIR, AgentNode, Cluster  # the test harness (benchcluster puts it on the path)

from storage.nbdexport import export_pid

SIZES = (("m256", "256M"), ("m1g", "1G"))
DISK = "64M"
BOOT_MARKER = "CORRAL-GUEST-BOOTED"
SYNC_TIMEOUT_S = 90.0
BOOT_TIMEOUT_S = 90.0


def replication(node: AgentNode, name: str) -> dict:
    return node.json("instance", "info", name)["replication"]


def wait_in_sync(node: AgentNode, name: str) -> float:
    """Seconds until `instance info` says in sync (polled through the CLI, bounded)."""
    began = time.monotonic()

    def in_sync() -> bool:
        r = replication(node, name)
        return r["summary"] == "in sync" and r["in_sync"]
    wait_for(in_sync, SYNC_TIMEOUT_S, f"the disks of {name} to be in sync", interval_s=0.1)
    return time.monotonic() - began


def wait_booted(cluster: Cluster, name: str) -> None:
    console = cluster["n1"].root / "log" / "console" / f"{name}.console.log"
    wait_for(lambda: console.exists() and BOOT_MARKER in console.read_text(errors="replace"),
             BOOT_TIMEOUT_S, f"{name} to boot")


def add_instances(node: AgentNode) -> None:
    hv = f"accel=tcg,kernel_path={GUEST_DIR}/vmlinuz,initrd_path={GUEST_DIR}/initrd.img,kernel_args=quiet"
    for name, memory in SIZES:
        node.ok("instance", "add", name, "--os", "busybox-guest", "--disk-template", "mirror",
                "--node", "n1:n2", "--disk", DISK, "--memory", memory, "--hv", hv)


def migrate_rounds(node: AgentNode, name: str, rounds: int) -> list[dict]:
    """Migrate `name` to its secondary `rounds` times; one row of figures per migration."""
    rows = []
    for _ in range(rounds):
        began = time.monotonic()
        job = node.json("instance", "migrate", name)
        wall_s = time.monotonic() - began
        row = {**job["result"], "wall_s": wall_s, "resync_s": wait_in_sync(node, name)}
        print(f"  {name}: to {row['node']} in {row['total_s']:.2f} s, paused {row['downtime_ms']} ms, "
              f"{row['transferred_mib']:.0f} MiB at {row['throughput_mib_s']:.0f} MiB/s "
              f"(CLI {wall_s:.2f} s, back in sync after {row['resync_s']:.1f} s)", flush=True)
        rows.append(row)
    return rows


def figure(label: str, values: Sequence[float], fmt: Callable[[float], str]) -> str:
    return f"    {label:<30} median {fmt(statistics.median(values)):>10}   max {fmt(max(values)):>10}"


def report(memory: str, rows: list[dict]) -> list[str]:
    def col(key: str) -> list[float]:
        return [float(r[key]) for r in rows]
    return [
        f"  {memory} RAM, {len(rows)} migrations ({statistics.median(col('transferred_mib')):.0f} MiB sent, median):",
        figure("migration time (QEMU)", col("total_s"), lambda v: f"{v:.2f} s"),
        figure("guest paused (downtime)", col("downtime_ms"), lambda v: f"{v:.0f} ms"),
        figure("throughput", col("throughput_mib_s"), lambda v: f"{v:.0f} MiB/s"),
        figure("CLI wall time", col("wall_s"), lambda v: f"{v:.2f} s"),
        figure("back in sync after", col("resync_s"), lambda v: f"{v:.1f} s"),
    ]


def stop_exports(cluster: Cluster) -> list[int]:
    """SIGKILL the NBD export daemons the agents left behind (by pidfile, ours only); their pids."""
    killed = []
    for node in cluster.nodes:
        for pidfile in (node.root / "run" / "replication").glob("*.pid"):
            pid = export_pid(str(pidfile))  # None unless that live process was started with this pidfile
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
    return killed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="migrations per instance (default 3)")
    args = parser.parse_args()
    lines: list[str] = []
    with running_cluster(2, candidates=1) as (cluster, _ledger):
        try:
            n1 = cluster["n1"]
            t0 = time.monotonic()
            add_instances(n1)
            for name, _ in SIZES:
                wait_booted(cluster, name)
                wait_in_sync(n1, name)
            print(f"instances added, booted and in sync in {time.monotonic() - t0:.1f} s", flush=True)
            for name, memory in SIZES:
                lines += report(memory, migrate_rounds(n1, name, args.rounds))
        finally:
            cluster.stop()
            leftover = stop_exports(cluster)
            if leftover:
                print(f"CLEANUP: killed NBD export daemons the agents left running: {leftover}", flush=True)
    print(f"live migration of idle TCG mirror instances, 2 nodes on loopback, "
          f"--max-bandwidth {1024} MiB/s (the CLI default):")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
