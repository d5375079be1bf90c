"""Benchmark: what the `mirror` template costs guest writes, and how fast a first full copy goes.

No cluster: one TCG QEMU (kvm.process, paused at once by QMP `stop`: no guest
kernel, and a running firmware would only spin a vCPU) mirrors its disks with
kvm.blockmirror into kvm.nbdexport's exports over TLS; a throwaway CA and one
node certificate (hostagent.pki) serve both ends, as on a Corral node.

a. Write throughput through HMP `qemu-io` on the drive (it enters the block layer
   where a guest write does, so it goes through the mirror), with no mirror, then
   with an in-sync write-blocking mirror. Both overwrite blocks written once
   before; the drive has cache=none (Corral's default) and the export flushes
   after every write (writethrough=on): the price of an acknowledged write being
   on the secondary too. Each `qemu-io` call is one request of --chunk-kib.
b. The first full copy of a disk of random data (zeros would be skipped) by the
   mirror, against `qemu-img convert -O raw`, both reading the source cold.

Prints figures only; the machine is shared and noisy. Usage:
.venv/bin/python bench/mirror.py [--write-mib 256] [--chunk-kib 1024] [--rounds 3] [--sync-mib 1024]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))
from conftest import free_port  # noqa: E402  (the test suite's helper)
from hostagent import pki  # noqa: E402
from hostagent.node.replication import client_identity  # noqa: E402
from kvm.blockmirror import MirrorState, add_nbd_target, mirror_state, start_mirror, stop_mirror  # noqa: E402
from kvm.cmdline import DiskSpec, InstanceSpec  # noqa: E402
from kvm.hvparams import HvParams  # noqa: E402
from kvm.nbdexport import NbdExportSpec, link_tls_dir, start_export, stop_export  # noqa: E402
from kvm.process import QemuManager  # noqa: E402
from kvm.qmp import Qmp  # noqa: E402
from storage import runner  # noqa: E402

MIB = 1024 * 1024
NODE = "bench"
VM = "mbench"
CREDS = "bench-tls"
TIMEOUT_S = 120.0  # for one sync, convert or compare of the 1 GiB disk
POLL_S = 0.05


class Rig:
    """The paused QEMU, the TLS directory and the exports this run started (pids kept for cleanup)."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.manager = QemuManager(f"{root}/run")
        self.tls = f"{root}/tls"
        self.pidfiles: list[str] = []
        self.pids: list[int] = []
        paths = pki.PkiPaths(f"{root}/pki")
        pki.create_ca(paths, "bench")
        pki.issue_node_cert(paths, NODE, "127.0.0.1")
        link_tls_dir(self.tls, paths.ca_cert, paths.node_cert, paths.node_key)

    async def start_qemu(self, disks: list[str]) -> None:
        spec = InstanceSpec(name=VM, uuid=str(uuid.uuid4()), memory_mib=64, vcpus=1, hv=HvParams(accel="tcg"),
                            disks=tuple(DiskSpec(d, "raw") for d in disks), nics=())
        self.pids.append(await self.manager.start(spec))

    async def export(self, image: str, index: int, port: int, writethrough: bool) -> NbdExportSpec:
        spec = NbdExportSpec(image_path=image, fmt="raw", host="127.0.0.1", port=port,
                             export_name=f"copy{index}", pidfile=f"{self.root}/run/copy{index}.pid",
                             tls_dir=self.tls, client_identity=client_identity(NODE), writethrough=writethrough)
        self.pidfiles.append(spec.pidfile)
        self.pids.append(await start_export(spec))
        return spec

    async def cleanup(self) -> None:
        """Stop the QEMU and the exports, then SIGKILL (by pid, ours only) whatever survived."""
        try:
            await self.manager.stop(VM, timeout_s=0, force=True)
        finally:
            for pidfile in self.pidfiles:
                await stop_export(pidfile)
            for pid in self.pids:
                try:
                    proc = psutil.Process(pid)
                    if self.root in " ".join(proc.cmdline()):
                        proc.send_signal(signal.SIGKILL)
                except psutil.Error:
                    continue


def random_file(path: str, mib: int) -> None:
    """Incompressible, never zero: one random 16 MiB block, rotated differently for each 16 MiB."""
    block = os.urandom(16 * MIB)
    with open(path, "wb") as f:
        for i in range(mib // 16):
            shift = i * 4099 % len(block)
            f.write(block[shift:] + block[:shift])
        f.flush()
        os.fsync(f.fileno())


def holds(path: str, pattern: int, mib: int) -> bool:
    """Whether the first `mib` MiB of the file are all `pattern` (HMP qemu-io prints no errors back)."""
    want = bytes([pattern]) * (16 * MIB)
    with open(path, "rb") as f:
        for _ in range(0, mib, 16):
            got = f.read(16 * MIB)
            if got != want[:len(got)]:
                return False
    return True


def drop_cache(path: str) -> None:
    """Write back, then evict this file's pages, so that the next reader goes to the disk."""
    fd = os.open(path, os.O_RDWR)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


async def write_pass(qmp: Qmp, drive: str, pattern: int, total_mib: int, chunk_kib: int) -> float:
    """Write `total_mib` in `chunk_kib` requests through the drive; MiB/s."""
    chunk = chunk_kib * 1024
    began = time.monotonic()
    for offset in range(0, total_mib * MIB, chunk):
        await qmp.execute("human-monitor-command", {
            "command-line": f'qemu-io {drive} "write -P {pattern} {offset} {chunk}"'})
    return total_mib / (time.monotonic() - began)


async def wait_in_sync(qmp: Qmp, job: str) -> None:
    """Poll (bounded) until the copy is whole and the job only forwards writes ("converged": the mirror
    job's own in-sync; joining a quorum is the agent's business, not this rig's)."""
    state: MirrorState | None = None
    for _ in range(int(TIMEOUT_S / POLL_S) + 1):
        state = await mirror_state(qmp, job, state)
        if state.status == "converged":
            return
        if state.status in ("failed", "stalled", "absent", "stopped"):
            break
        await asyncio.sleep(POLL_S)
    raise RuntimeError(f"mirror {job} not in sync within {TIMEOUT_S:g} s: {state}")


async def mirror_to(rig: Rig, qmp: Qmp, drive: str, index: int, copy: str, writethrough: bool = True) -> float:
    """Export `copy`, mirror `drive` into it; seconds until in sync (the mirror keeps running)."""
    spec = await rig.export(copy, index, free_port(), writethrough)
    await add_nbd_target(qmp, f"target{index}", "127.0.0.1", spec.port, spec.export_name, CREDS, rig.tls)
    began = time.monotonic()
    await start_mirror(qmp, drive, f"target{index}", f"job{index}")
    await wait_in_sync(qmp, f"job{index}")
    return time.monotonic() - began


async def identical(a: str, b: str) -> bool:
    result = await runner.run(["qemu-img", "compare", "-U", "-q", "-f", "raw", "-F", "raw", a, b],
                              timeout_s=TIMEOUT_S, check=False)
    return result.rc == 0


async def write_overhead(rig: Rig, qmp: Qmp, args: argparse.Namespace) -> list[str]:
    """(a): guest-write throughput without and with an in-sync mirror."""
    source, copy = f"{rig.root}/a.raw", f"{rig.root}/a-copy.raw"
    first = await write_pass(qmp, "disk0", 0xAA, args.write_mib, args.chunk_kib)
    plain = [await write_pass(qmp, "disk0", 0xAB, args.write_mib, args.chunk_kib) for _ in range(args.rounds)]
    if not holds(source, 0xAB, args.write_mib):
        raise RuntimeError(f"{source} does not hold what qemu-io wrote: the writes failed")
    initial = await mirror_to(rig, qmp, "disk0", 0, copy)
    mirrored = [await write_pass(qmp, "disk0", 0xCD, args.write_mib, args.chunk_kib) for _ in range(args.rounds)]
    await stop_mirror(qmp, "job0", "target0")
    same = holds(source, 0xCD, args.write_mib) and await identical(source, copy)
    p, m = statistics.median(plain), statistics.median(mirrored)
    return [
        f"a. writes of {args.chunk_kib} KiB through HMP qemu-io, {args.write_mib} MiB a pass, "
        f"median of {args.rounds} (first, allocating pass: {first:.0f} MiB/s)",
        f"   no mirror:                     {p:7.1f} MiB/s  (passes: {', '.join(f'{v:.0f}' for v in plain)})",
        f"   in-sync write-blocking mirror: {m:7.1f} MiB/s  (passes: {', '.join(f'{v:.0f}' for v in mirrored)})",
        f"   mirrored / plain: {m / p:.2f}   (initial sync of {args.write_mib} MiB took {initial:.2f} s; "
        f"copy identical after: {'yes' if same else 'NO'})",
    ]


async def first_copy(rig: Rig, qmp: Qmp, source: str) -> tuple[float, float, bool]:
    """(b), the mirror's side: seconds to sync into a writethrough export, into one without; copy whole?"""
    drop_cache(source)
    flushed_s = await mirror_to(rig, qmp, "disk1", 1, f"{rig.root}/b-copy.raw")
    await stop_mirror(qmp, "job1", "target1")
    same = await identical(source, f"{rig.root}/b-copy.raw")
    drop_cache(source)
    unflushed_s = await mirror_to(rig, qmp, "disk1", 2, f"{rig.root}/b-copy-unflushed.raw", writethrough=False)
    await stop_mirror(qmp, "job2", "target2")
    return flushed_s, unflushed_s, same


async def convert(source: str, target: str) -> tuple[float, float]:
    """(b), the baseline: seconds for qemu-img convert from a cold source, then for the fsync after."""
    drop_cache(source)
    began = time.monotonic()
    await runner.run(["qemu-img", "convert", "-O", "raw", source, target], timeout_s=TIMEOUT_S)
    convert_s = time.monotonic() - began
    began = time.monotonic()
    drop_cache(target)
    return convert_s, time.monotonic() - began


async def bench(root: str, args: argparse.Namespace) -> list[str]:
    for name, mib in (("a.raw", args.write_mib), ("a-copy.raw", args.write_mib),
                      ("b-copy.raw", args.sync_mib), ("b-copy-unflushed.raw", args.sync_mib)):
        with open(f"{root}/{name}", "wb") as f:
            f.truncate(mib * MIB)
    source = f"{root}/b.raw"
    random_file(source, args.sync_mib)
    rig = Rig(root)
    try:
        await rig.start_qemu([f"{root}/a.raw", source])
        async with await Qmp.connect(rig.manager.paths(VM).qmp_socket, TIMEOUT_S) as qmp:
            await qmp.execute("stop")
            lines = await write_overhead(rig, qmp, args)
            sync_s, unflushed_s, same = await first_copy(rig, qmp, source)
        await rig.manager.stop(VM, timeout_s=0, force=True)  # QEMU's image lock would refuse qemu-img
        convert_s, fsync_s = await convert(source, f"{root}/b-converted.raw")
    finally:
        await rig.cleanup()
    mib = args.sync_mib
    return lines + [
        f"b. first full copy of {mib} MiB of random data, source read cold",
        f"   mirror to the NBD export (TLS, writethrough): {mib / sync_s:7.1f} MiB/s  ({sync_s:.2f} s; "
        f"copy identical: {'yes' if same else 'NO'})",
        f"   same, export with writethrough=off:           {mib / unflushed_s:7.1f} MiB/s  "
        f"({unflushed_s:.2f} s; the rest is the flush after every write)",
        f"   qemu-img convert -O raw (cache unsafe):       {mib / convert_s:7.1f} MiB/s  ({convert_s:.2f} s; "
        f"{mib / (convert_s + fsync_s):.0f} MiB/s counting the fsync after)",
        f"   mirror / convert: {convert_s / sync_s:.2f}",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write-mib", type=int, default=256, help="MiB written per pass in (a)")
    parser.add_argument("--chunk-kib", type=int, default=1024, help="size of each write request in (a)")
    parser.add_argument("--rounds", type=int, default=3, help="measured passes per case in (a)")
    parser.add_argument("--sync-mib", type=int, default=1024, help="disk size for (b), a multiple of 16")
    return run_in_scratch("cbm-", bench, parser.parse_args())


def run_in_scratch(prefix: str, body: Callable[[str, argparse.Namespace], Awaitable[list[str]]],
                   args: argparse.Namespace) -> int:
    """Run `body` in a scratch directory under /tmp (short: QMP's unix socket path), removed after; print its lines."""
    root = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    try:
        lines = asyncio.run(body(root, args))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
