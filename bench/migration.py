"""Benchmark: live migration of `mirror` instances through the real CLI, 256 MiB and 1 GiB of RAM.

A two-node harness cluster (tests/integration/conftest.py via bench/benchcluster.py)
on 127.0.0.1-2, with one master candidate (the pool is 1, 3 or 5; two nodes
allow one), runs one mirror instance of each size, the test guest booted under
TCG. Each is migrated back and forth --rounds times with `corral instance
migrate --json`, whose job result carries QEMU's own figures, measured on the
source: migration time (start of the RAM copy to completion), guest pause
(QEMU's "downtime": vCPUs stopped until the last device state is sent, which
includes the pause before switchover in which Corral ends the disk mirror and
the secondary's export) and throughput (MiB sent over migration time). The CLI
wall time adds the job, starting the destination QEMU and re-attaching the
mirror; "back in sync" is until `instance info` says so again (a full copy of
the disk to the old primary, seen through reports made once a second).

The guest only idles: a TCG guest that booted a busybox initramfs has touched
little of its RAM, so most of it is zero pages, which QEMU sends as a flag
each; the figures are near the floor for a guest of that size, and a busy guest
would send more and be paused longer. A failed migration is reported, not fatal.

Prints figures only (the machine is shared and noisy). Usage:
.venv/bin/python bench/migration.py [--rounds 3] [--max-bandwidth 1024] [--keep]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from benchcluster import running_cluster, wait_for
from conftest import GUEST_DIR, AgentNode, Cluster  # the test harness (benchcluster puts it on the path)

SIZES = (("m256", "256M"), ("m1g", "1G"))
DISK = "64M"
BOOT_MARKER = "CORRAL-GUEST-BOOTED"
SYNC_TIMEOUT_S = 90.0
BOOT_TIMEOUT_S = 90.0


def replication(node: AgentNode, name: str) -> dict[str, Any]:
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


def migrate_rounds(node: AgentNode, name: str, rounds: int,
                   max_bandwidth: float) -> tuple[list[dict[str, Any]], list[str]]:
    """Migrate `name` to its secondary `rounds` times: figures of each success, the failed jobs' errors."""
    rows: list[dict[str, Any]] = []
    failures: list[str] = []
    for _ in range(rounds):
        began = time.monotonic()
        done = node.corral("instance", "migrate", name, "--max-bandwidth", f"{max_bandwidth:g}", "--json")
        wall_s = time.monotonic() - began
        try:
            job = json.loads(done.stdout)
        except json.JSONDecodeError:
            job = {"status": f"unknown (exit {done.returncode})", "error": done.stderr.strip()}
        if job["status"] != "success":
            failures.append(str(job.get("error")))
            print(f"  {name}: migration FAILED: {job.get('error')}", flush=True)
            wait_in_sync(node, name)
            continue
        row = {**job["result"], "wall_s": wall_s, "resync_s": wait_in_sync(node, name)}
        print(f"  {name}: to {row['node']} in {row['total_s']:.2f} s, paused {row['downtime_ms']} ms, "
              f"{row['transferred_mib']:.0f} MiB at {row['throughput_mib_s']:.0f} MiB/s "
              f"(CLI {wall_s:.2f} s, back in sync after {row['resync_s']:.1f} s)", flush=True)
        rows.append(row)
    return rows, failures


def figure(label: str, values: Sequence[float], fmt: Callable[[float], str]) -> str:
    return f"    {label:<30} median {fmt(statistics.median(values)):>10}   max {fmt(max(values)):>10}"


def report(memory: str, rows: list[dict[str, Any]], failures: list[str]) -> list[str]:
    def col(key: str) -> list[float]:
        return [float(r[key]) for r in rows]
    lines = [f"  {memory} RAM: {len(rows)} migrations done, {len(failures)} failed"]
    lines += [f"    failed: {error}" for error in failures]
    if rows:
        lines += [
            f"    {'sent (median)':<30} {statistics.median(col('transferred_mib')):>10.0f} MiB",
            figure("migration time (QEMU)", col("total_s"), lambda v: f"{v:.2f} s"),
            figure("guest paused (downtime)", col("downtime_ms"), lambda v: f"{v:.0f} ms"),
            figure("throughput", col("throughput_mib_s"), lambda v: f"{v:.0f} MiB/s"),
            figure("CLI wall time", col("wall_s"), lambda v: f"{v:.2f} s"),
            figure("back in sync after", col("resync_s"), lambda v: f"{v:.1f} s"),
        ]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="migrations per instance (default 3)")
    parser.add_argument("--max-bandwidth", type=float, default=1024.0,
                        help="MiB/s for the memory copy, passed to the CLI (default 1024, the CLI's own)")
    parser.add_argument("--keep", action="store_true", help="keep the cluster's files (agent logs) afterwards")
    args = parser.parse_args()
    lines: list[str] = []
    # On the way out, running_cluster stops the agents and, through the harness's kill_qemus,
    # the QEMUs and disk exports they started (by pidfile), then any serf/etcd left over.
    with running_cluster(2, candidates=1, keep=args.keep) as (cluster, _ledger):
        n1 = cluster["n1"]
        t0 = time.monotonic()
        add_instances(n1)
        for name, _ in SIZES:
            wait_booted(cluster, name)
            wait_in_sync(n1, name)
        print(f"instances added, booted and in sync in {time.monotonic() - t0:.1f} s", flush=True)
        for name, memory in SIZES:
            lines += report(memory, *migrate_rounds(n1, name, args.rounds, args.max_bandwidth))
    print(f"live migration of idle TCG mirror instances, 2 nodes on loopback, "
          f"--max-bandwidth {args.max_bandwidth:g} MiB/s:")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
