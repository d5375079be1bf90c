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

The floor, in the same run: the same guest (kernel, initramfs, memory, TCG, one
raw disk made from the
same image) in two QEMUs started by this script from
kvm.cmdline's command line, no agent, no mirror, no TLS, migrated back and
forth over loopback with plain QMP (`migrate`, no pause before switchover) at
the same bandwidth. Corral's guest pause is printed as a ratio to that
downtime, which QEMU measures the same way on the source.

Prints figures only (the machine is shared and noisy). Usage:
.venv/bin/python bench/migration.py [--rounds 3] [--max-bandwidth 1024] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchcluster import running_cluster, wait_for
from conftest import (  # the test harness (benchcluster puts it on the path)
    GUEST_DIR,
    AgentNode,
    Cluster,
    free_port,
)

from kvm.cmdline import DiskSpec, InstanceSpec, RunPaths, build_argv, run_paths
from kvm.hvparams import HvParams
from kvm.qmp import Qmp, QmpError

SIZES = (("m256", "256M"), ("m1g", "1G"))
DISK = "64M"
BOOT_MARKER = "CORRAL-GUEST-BOOTED"
SYNC_TIMEOUT_S = 90.0
FLOOR_UUID = str(uuid.uuid4())
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


def floor_spec(memory: str, disk: str, incoming: str = "") -> InstanceSpec:
    """The bench's guest as a bare QEMU: same kernel, initramfs, memory and accelerator, one raw disk."""
    hv = HvParams(accel="tcg", kernel_path=f"{GUEST_DIR}/vmlinuz", initrd_path=f"{GUEST_DIR}/initrd.img",
                  kernel_args="quiet")
    mib = int(memory[:-1]) * (1024 if memory.endswith("G") else 1)
    return InstanceSpec(name="floor", uuid=FLOOR_UUID, memory_mib=mib, vcpus=1, hv=hv,
                        disks=(DiskSpec(path=disk, format="raw"),), nics=(), incoming=incoming)


def floor_qemu(root: str, side: str, spec: InstanceSpec, pids: list[int]) -> RunPaths:
    """Start the bare QEMU on `side` (a run directory of its own); its paths once QMP answers."""
    paths = run_paths(f"{root}/{side}", "floor")
    os.makedirs(paths.instance_dir, exist_ok=True)
    done = subprocess.run(build_argv(spec, paths), capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the floor's QEMU did not start: {done.stderr.strip()}")
    pids.append(int(Path(paths.pidfile).read_text()))
    wait_for(lambda: asyncio.run(qmp_answers(paths.qmp_socket)), 10.0, "the floor's QEMU to answer on QMP")
    return paths


async def qmp_answers(socket: str) -> bool:
    try:
        async with await Qmp.connect(socket, 2.0) as qmp:
            await qmp.status()
    except QmpError:
        return False
    return True


async def plain_migration(source: RunPaths, port: int, max_bandwidth: float) -> dict[str, Any]:
    """QEMU's own live migration, no pause before switchover; QEMU's completed figures."""
    async with await Qmp.connect(source.qmp_socket, 5.0) as qmp:
        await qmp.execute("migrate-set-parameters", {"max-bandwidth": int(max_bandwidth * 2**20)})
        await qmp.execute("migrate", {"uri": f"tcp:127.0.0.1:{port}"})
        for _ in range(int(SYNC_TIMEOUT_S / 0.02)):
            info = await qmp.execute("query-migrate")
            assert isinstance(info, dict)
            if info.get("status") == "completed":
                await qmp.quit()
                return info
            if info.get("status") in ("failed", "cancelled"):
                raise RuntimeError(f"plain migration {info.get('status')}: {info.get('error-desc')}")
            await asyncio.sleep(0.02)
    raise RuntimeError(f"plain migration not done within {SYNC_TIMEOUT_S:g} s")


def floor_downtimes(memory: str, rounds: int, max_bandwidth: float) -> list[float]:
    """QEMU's downtime (ms) migrating the bare guest back and forth `rounds` times, once it booted."""
    pids: list[int] = []
    with tempfile.TemporaryDirectory(prefix="corral-migration-floor-") as root:
        disk = Path(root) / "disk.raw"  # the guest's own image, which its /init mounts to print the marker
        subprocess.run(["qemu-img", "convert", "-O", "raw", f"{GUEST_DIR}/base.qcow2", str(disk)], check=True,
                       timeout=60)
        try:
            source = floor_qemu(root, "a", floor_spec(memory, str(disk)), pids)
            console = Path(source.console_log)
            wait_for(lambda: console.exists() and BOOT_MARKER in console.read_text(errors="replace"),
                     BOOT_TIMEOUT_S, f"the floor's {memory} guest to boot")
            downtimes: list[float] = []
            for i in range(rounds):
                port = free_port()
                side = "b" if i % 2 == 0 else "a"
                destination = floor_qemu(root, side, floor_spec(memory, str(disk), f"tcp:127.0.0.1:{port}"), pids)
                info = asyncio.run(plain_migration(source, port, max_bandwidth))
                downtimes.append(float(info.get("downtime", 0)))
                print(f"  QEMU alone, {memory}: paused {downtimes[-1]:.0f} ms", flush=True)
                source = destination
            return downtimes
        finally:
            for pid in pids:  # only what this function started
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 9)


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
        pauses: dict[str, list[float]] = {}
        for name, memory in SIZES:
            rows, failures = migrate_rounds(n1, name, args.rounds, args.max_bandwidth)
            pauses[memory] = [float(r["downtime_ms"]) for r in rows]
            lines += report(memory, rows, failures)
    for _, memory in SIZES:
        floor = floor_downtimes(memory, args.rounds, args.max_bandwidth)
        corral = pauses[memory]
        if corral and floor:
            ratio = statistics.median(corral) / max(statistics.median(floor), 1.0)
            lines.append(f"  {memory} RAM: guest paused, median: Corral (mirror) {statistics.median(corral):.0f} ms, "
                         f"QEMU alone {statistics.median(floor):.0f} ms: {ratio:.1f}x")
    print(f"live migration of idle TCG mirror instances, 2 nodes on loopback, "
          f"--max-bandwidth {args.max_bandwidth:g} MiB/s:")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
