"""The `mirror` template's data path with real QEMU (TCG) and qemu-storage-daemon.

The primary's replicated disk is a quorum of its image and a sink, into
which the mirrored copy joins (kvm.blockmirror). In the firmware-only rig,
writes are made with HMP ``qemu-io`` on the quorum node (QEMU's main loop:
only where the write cannot hang). The tests of a lost secondary boot the
test guest and write with ``dd`` from its console: there the guest's own
device holds the write and QEMU pauses the guest.
"""

import asyncio
import os
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import GUEST_DIR, free_port, is_gone, wait_until
from test_kvm_nbdexport import Pki, export_spec, make_pki

from kvm import blockresync
from kvm.blockmirror import (
    MIB,
    MirrorState,
    add_nbd_target,
    break_target,
    join_peer,
    leave_peer,
    mirror_state,
    peer_state,
    remove_nbd_target,
    start_mirror,
    stop_mirror,
)
from kvm.cmdline import DiskSpec, InstanceSpec
from kvm.console import attach
from kvm.hvparams import HvParams
from kvm.nbdexport import NbdExportSpec, export_pid, start_export
from kvm.process import QemuManager
from kvm.qmp import Qmp

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

DISK_MIB = 32
JOB = "mirror-disk1"
TARGET = "mirror-target1"
CREDS = "mirror-tls1"
RESYNC_JOB = "resync-disk1"


@dataclass
class Rig:
    """One primary QEMU (QMP held open) and the secondary's export of the copy."""

    root: str
    qmp: Qmp
    source: str
    copy: str
    export: NbdExportSpec
    pki: Pki
    device: str
    started: list[int]

    async def attach_and_mirror(self) -> list[str]:
        await add_nbd_target(self.qmp, TARGET, "127.0.0.1", self.export.port,
                             self.export.export_name, CREDS, self.pki.client_dirs["n1"])
        await start_mirror(self.qmp, self.device, TARGET, JOB)
        seen, state = await wait_state(self.qmp, "converged", 30)
        assert state.status == "converged", seen
        return seen

    async def join(self) -> float:
        """Mirror, then join the copy to the quorum; the guest's pause in seconds."""
        await self.attach_and_mirror()
        pause = await join_peer(self.qmp, self.index, JOB, TARGET)
        assert pause is not None
        assert (await peer_state(self.qmp, self.index, TARGET)).joined
        return pause

    @property
    def index(self) -> int:
        return int(self.device.removeprefix("disk"))

    async def write(self, pattern: int, offset_mib: int, mib: int = 1) -> float:
        """A write through the drive (and so through the mirror); returns its duration."""
        began = time.monotonic()
        out = await self.qmp.execute("human-monitor-command", {
            "command-line": f'qemu-io -d {self.device}-dev "write -P {pattern} {offset_mib}M {mib}M"'})
        assert "failed" not in str(out).lower() and "error" not in str(out).lower(), out
        return time.monotonic() - began

    async def restart_export(self) -> None:
        """The secondary comes back at the same address."""
        self.started.append(await start_export(self.export))

    def copies_identical(self) -> bool:
        result = subprocess.run(["qemu-img", "compare", "-U", "-f", "raw", "-F", "raw",
                                 self.source, self.copy], capture_output=True, text=True,
                                timeout=30)
        return result.returncode == 0

    def export_signal(self, signum: int) -> None:
        pid = export_pid(self.export.pidfile)
        assert pid is not None, "the export is not running"
        os.kill(pid, signum)
        if signum == signal.SIGKILL:
            assert wait_until(lambda: is_gone(pid), timeout_s=5)


async def wait_state(qmp: Qmp, wanted: str, timeout_s: float, stall_after_s: float = 1.0,
                     interval_s: float = 0.2) -> tuple[list[str], MirrorState]:
    """Sample (bounded) until the status is ``wanted``; the statuses seen and the last state."""
    deadline = time.monotonic() + timeout_s
    state = await mirror_state(qmp, JOB, stall_after_s=stall_after_s)
    seen = [state.status]
    for _ in range(int(timeout_s / interval_s) + 1):
        if state.status == wanted or time.monotonic() >= deadline:
            break
        await asyncio.sleep(interval_s)
        state = await mirror_state(qmp, JOB, state, stall_after_s=stall_after_s)
        if state.status != seen[-1]:
            seen.append(state.status)
    return seen, state


def make_disk(path: str, mib: int, random_from_mib: int | None) -> None:
    """A raw disk: zeros (so the firmware finds nothing to boot), random data after."""
    with open(path, "wb") as f:
        f.truncate(mib * 1024 * 1024)
        if random_from_mib is not None:
            f.seek(random_from_mib * 1024 * 1024)
            f.write(os.urandom((mib - random_from_mib) * 1024 * 1024))


async def start_rig(root: str, started: list[int], spec: InstanceSpec, source: str,
                    device: str) -> AsyncIterator[Rig]:
    manager = QemuManager(f"{root}/run", qmp_timeout_s=5.0)
    started.append(await manager.start(spec))
    copy = f"{root}/copy.raw"
    make_disk(copy, DISK_MIB, None)
    pki = make_pki(Path(root) / "pki")
    export = export_spec(root, pki, copy, free_port())
    started.append(await start_export(export))
    async with await Qmp.connect(manager.paths(spec.name).qmp_socket, 10.0) as qmp:
        yield Rig(root, qmp, source, copy, export, pki, device, started)


@pytest.fixture
async def rig(root: str, started: list[int]) -> AsyncIterator[Rig]:
    """A firmware-only primary whose disk0 (random data) is to be mirrored."""
    source = f"{root}/source.raw"
    make_disk(source, DISK_MIB, random_from_mib=1)
    spec = InstanceSpec(name="vm1", uuid=str(uuid.uuid4()), memory_mib=64, vcpus=1,
                        hv=HvParams(accel="tcg", disk_bus="ide"),  # HMP qemu-io -d needs the device's own drive
                        disks=(DiskSpec(source, "raw", replicated=True, size_bytes=DISK_MIB * 2**20),), nics=())
    async for value in start_rig(root, started, spec, source, "disk0"):
        yield value


async def test_a_converged_copy_joins_the_quorum_and_then_takes_every_write(rig):
    seen = await rig.attach_and_mirror()
    assert seen[-1] == "converged"
    await start_mirror(rig.qmp, rig.device, TARGET, JOB)  # idempotent: the job keeps running
    assert not (await peer_state(rig.qmp, 0, TARGET)).joined, "converged is not joined"
    pause = await join_peer(rig.qmp, 0, JOB, TARGET)
    assert pause is not None and pause < 1.0
    assert (await mirror_state(rig.qmp, JOB)).status == "absent", "the job ended at the join"
    assert (await peer_state(rig.qmp, 0, TARGET)) .joined
    await rig.write(0x77, 2)
    await rig.write(0x78, 20, 3)
    assert rig.copies_identical()
    assert await leave_peer(rig.qmp, 0, TARGET, gentle=True) is True
    assert not (await peer_state(rig.qmp, 0, TARGET)).joined
    await rig.write(0x79, 4)
    assert not rig.copies_identical(), "after leaving, writes go to the local image (and the sink) only"


async def test_stopping_an_in_sync_mirror_leaves_a_complete_copy_and_detaches(rig):
    await rig.attach_and_mirror()
    await rig.write(0x42, 5)
    assert await stop_mirror(rig.qmp, JOB, TARGET) is True
    assert (await mirror_state(rig.qmp, JOB)).status == "absent"
    assert await stop_mirror(rig.qmp, JOB, TARGET) is False  # idempotent
    await remove_nbd_target(rig.qmp, TARGET, CREDS)
    await remove_nbd_target(rig.qmp, TARGET, CREDS)
    nodes = await rig.qmp.execute("query-named-block-nodes", {"flat": True})
    assert TARGET not in {n["node-name"] for n in nodes}
    assert rig.copies_identical()


async def test_a_killed_secondary_during_the_copy_degrades_and_resyncs_on_return(rig):
    await rig.attach_and_mirror()
    rig.export_signal(signal.SIGKILL)
    write_s = await rig.write(0x99, 3, 2)
    assert write_s < 1.0, "while the copy is being made, writes complete on the local copy"
    seen, state = await wait_state(rig.qmp, "degraded", 10)
    assert state.status == "degraded", seen
    assert state.ready and state.remaining_bytes >= 2 * 1024 * 1024
    assert (await rig.qmp.status()) == "running"

    await rig.restart_export()
    seen, state = await wait_state(rig.qmp, "converged", 20)
    assert state.status == "converged", seen
    assert rig.copies_identical()


async def test_stopping_a_degraded_mirror_does_not_block_qemu(rig):
    await rig.attach_and_mirror()
    rig.export_signal(signal.SIGKILL)
    await rig.write(0x31, 4)
    began = time.monotonic()
    assert await stop_mirror(rig.qmp, JOB, TARGET, timeout_s=10) is False
    assert time.monotonic() - began < 5
    await remove_nbd_target(rig.qmp, TARGET, CREDS)
    assert (await rig.qmp.status()) == "running"
    assert (await mirror_state(rig.qmp, JOB)).status == "absent"


class Console:
    """The guest's serial console, read into a buffer in the background."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.output = bytearray()
        self._task = asyncio.create_task(self._read(reader))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        while chunk := await reader.read(4096):
            self.output += chunk

    async def send(self, line: str) -> None:
        self.writer.write(line.encode() + b"\n")
        await self.writer.drain()

    async def wait_for(self, text: str, timeout_s: float) -> bool:
        for _ in range(int(timeout_s / 0.1) + 1):
            if text.encode() in self.output:
                return True
            await asyncio.sleep(0.1)
        return text.encode() in self.output

    async def close(self) -> None:
        self._task.cancel()
        self.writer.close()


@pytest.fixture
async def guest_rig(root: str, started: list[int]) -> AsyncIterator[tuple[Rig, Console]]:
    """The test guest with a second, mirrored disk (vdb), and its shell on the console."""
    overlay = f"{root}/boot.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(GUEST_DIR / "base.qcow2"),
                    "-F", "qcow2", overlay], check=True, timeout=30)
    source = f"{root}/source.raw"
    make_disk(source, DISK_MIB, None)
    hv = HvParams(accel="tcg", kernel_path=str(GUEST_DIR / "vmlinuz"),
                  initrd_path=str(GUEST_DIR / "initrd.img"), kernel_args="quiet")
    spec = InstanceSpec(name="guest1", uuid=str(uuid.uuid4()), memory_mib=256, vcpus=1, hv=hv,
                        disks=(DiskSpec(overlay, "qcow2"),
                               DiskSpec(source, "raw", replicated=True, size_bytes=DISK_MIB * 2**20)), nics=())
    async for rig in start_rig(root, started, spec, source, "disk1"):
        console = Console(*await attach(f"{root}/run/instances/guest1/console.sock"))
        try:
            assert await console.wait_for("CORRAL-GUEST-BOOTED", 40), console.output[-500:]
            for _ in range(40):
                await console.send("echo READY-$((40+2))")
                if await console.wait_for("READY-42", 0.5):
                    break
            yield rig, console
        finally:
            await console.close()


async def test_hung_secondary_stalls_guest_writes_until_the_target_is_broken(guest_rig):
    rig, console = guest_rig
    await rig.attach_and_mirror()
    rig.export_signal(signal.SIGSTOP)  # a hung node: the connection stays open, nothing answers
    await console.send("dd if=/dev/urandom of=/dev/vdb bs=64k count=16 conv=fsync; echo DD-$?")
    seen, state = await wait_state(rig.qmp, "stalled", 10)
    assert state.status == "stalled", seen
    assert not await console.wait_for("DD-0", 1), "the guest write should wait for the secondary"
    assert (await rig.qmp.status()) == "running", "QMP keeps answering during the stall"

    began = time.monotonic()
    assert await break_target(rig.qmp, TARGET) is True
    assert await console.wait_for("DD-0", 10), console.output[-300:]
    assert time.monotonic() - began < 5
    seen, state = await wait_state(rig.qmp, "degraded", 10)
    assert state.status == "degraded", seen

    rig.export_signal(signal.SIGCONT)
    await asyncio.sleep(1.5)
    still = await mirror_state(rig.qmp, JOB)
    assert still.remaining_bytes > 0, "a broken target does not reconnect by itself"
    assert await stop_mirror(rig.qmp, JOB, TARGET, timeout_s=10) is False
    await remove_nbd_target(rig.qmp, TARGET, CREDS)


async def test_a_joined_copy_that_dies_holds_the_guest_s_write_until_it_is_dropped(guest_rig):
    """The promise: a write the secondary lacks is not acknowledged until the copy leaves the quorum
    (which the agent does only once the master recorded it out of date)."""
    rig, console = guest_rig
    await rig.join()
    rig.export_signal(signal.SIGKILL)
    await console.send("dd if=/dev/urandom of=/dev/vdb bs=64k count=16 conv=fsync; echo DD-$?")
    for _ in range(50):
        if await rig.qmp.status() == "io-error":
            break
        await asyncio.sleep(0.1)
    assert await rig.qmp.status() == "io-error", "QEMU pauses the guest on the failed write"
    assert (await peer_state(rig.qmp, 1, TARGET)).blocked
    assert not await console.wait_for("DD-0", 2), "the guest must not see its write done"
    began = time.monotonic()
    assert await leave_peer(rig.qmp, 1, TARGET) is True
    await rig.qmp.execute("cont")
    assert await console.wait_for("DD-0", 10), console.output[-300:]
    assert time.monotonic() - began < 5
    assert (await rig.qmp.status()) == "running"
    assert not (await peer_state(rig.qmp, 1, TARGET)).joined


async def test_a_joined_copy_that_hangs_holds_writes_and_a_yank_turns_it_into_a_pause(guest_rig):
    rig, console = guest_rig
    await rig.join()
    rig.export_signal(signal.SIGSTOP)
    try:
        await console.send("dd if=/dev/urandom of=/dev/vdb bs=64k count=16 conv=fsync; echo DD-$?")
        assert not await console.wait_for("DD-0", 2), "the write waits for the hung secondary"
        assert (await rig.qmp.status()) == "running", "QMP answers; the guest runs, its write waits"
        assert await break_target(rig.qmp, TARGET) is True
        for _ in range(50):
            if await rig.qmp.status() == "io-error":
                break
            await asyncio.sleep(0.1)
        assert await rig.qmp.status() == "io-error"
        assert not await console.wait_for("DD-0", 1)
        assert await leave_peer(rig.qmp, 1, TARGET) is True
        await rig.qmp.execute("cont")
        assert await console.wait_for("DD-0", 10), console.output[-300:]
    finally:
        rig.export_signal(signal.SIGCONT)


async def one_round(rig: Rig, copy_id: str) -> blockresync.Round:
    """Copy what is recorded for `copy_id` once; the round's end (bounded wait)."""
    await blockresync.start_round(rig.qmp, 0, copy_id, TARGET, RESYNC_JOB)
    state = await blockresync.round_state(rig.qmp, RESYNC_JOB)
    for _ in range(200):
        if state.status != "running":
            break
        await asyncio.sleep(0.05)
        state = await blockresync.round_state(rig.qmp, RESYNC_JOB)
    return state


async def resync(rig: Rig, copy_id: str, rounds: int = 20) -> tuple[int, float | None]:
    """Incremental rounds until little is left, then the paused last one; (bytes copied, pause)."""
    copied = 0
    for _ in range(rounds):
        left = (await blockresync.tracked(rig.qmp, 0))[copy_id]
        if left <= 1024 * 1024:
            break
        state = await one_round(rig, copy_id)
        assert state.status == "done", state
        copied += state.length_bytes
    copied += (await blockresync.tracked(rig.qmp, 0))[copy_id]
    return copied, await blockresync.finish(rig.qmp, 0, copy_id, TARGET, RESYNC_JOB, timeout_s=10)


async def test_a_copy_back_from_an_outage_gets_only_the_blocks_written_meanwhile(rig):
    await rig.join()
    assert await blockresync.track(rig.qmp, 0, "c1") is True
    assert await blockresync.track(rig.qmp, 0, "c1") is False, "idempotent"
    assert await leave_peer(rig.qmp, 0, TARGET) is True
    await remove_nbd_target(rig.qmp, TARGET, CREDS)
    rig.export_signal(signal.SIGKILL)
    await rig.write(0x51, 3, 2)
    await rig.write(0x52, 20, 1)
    assert (await blockresync.tracked(rig.qmp, 0)) == {"c1": 3 * MIB}
    assert not rig.copies_identical()

    await rig.restart_export()
    await add_nbd_target(rig.qmp, TARGET, "127.0.0.1", rig.export.port, rig.export.export_name, CREDS,
                         rig.pki.client_dirs["n1"])
    copied, pause = await resync(rig, "c1")
    assert copied == 3 * MIB, "only what was written while the copy was away"
    assert pause is not None and pause < 1.0
    assert (await peer_state(rig.qmp, 0, TARGET)).joined
    assert await blockresync.tracked(rig.qmp, 0) == {}, "the record goes once the copy is back"
    await rig.write(0x53, 7)
    assert rig.copies_identical()


async def test_a_resync_round_that_fails_keeps_every_block_for_the_next(rig):
    await rig.join()
    await blockresync.track(rig.qmp, 0, "c2")
    await leave_peer(rig.qmp, 0, TARGET)
    await remove_nbd_target(rig.qmp, TARGET, CREDS)
    await rig.write(0x61, 2, 8)
    await add_nbd_target(rig.qmp, TARGET, "127.0.0.1", rig.export.port, rig.export.export_name, CREDS,
                         rig.pki.client_dirs["n1"])
    rig.export_signal(signal.SIGKILL)
    state = await one_round(rig, "c2")
    assert state.status == "failed" and state.error, state
    assert (await blockresync.tracked(rig.qmp, 0))["c2"] >= 8 * MIB
    assert await blockresync.finish(rig.qmp, 0, "c2", TARGET, RESYNC_JOB, timeout_s=5) is None
    assert await rig.qmp.status() == "running", "a failed last round resumes the guest"
    assert not (await peer_state(rig.qmp, 0, TARGET)).joined
    assert (await blockresync.tracked(rig.qmp, 0))["c2"] >= 8 * MIB
