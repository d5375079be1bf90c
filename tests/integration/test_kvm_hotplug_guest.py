"""Disks and NICs hot-plugged into the real test guest (QEMU TCG): the guest itself prints what it sees
(corral.watch=1), and a cold start with the same disks and NICs gives them the same names."""

import dataclasses
import re
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator

import psutil
import pytest

from conftest import GUEST_DIR, is_gone, wait_until

from kvm import hotplug
from kvm.cmdline import DiskSpec, InstanceSpec, NicSpec
from kvm.hvparams import HvParams
from kvm.process import QemuManager
from kvm.qmp import Qmp

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]  # eight console waits of 60 s, two stops of 30 s
MACS = ("52:54:00:00:00:01", "52:54:00:00:00:02")


@pytest.fixture
async def manager() -> AsyncIterator[QemuManager]:
    """QEMUs SIGKILLed by pid at teardown if still running."""
    with tempfile.TemporaryDirectory(prefix="chp-", dir="/tmp") as run_dir:
        mgr = QemuManager(run_dir, qmp_timeout_s=5.0)
        yield mgr
        for pid in mgr.discover().values():
            try:
                psutil.Process(pid).kill()
            except psutil.Error:
                continue
            wait_until(lambda: is_gone(pid), 5)


def guest(mgr: QemuManager, machine: str, disks: int, nics: int) -> InstanceSpec:
    """The test guest with its boot disk, `disks - 1` blank ones and `nics` user NICs."""
    images = []
    for i in range(disks):
        path = f"{mgr.run_dir}/disk{i}.{'qcow2' if i == 0 else 'raw'}"
        argv = ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(GUEST_DIR / "base.qcow2"), "-F", "qcow2", path] \
            if i == 0 else ["qemu-img", "create", "-q", "-f", "raw", path, "16M"]
        subprocess.run(argv, check=True, timeout=30, capture_output=True)
        images.append(DiskSpec(path, "qcow2" if i == 0 else "raw"))
    hv = HvParams(accel="tcg", machine=machine, kernel_path=str(GUEST_DIR / "vmlinuz"),
                  initrd_path=str(GUEST_DIR / "initrd.img"), kernel_args="quiet corral.watch=1")
    return InstanceSpec(name="hp1", uuid=str(uuid.uuid4()), memory_mib=256, vcpus=2, hv=hv, disks=tuple(images),
                        nics=tuple(NicSpec(mac, "user") for mac in MACS[:nics]))


def console(mgr: QemuManager) -> str:
    return "\n".join(mgr.console_log_tail("hp1", 400))


def printed(mgr: QemuManager, pattern: str, timeout_s: float = 60) -> re.Match[str]:
    found: list[re.Match[str]] = []

    def seen() -> bool:
        found[:] = list(re.finditer(pattern, console(mgr)))
        return bool(found)
    assert wait_until(seen, timeout_s, 0.2), f"{pattern!r} not printed; console:\n{console(mgr)[-2000:]}"
    return found[-1]


@pytest.mark.parametrize("machine", ["q35", "pc"])
async def test_the_guest_sees_a_disk_and_a_nic_come_and_go_and_keeps_their_names_at_a_cold_start(manager, machine):
    full = guest(manager, machine, disks=2, nics=2)
    running = dataclasses.replace(full, disks=full.disks[:1], nics=full.nics[:1])
    await manager.start(running)
    printed(manager, rf"CORRAL-GUEST-BOOTED count=1 mem=256M cpus=2 disks=vda nics={MACS[0]}\s")
    printed(manager, "CORRAL-GUEST-WATCHING")

    qmp_socket = manager.paths("hp1").qmp_socket
    async with await Qmp.connect(qmp_socket) as qmp:
        assert await hotplug.plug_disk(qmp, 1, full.disks[1], full.hv)
        assert await hotplug.plug_nic(qmp, 1, full.nics[1], full.hv)
        assert not await hotplug.plug_disk(qmp, 1, full.disks[1], full.hv)  # re-sent: nothing more
    printed(manager, "CORRAL-GUEST-DISK-ADDED vdb")
    printed(manager, f"CORRAL-GUEST-NIC-ADDED {MACS[1]}")

    async with await Qmp.connect(qmp_socket) as qmp:
        assert await hotplug.unplug_disk(qmp, 1)
        assert await hotplug.unplug_nic(qmp, 1)
        assert full.disks[1].path not in await hotplug.open_images(qmp)
    printed(manager, "CORRAL-GUEST-DISK-REMOVED vdb")
    printed(manager, f"CORRAL-GUEST-NIC-REMOVED {MACS[1]}")

    async with await Qmp.connect(qmp_socket) as qmp:  # plugged again after a removal: the same names
        assert await hotplug.plug_disk(qmp, 1, full.disks[1], full.hv)
    printed(manager, "(?s)CORRAL-GUEST-DISK-REMOVED vdb.*CORRAL-GUEST-DISK-ADDED vdb")

    assert await manager.stop("hp1", timeout_s=30) == "acpi"
    await manager.start(full)
    printed(manager, rf"CORRAL-GUEST-BOOTED count=2 mem=256M cpus=2 disks=vda,vdb nics={MACS[0]},{MACS[1]}\s")
    assert await manager.stop("hp1", timeout_s=30) == "acpi"
