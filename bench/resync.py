"""Benchmark: catching a `mirror` copy up after its secondary was away, against a full copy of the same disk.

No cluster: one TCG QEMU, paused (no guest), whose replicated disk is the
quorum of its image and the secondary's copy, as on a Corral node
(kvm.cmdline); the copy is a qemu-storage-daemon export over TLS
(kvm.nbdexport). First a full copy (kvm.blockmirror) is made and joined:
that is the baseline. Then, for each outage of --outages seconds:

- the copy leaves the quorum with its writes recorded (kvm.blockresync) and
  its export is killed;
- a writer keeps writing through the drive (HMP qemu-io on QEMU's second
  monitor: --write-kib-s in 64 KiB writes at random offsets) for the outage
  and on through the catch-up;
- the export comes back; rounds copy what was recorded while the writes go
  on; the writer stops (the guest's pause) for the last round and the join.

Printed per outage: MiB written meanwhile, MiB copied to catch up, seconds
to redundancy (copy attached again -> joined; for the full copy, mirror
start -> joined) and the last pause, each against the full copy (ratio);
then whether the two copies are identical at rest.

Usage: .venv/bin/python bench/resync.py [--disk-mib 1024] [--outages 10,60] [--write-kib-s 2048]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mirror import CREDS, MIB, NODE, VM, Rig, identical, random_file, run_in_scratch  # noqa: E402  (its rig)
from conftest import free_port  # noqa: E402  (the test suite's helper, on the path mirror.py sets)
from hostagent.node.executor import client_identity  # noqa: E402
from hostagent.node.resync import FINISH_UNDER_BYTES, MAX_ROUNDS  # noqa: E402  (the agent's own thresholds)
from kvm import blockresync  # noqa: E402
from kvm.blockmirror import add_nbd_target, join_peer, leave_peer, mirror_state, remove_nbd_target, \
    start_mirror  # noqa: E402
from kvm.cmdline import DiskSpec, InstanceSpec  # noqa: E402
from kvm.hvparams import HvParams  # noqa: E402
from kvm.nbdexport import NbdExportSpec, export_pid, start_export  # noqa: E402
from kvm.qmp import Qmp  # noqa: E402

TARGET, JOB, RESYNC = "target0", "job0", "resync0"
WRITE_KIB = 64
TIMEOUT_S = 300.0
POLL_S = 0.05


class Writer:
    """Steady writes through the drive on the second monitor; `pause()` stands for the guest's pause."""

    def __init__(self, qmp: Qmp, disk_mib: int, kib_s: int) -> None:
        self.qmp, self.slots, self.every_s = qmp, disk_mib * 1024 // WRITE_KIB, WRITE_KIB / kib_s
        self.written = 0
        self.allowed = asyncio.Event()
        self.allowed.set()
        self.idle = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        rng = random.Random(7)
        next_at = time.monotonic()
        while True:
            self.idle.set()
            await self.allowed.wait()
            self.idle.clear()
            offset = rng.randrange(self.slots) * WRITE_KIB * 1024
            await self.qmp.execute("human-monitor-command", {
                "command-line": f'qemu-io -d disk0-dev "write -P {rng.randrange(1, 255)} {offset} {WRITE_KIB}k"'})
            self.written += WRITE_KIB * 1024
            next_at += self.every_s
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    async def pause(self) -> None:
        self.allowed.clear()
        await asyncio.wait_for(self.idle.wait(), 10)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


async def attach(rig: Rig, qmp: Qmp, spec: NbdExportSpec) -> None:
    rig.pids.append(await start_export(spec))
    await add_nbd_target(qmp, TARGET, "127.0.0.1", spec.port, spec.export_name, CREDS, rig.tls)


async def full_copy(qmp: Qmp) -> float:
    """Mirror and join; seconds."""
    began = time.monotonic()
    await start_mirror(qmp, "disk0", TARGET, JOB)
    for _ in range(int(TIMEOUT_S / POLL_S)):
        if (await mirror_state(qmp, JOB)).status == "converged" and await join_peer(qmp, 0, JOB, TARGET) is not None:
            return time.monotonic() - began
        await asyncio.sleep(POLL_S)
    raise RuntimeError(f"the full copy did not converge within {TIMEOUT_S:g} s")


async def catch_up(qmp: Qmp, writer: Writer, copy_id: str) -> tuple[int, float, int]:
    """Rounds while the writer goes on, then the last one with it paused; (bytes copied, pause s, rounds)."""
    copied, rounds = 0, 0
    while True:
        left = (await blockresync.tracked(qmp, 0))[copy_id]
        if left <= FINISH_UNDER_BYTES or rounds >= MAX_ROUNDS:
            break
        rounds += 1
        await blockresync.start_round(qmp, 0, copy_id, TARGET, RESYNC)
        state = await blockresync.round_state(qmp, RESYNC)
        for _ in range(int(TIMEOUT_S / POLL_S)):
            if state.status != "running":
                break
            await asyncio.sleep(POLL_S)
            state = await blockresync.round_state(qmp, RESYNC)
        if state.status != "done":
            raise RuntimeError(f"a catch-up round ended {state}")
        copied += state.length_bytes
    await writer.pause()
    try:
        copied += (await blockresync.tracked(qmp, 0))[copy_id]
        pause = await blockresync.finish(qmp, 0, copy_id, TARGET, RESYNC, timeout_s=30)
    finally:
        writer.allowed.set()
    if pause is None:
        raise RuntimeError("the last round did not join the copy")
    return copied, pause, rounds + 1


async def bench(root: str, args: argparse.Namespace) -> list[str]:
    source, copy = f"{root}/disk.raw", f"{root}/copy.raw"
    random_file(source, args.disk_mib)
    with open(copy, "wb") as f:
        f.truncate(args.disk_mib * MIB)
    rig = Rig(root)
    spec = NbdExportSpec(image_path=copy, fmt="raw", host="127.0.0.1", port=free_port(), export_name="copy0",
                         pidfile=f"{root}/run/copy0.pid", tls_dir=rig.tls,
                         client_identity=client_identity(NODE))
    rig.pidfiles.append(spec.pidfile)
    inst = InstanceSpec(name=VM, uuid=str(uuid.uuid4()), memory_mib=64, vcpus=1, hv=HvParams(accel="tcg", disk_bus="ide"),
                        disks=(DiskSpec(source, "raw", replicated=True, size_bytes=args.disk_mib * MIB),), nics=())
    lines = []
    try:
        rig.pids.append(await rig.manager.start(inst))
        paths = rig.manager.paths(VM)
        async with await Qmp.connect(paths.qmp_socket, TIMEOUT_S) as qmp, \
                await Qmp.connect(paths.guard_socket, TIMEOUT_S) as second:
            await qmp.execute("stop")
            await attach(rig, qmp, spec)
            full_s = await full_copy(qmp)
            full = args.disk_mib * MIB
            lines.append(f"full copy of {args.disk_mib} MiB (random data) and join: {full_s:.2f} s "
                         f"({args.disk_mib / full_s:.0f} MiB/s)")
            writer = Writer(second, args.disk_mib, args.write_kib_s)
            writer.start()
            try:
                for n, outage in enumerate(args.outages):
                    copy_id = f"c{n}"
                    await blockresync.track(qmp, 0, copy_id)
                    await leave_peer(qmp, 0, TARGET)
                    await remove_nbd_target(qmp, TARGET, CREDS)
                    pid = export_pid(spec.pidfile)
                    if pid is None:
                        raise RuntimeError("the export is not running")
                    os.kill(pid, signal.SIGKILL)
                    written_before = writer.written
                    await asyncio.sleep(outage)
                    written = writer.written - written_before
                    await attach(rig, qmp, spec)
                    back = time.monotonic()
                    copied, pause, rounds = await catch_up(qmp, writer, copy_id)
                    took = time.monotonic() - back
                    lines.append(
                        f"outage {outage:g} s, {args.write_kib_s} KiB/s of {WRITE_KIB} KiB writes at random offsets: "
                        f"{written / MIB:.1f} MiB written meanwhile; caught up by copying {copied / MIB:.1f} MiB "
                        f"in {took:.2f} s ({rounds} rounds, last paused {pause * 1000:.0f} ms)")
                    lines.append(f"   against the full copy: bytes {copied / full:.3f}x, time to redundancy "
                                 f"{took / full_s:.3f}x")
            finally:
                await writer.stop()
            await leave_peer(qmp, 0, TARGET, gentle=True)
        await rig.manager.stop(VM, timeout_s=0, force=True)
        lines.append(f"copies identical at rest: {'yes' if await identical(source, copy) else 'NO'}")
    finally:
        await rig.cleanup()
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--disk-mib", type=int, default=1024, help="disk size, a multiple of 16")
    parser.add_argument("--outages", type=lambda v: [float(x) for x in v.split(",")], default=[10.0, 60.0],
                        help="comma-separated outage lengths in seconds")
    parser.add_argument("--write-kib-s", type=int, default=2048, help="the writer's steady rate")
    return run_in_scratch("crs-", bench, parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
