"""Benchmark: backup export and import of a 1 GiB disk against qemu-img convert, and what a live export costs
the guest's writes.

A real one-node cluster (etcd, Serf, QEMU with TCG) in a temp dir; the instance's 1 GiB raw disk is filled
with incompressible data (zeros would be skipped by every copy), each copy reads a cold source.

a. `corral backup export` of the stopped instance (the job end to end: submit, copy, sync, rename), against
   `qemu-img convert -O qcow2` of the same disk and an fsync of the copy (what the export does, without
   Corral).
b. `corral backup import` of that backup as a new, stopped instance, against `qemu-img convert -O raw` of the
   backup's image and an fsync.
c. Writes through the running QEMU's block layer (HMP `qemu-io` on the drive, where a guest write enters), of
   areas the copy has not reached: MiB/s with no export, then while `corral backup export --live` runs (each
   first write to a block not yet copied waits for its old content to be copied: copy-before-write), at
   full speed and with --rate.

Prints figures and ratios only; the machine is shared and noisy. Usage:
.venv/bin/python bench/backup.py [--disk-mib 1024] [--write-mib 256] [--chunk-kib 1024] [--rate-mib-s 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))
from conftest import BIN, GUEST_DIR, AgentNode, wait_for  # noqa: E402  (the test suite's agent harness)
from mirror import MIB, drop_cache, random_file  # noqa: E402  (bench/mirror.py)
from kvm.qmp import Qmp  # noqa: E402

TIMEOUT_S = 600


def timed(argv: list[str], target: Path) -> float:
    """Seconds for the command and the fsync of what it wrote (a backup counts once it is on disk)."""
    began = time.monotonic()
    subprocess.run(argv, check=True, capture_output=True, timeout=TIMEOUT_S)
    fd = os.open(target, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return time.monotonic() - began


def corral_timed(node: AgentNode, *args: str) -> float:
    began = time.monotonic()
    node.ok(*args)
    return time.monotonic() - began


async def write_at_end(sock: str, disk_mib: int, pattern: int, total_mib: int, chunk_kib: int) -> float:
    """MiB/s of writes of `chunk_kib` through the drive into the last `total_mib` of the disk, which a copy
    going from the start reaches last. A QMP session per write: QEMU serves one monitor client at a time, and
    the export looks at its job through the same monitor."""
    chunk, start = chunk_kib * 1024, (disk_mib - total_mib) * MIB
    began = time.monotonic()
    for offset in range(start, disk_mib * MIB, chunk):
        async with await Qmp.connect(sock, 30) as qmp:
            await qmp.execute("human-monitor-command", {
                "command-line": f'qemu-io disk0 "write -P {pattern} {offset} {chunk}"'})
    return total_mib / (time.monotonic() - began)


async def during_export(node: AgentNode, name: str, sock: str, args: argparse.Namespace, pattern: int,
                        *options: str) -> tuple[float, float]:
    """MiB/s of writes during a live export with `options`, and how long that export took."""
    export = subprocess.Popen([str(BIN / "corral"), "backup", "export", name, "--live", *options],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "CORRAL_SOCKET": node.socket})
    began = time.monotonic()
    try:
        for _ in range(600):  # until QEMU runs the copy (bounded: 30 s)
            async with await Qmp.connect(sock, 30) as qmp:
                if await qmp.execute("query-jobs"):
                    break
            await asyncio.sleep(0.05)
        else:
            raise RuntimeError("the live export's copy did not start within 30 s")
        during = await write_at_end(sock, args.disk_mib, pattern, args.write_mib, args.chunk_kib)
        out, err = export.communicate(timeout=TIMEOUT_S)
    finally:
        if export.poll() is None:
            export.kill()
    if export.returncode != 0:
        raise RuntimeError(f"the live export failed: {err}")
    return during, time.monotonic() - began


async def live_writes(node: AgentNode, name: str, args: argparse.Namespace) -> list[str]:
    """(c): MiB/s of writes with no export, during a live export at full speed, and during one capped."""
    sock = str(next((node.root / "run").rglob(f"instances/{name}/qmp.sock")))
    idle = await write_at_end(sock, args.disk_mib, 0x11, args.write_mib, args.chunk_kib)
    full, full_s = await during_export(node, name, sock, args, 0x22)
    capped, capped_s = await during_export(node, name, sock, args, 0x33, "--rate", str(args.rate_mib_s))
    return [f"c. writes of {args.chunk_kib} KiB through HMP qemu-io, {args.write_mib} MiB a pass",
            f"   no export:                         {idle:7.1f} MiB/s",
            f"   during live export, full speed:    {full:7.1f} MiB/s   ratio {full / idle:.2f}  "
            f"(the export took {full_s:.1f} s)",
            f"   during live export, --rate {args.rate_mib_s:<4g}:   {capped:7.1f} MiB/s   ratio {capped / idle:.2f}  "
            f"(the export took {capped_s:.1f} s)"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--disk-mib", type=int, default=1024)
    parser.add_argument("--write-mib", type=int, default=256)
    parser.add_argument("--chunk-kib", type=int, default=1024)
    parser.add_argument("--rate-mib-s", type=float, default=64.0, help="the capped live export's --rate")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="corral-bench-backup-"))
    node = AgentNode(root / "n1")
    node.start()
    try:
        node.ok("cluster", "init", "--name", "bench", "--hv",
                f"accel=tcg,kernel_path={GUEST_DIR}/vmlinuz,initrd_path={GUEST_DIR}/initrd.img,kernel_args=quiet")
        node.ok("instance", "add", "bx", "--os", "busybox-guest", "--memory", "128M", "--disk",
                f"{args.disk_mib}M", "--no-start")
        disk = next((root / "n1" / "state" / "file-storage" / "bx").glob("disk0.*"))
        random_file(str(disk), args.disk_mib)

        drop_cache(str(disk))
        floor_export = timed(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(disk), str(root / "floor.qcow2")],
                             root / "floor.qcow2")
        drop_cache(str(disk))
        export = corral_timed(node, "backup", "export", "bx")
        backup = wait_for(lambda: node.json("backup", "list", "bx"), 30, "the backup in `backup list`")[0]
        image = Path(backup["path"]) / "disk0.qcow2"
        drop_cache(str(image))
        floor_import = timed(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(image), str(root / "floor.raw")],
                             root / "floor.raw")
        drop_cache(str(image))
        imported = corral_timed(node, "backup", "import", backup["ref"], "--name", "by", "--no-start")
        mib = args.disk_mib
        lines = [f"a. export of a stopped {mib} MiB disk: corral {export:.2f} s ({mib / export:.0f} MiB/s), "
                 f"qemu-img convert {floor_export:.2f} s ({mib / floor_export:.0f} MiB/s), ratio "
                 f"{export / floor_export:.2f}",
                 f"b. import as a new instance:        corral {imported:.2f} s ({mib / imported:.0f} MiB/s), "
                 f"qemu-img convert {floor_import:.2f} s ({mib / floor_import:.0f} MiB/s), ratio "
                 f"{imported / floor_import:.2f}"]
        node.ok("instance", "start", "bx")
        lines += asyncio.run(live_writes(node, "bx", args))
        print("\n".join(lines))
        print(json.dumps({"export_ratio": round(export / floor_export, 2),
                          "import_ratio": round(imported / floor_import, 2)}))
    finally:
        node.stop()
        node.kill_qemus()
    return 0


if __name__ == "__main__":
    sys.exit(main())
