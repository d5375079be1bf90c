"""kvm.blockbackup with real QEMU (TCG, firmware only): a running guest's disks copied as of one instant.

Writes go through HMP ``qemu-io`` on the guest's drives, as in test_kvm_blockmirror.py; the copies are read
back with qemu-img once QEMU has closed them.
"""

import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass

import pytest
from conftest import read_image_mib

from kvm.blockbackup import BackupError, BackupTarget, backup_disks
from kvm.cmdline import DiskSpec, InstanceSpec
from kvm.hvparams import HvParams
from kvm.process import QemuManager
from kvm.qmp import Qmp

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

MIB = 2**20
DISK_MIB = 48


@dataclass
class Guest:
    socket: str  # its QMP: one session per command, as the copy's (QEMU serves one client at a time)
    disks: list[str]

    def connect(self) -> Awaitable[Qmp]:
        return Qmp.connect(self.socket, 10.0)

    async def execute(self, command: str, args: dict | None = None):
        async with await self.connect() as qmp:
            return await qmp.execute(command, args or {})

    async def write(self, index: int, pattern: int, offset_mib: int, mib: int = 1) -> None:
        out = await self.execute("human-monitor-command", {
            "command-line": f'qemu-io disk{index} "write -P {pattern} {offset_mib}M {mib}M"'})
        assert "failed" not in str(out).lower() and "error" not in str(out).lower(), out

    async def nodes(self) -> set[str]:
        return {n["node-name"] for n in await self.execute("query-named-block-nodes", {"flat": True})}


def make_raw(path: str, mib: int) -> None:
    with open(path, "wb") as f:
        f.truncate(mib * MIB)  # zeros: the firmware finds nothing to boot and waits


def make_target(path: str, mib: int) -> None:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", path, f"{mib}M"], check=True, timeout=30)


@pytest.fixture
async def guest(root: str, started: list[int]) -> AsyncIterator[Guest]:
    disks = [f"{root}/disk{i}.raw" for i in range(2)]
    for path in disks:
        make_raw(path, DISK_MIB)
    spec = InstanceSpec(name="vm1", uuid=str(uuid.uuid4()), memory_mib=64, vcpus=1,
                        hv=HvParams(accel="tcg", disk_bus="ide"),
                        disks=tuple(DiskSpec(p, "raw") for p in disks), nics=())
    manager = QemuManager(f"{root}/run", qmp_timeout_s=5.0)
    started.append(await manager.start(spec))
    yield Guest(manager.paths(spec.name).qmp_socket, disks)


async def test_every_disk_is_copied_as_it_was_when_the_copy_began_while_the_guest_goes_on_writing(guest, root):
    await guest.write(0, 0x11, 40)  # near the end: the paced jobs copy from the start, taking seconds to get there
    await guest.write(1, 0x33, 44)
    targets = [BackupTarget(i, f"{root}/copy{i}.qcow2") for i in range(2)]
    for t in targets:
        make_target(t.path, DISK_MIB)
    seen: list[tuple[int, int]] = []

    async def guest_writes_on() -> None:  # right after the jobs started: must not reach the copies
        assert (await guest.execute("query-status"))["status"] == "running", "the monitor is free during a copy"
        await guest.write(0, 0x22, 40)
        await guest.write(1, 0x44, 44)

    await backup_disks(guest.connect, targets, 60, progress=lambda done, total: seen.append((done, total)),
                       at_start=guest_writes_on, speed_bytes_s=16 * MIB)
    assert len(seen) >= 3 and seen[0][0] < seen[0][1], f"a paced copy shows its progress on the way: {seen}"
    assert seen and seen[-1] == (2 * DISK_MIB * MIB, 2 * DISK_MIB * MIB), seen[-3:]
    assert not {t.node for t in targets} & await guest.nodes(), "the targets stay open in QEMU"
    assert await guest.execute("query-jobs") == []
    assert await guest.execute("query-status") == {"status": "running", "singlestep": False, "running": True}
    assert read_image_mib(targets[0].path, "qcow2", 40) == bytes([0x11]) * MIB
    assert read_image_mib(targets[1].path, "qcow2", 44) == bytes([0x33]) * MIB
    assert read_image_mib(guest.disks[0], "raw", 40) == bytes([0x22]) * MIB, "the guest's own write was lost"
    assert read_image_mib(guest.disks[1], "raw", 44) == bytes([0x44]) * MIB, "the guest's own write was lost"


async def test_a_target_that_cannot_be_opened_fails_naming_the_disk_and_leaves_nothing_open(guest, root):
    good = BackupTarget(0, f"{root}/copy0.qcow2")
    make_target(good.path, DISK_MIB)
    missing = BackupTarget(1, f"{root}/no/such/dir/copy1.qcow2")
    with pytest.raises(BackupError, match="disk 1: blockdev-add"):
        await backup_disks(guest.connect, [good, missing], 30)
    assert good.node not in await guest.nodes()
    assert await guest.execute("query-jobs") == []


async def test_a_target_of_another_size_is_refused_before_any_copy(guest, root):
    small = BackupTarget(0, f"{root}/small.qcow2")
    make_target(small.path, DISK_MIB // 2)
    with pytest.raises(BackupError, match="did not start"):
        await backup_disks(guest.connect, [small], 30)
    assert small.node not in await guest.nodes()
    assert await guest.execute("query-jobs") == []


async def test_a_mirror_disk_s_copy_stays_sparse_though_its_quorum_reports_no_holes(root, started):
    """A `mirror` disk is a quorum (kvm.cmdline), which reports every block as data: the zeros the job copies
    must still not take space in the target."""
    source = f"{root}/mirror.raw"
    make_raw(source, DISK_MIB)
    spec = InstanceSpec(name="vm2", uuid=str(uuid.uuid4()), memory_mib=64, vcpus=1,
                        hv=HvParams(accel="tcg", disk_bus="ide"),
                        disks=(DiskSpec(source, "raw", replicated=True, size_bytes=DISK_MIB * MIB),), nics=())
    manager = QemuManager(f"{root}/run", qmp_timeout_s=5.0)
    started.append(await manager.start(spec))
    async with await Qmp.connect(manager.paths(spec.name).qmp_socket, 10.0) as qmp:
        out = await qmp.execute("human-monitor-command",
                                {"command-line": 'qemu-io -d disk0-dev "write -P 0x5a 8M 1M"'})
        assert "error" not in str(out).lower(), out
        target = BackupTarget(0, f"{root}/mirror-copy.qcow2")
        make_target(target.path, DISK_MIB)
    await backup_disks(lambda: Qmp.connect(manager.paths(spec.name).qmp_socket, 10.0), [target], 60)
    assert read_image_mib(target.path, "qcow2", 8) == bytes([0x5a]) * MIB
    used = os.stat(target.path).st_blocks * 512
    assert used < 8 * MIB, f"the copy of a 48 MiB disk holding 1 MiB takes {used >> 20} MiB"
