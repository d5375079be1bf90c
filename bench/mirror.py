"""Benchmark: what the `mirror` template costs guest writes, and how fast a first full copy goes.

No cluster: one TCG QEMU started by kvm.process and paused at once with QMP
`stop` (no guest kernel; a running firmware would only spin a TCG vCPU), its
disks mirrored by kvm.blockmirror into storage.nbdexport's qemu-storage-daemon
exports over TLS, with a throwaway CA and one node certificate from hostagent.pki
serving both ends, as a Corral node's replication directory does.

a. Write throughput to the drive through HMP `qemu-io` (it enters the block
   layer where a guest write does, so it goes through the mirror), first with
   no mirror, then with an in-sync write-blocking mirror. Both passes overwrite
   blocks already written once, so neither pays for file allocation; the
   drive has cache=none (Corral's default) and the export flushes after every
   write (writethrough=on), which is the price of an acknowledged write being
   on the secondary. Each `qemu-io` call is one write request of --chunk-kib.
b. The first full copy of a disk of random data (zeros would be skipped) by
   the mirror, against `qemu-img convert -O raw` of the same file, both
   reading the source cold (its pages dropped from the page cache first).

Prints figures only (the machine is shared and noisy: orders of magnitude).
Usage: .venv/bin/python bench/mirror.py [--write-mib 256] [--chunk-kib 1024] [--rounds 3] [--sync-mib 1024]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hostagent import pki  # noqa: E402
from hostagent.replication import client_identity  # noqa: E402
from kvm.blockmirror import MirrorState, add_nbd_target, mirror_state, start_mirror, stop_mirror  # noqa: E402
from kvm.cmdline import DiskSpec, InstanceSpec  # noqa: E402
from kvm.hvparams import HvParams  # noqa: E402
from kvm.process import QemuManager  # noqa: E402
from kvm.qmp import Qmp  # noqa: E402
from storage import runner  # noqa: E402
from storage.nbdexport import NbdExportSpec, export_pid, link_tls_dir, start_export, stop_export  # noqa: E402

MIB = 1024 * 1024
NODE = "bench"
VM = "mbench"
CREDS = "bench-tls"
SYNC_TIMEOUT_S = 120.0
POLL_S = 0.05
CONVERT_TIMEOUT_S = 120.0


class Rig:
    """The paused QEMU, the TLS directory and the exports this run started (pids kept for cleanup)."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.manager = QemuManager(f"{root}/run", qmp_timeout_s=120.0)
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

    async def export(self, image: str, index: int, port: int) -> NbdExportSpec:
        spec = NbdExportSpec(image_path=image, fmt="raw", host="127.0.0.1", port=port,
                             export_name=f"copy{index}", pidfile=f"{self.root}/run/copy{index}.pid",
                             tls_dir=self.tls, client_identity=client_identity(NODE))
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


def sparse_file(path: str, mib: int) -> None:
    with open(path, "wb") as f:
        f.truncate(mib * MIB)


def random_file(path: str, mib: int) -> None:
    with open(path, "wb") as f:
        for _ in range(mib // 16):
            f.write(os.urandom(16 * MIB))
        f.flush()
        os.fsync(f.fileno())


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
        out = await qmp.execute("human-monitor-command", {
            "command-line": f'qemu-io {drive} "write -P {pattern} {offset} {chunk}"'})
        if not str(out).startswith("wrote "):
            raise RuntimeError(f"qemu-io write at {offset} on {drive} failed: {str(out).strip()}")
    return total_mib / (time.monotonic() - began)


async def wait_in_sync(qmp: Qmp, job: str) -> float:
    """Poll (bounded) until the mirror is in sync; seconds from the call."""
    began = time.monotonic()
    state: MirrorState | None = None
    for _ in range(int(SYNC_TIMEOUT_S / POLL_S) + 1):
        state = await mirror_state(qmp, job, state)
        if state.status == "in_sync":
            return time.monotonic() - began
        if state.status in ("failed", "stalled", "absent", "stopped"):
            break
        await asyncio.sleep(POLL_S)
    raise RuntimeError(f"mirror {job} not in sync within {SYNC_TIMEOUT_S:g} s: {state}")


async def mirror_to(rig: Rig, qmp: Qmp, drive: str, index: int, copy: str, port: int) -> float:
    """Export `copy`, mirror `drive` into it; seconds until in sync."""
    spec = await rig.export(copy, index, port)
    await add_nbd_target(qmp, f"target{index}", "127.0.0.1", spec.port, spec.export_name, CREDS, rig.tls)
    began = time.monotonic()
    await start_mirror(qmp, drive, f"target{index}", f"job{index}")
    await wait_in_sync(qmp, f"job{index}")
    return time.monotonic() - began


async def identical(a: str, b: str) -> bool:
    result = await runner.run(["qemu-img", "compare", "-U", "-q", "-f", "raw", "-F", "raw", a, b],
                              timeout_s=CONVERT_TIMEOUT_S, check=False)
    return result.rc == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def bench(root: str, args: argparse.Namespace) -> list[str]:
    lines: list[str] = []
    source_a, copy_a = f"{root}/a.raw", f"{root}/a-copy.raw"
    source_b, copy_b, converted = f"{root}/b.raw", f"{root}/b-copy.raw", f"{root}/b-converted.raw"
    sparse_file(source_a, args.write_mib)
    sparse_file(copy_a, args.write_mib)
    sparse_file(copy_b, args.sync_mib)
    t0 = time.monotonic()
    random_file(source_b, args.sync_mib)
    print(f"made {args.sync_mib} MiB of random data in {time.monotonic() - t0:.1f} s", flush=True)
    rig = Rig(root)
    try:
        await rig.start_qemu([source_a, source_b])
        async with await Qmp.connect(rig.manager.paths(VM).qmp_socket, 120.0) as qmp:
            await qmp.execute("stop")
            # a. guest-write throughput without and with the mirror
            first = await write_pass(qmp, "disk0", 0xAA, args.write_mib, args.chunk_kib)
            plain = [await write_pass(qmp, "disk0", 0xAB, args.write_mib, args.chunk_kib)
                     for _ in range(args.rounds)]
            initial = await mirror_to(rig, qmp, "disk0", 0, copy_a, free_port())
            mirrored = [await write_pass(qmp, "disk0", 0xCD, args.write_mib, args.chunk_kib)
                        for _ in range(args.rounds)]
            await stop_mirror(qmp, "job0", "target0")
            same = await identical(source_a, copy_a)
            p, m = statistics.median(plain), statistics.median(mirrored)
            lines += [
                f"a. writes of {args.chunk_kib} KiB through HMP qemu-io, {args.write_mib} MiB a pass, "
                f"median of {args.rounds} (first, allocating pass: {first:.0f} MiB/s)",
                f"   no mirror:                     {p:7.1f} MiB/s  (passes: {', '.join(f'{v:.0f}' for v in plain)})",
                f"   in-sync write-blocking mirror: {m:7.1f} MiB/s  (passes: {', '.join(f'{v:.0f}' for v in mirrored)})",
                f"   mirrored / plain: {m / p:.2f}   (initial sync of {args.write_mib} MiB took {initial:.2f} s; "
                f"copy identical after: {'yes' if same else 'NO'})",
            ]
            # b. first full copy: mirror vs qemu-img convert, both from a cold source
            drop_cache(source_b)
            sync_s = await mirror_to(rig, qmp, "disk1", 1, copy_b, free_port())
            await stop_mirror(qmp, "job1", "target1")
            same = await identical(source_b, copy_b)
        drop_cache(source_b)
        began = time.monotonic()
        await runner.run(["qemu-img", "convert", "-O", "raw", source_b, converted], timeout_s=CONVERT_TIMEOUT_S)
        convert_s = time.monotonic() - began
        began = time.monotonic()
        drop_cache(converted)
        fsync_s = time.monotonic() - began
    finally:
        await rig.cleanup()
    mirror_rate, convert_rate = args.sync_mib / sync_s, args.sync_mib / convert_s
    lines += [
        f"b. first full copy of {args.sync_mib} MiB of random data, source read cold",
        f"   mirror to the NBD export (TLS, writethrough): {mirror_rate:7.1f} MiB/s  ({sync_s:.2f} s; "
        f"copy identical: {'yes' if same else 'NO'})",
        f"   qemu-img convert -O raw (cache unsafe):       {convert_rate:7.1f} MiB/s  ({convert_s:.2f} s; "
        f"{args.sync_mib / (convert_s + fsync_s):.0f} MiB/s counting the fsync after)",
        f"   mirror / convert: {mirror_rate / convert_rate:.2f}",
    ]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write-mib", type=int, default=256, help="MiB written per pass in (a)")
    parser.add_argument("--chunk-kib", type=int, default=1024, help="size of each write request in (a)")
    parser.add_argument("--rounds", type=int, default=3, help="measured passes per case in (a)")
    parser.add_argument("--sync-mib", type=int, default=1024, help="disk size for (b), a multiple of 16")
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="cbm-", dir="/tmp")  # short: QMP's unix socket path
    try:
        lines = asyncio.run(bench(root, args))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
