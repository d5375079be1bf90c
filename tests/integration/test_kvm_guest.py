"""QemuManager with a real Linux guest (kernel + busybox initramfs, TCG).

The guest is built by packaging/guest/build-guest.sh (`make guest`) into $CORRAL_GUEST_DIR. Its
init counts boots on its qcow2 disk, prints CORRAL-GUEST-BOOTED count=N on
the serial console and powers off on the ACPI power button; with
corral.panic=1 it crashes the kernel after the marker.
"""

import asyncio
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psutil
import pytest

from conftest import is_gone, wait_until

from kvm.cmdline import DiskSpec, InstanceSpec
from kvm.hvparams import HvParams
from kvm.process import QemuManager

GUEST_DIR = Path(os.environ.get("CORRAL_GUEST_DIR", "/var/cache/corral/guest"))

pytestmark = [pytest.mark.integration, pytest.mark.timeout(210)]  # a reboot test waits up to 150 s




async def wait_status(mgr: QemuManager, name: str, wanted: str, timeout_s: float) -> str:
    """Poll QMP status (bounded) until it is ``wanted``; returns the last one seen."""
    deadline = time.monotonic() + timeout_s
    status = ""
    for _ in range(int(timeout_s / 0.2) + 1):
        status = await mgr.status(name)
        if status == wanted or time.monotonic() >= deadline:
            break
        await asyncio.sleep(0.2)
    return status


@pytest.fixture
def run_dir() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="ckvm-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def manager(run_dir: str) -> AsyncIterator[QemuManager]:
    """A manager whose QEMUs are SIGKILLed by pid at teardown if still running."""
    mgr = QemuManager(run_dir, qmp_timeout_s=2.0)
    yield mgr
    for pid in mgr.discover().values():
        try:
            psutil.Process(pid).kill()
        except psutil.Error:
            continue
        wait_until(lambda: is_gone(pid), 5)


def guest_spec(run_dir: str, kernel_args: str) -> InstanceSpec:
    overlay = f"{run_dir}/disk0.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(GUEST_DIR / "base.qcow2"),
                    "-F", "qcow2", overlay], check=True, timeout=30)
    hv = HvParams(accel="tcg", kernel_path=str(GUEST_DIR / "vmlinuz"),
                  initrd_path=str(GUEST_DIR / "initrd.img"), kernel_args=kernel_args)
    return InstanceSpec(name="guest1", uuid=str(uuid.uuid4()), memory_mib=256, vcpus=1, hv=hv,
                        disks=(DiskSpec(overlay, "qcow2"),), nics=())


def console_has(mgr: QemuManager, text: str) -> bool:
    return any(text in line for line in mgr.console_log_tail("guest1", 200))


async def test_guest_boots_from_its_disk_and_obeys_acpi_power_off(manager, run_dir):
    pid = await manager.start(guest_spec(run_dir, "console=ttyS0"))
    assert wait_until(lambda: console_has(manager, "CORRAL-GUEST-BOOTED count=1"), 60)
    assert await manager.stop("guest1", timeout_s=30) == "acpi"
    assert manager.find("guest1") is None
    assert is_gone(pid)
    assert console_has(manager, "CORRAL-GUEST-POWEROFF")
    assert manager.discover() == {}


async def test_a_guest_stopped_while_it_boots_still_powers_off_by_acpi_without_waiting_out_the_timeout(manager,
                                                                                                   run_dir):
    """The first power-button press comes before the guest's kernel listens; a later press is obeyed."""
    pid = await manager.start(guest_spec(run_dir, "console=ttyS0"))
    began = time.monotonic()
    assert await manager.stop("guest1", timeout_s=90) == "acpi"
    assert time.monotonic() - began < 60, "not the whole timeout of a missed press"
    assert is_gone(pid)
    assert console_has(manager, "CORRAL-GUEST-BOOTED count=1") and console_has(manager, "CORRAL-GUEST-POWEROFF")


async def test_reset_reboots_the_guest_which_keeps_its_disk(manager, run_dir):
    await manager.start(guest_spec(run_dir, "console=ttyS0"))
    assert wait_until(lambda: console_has(manager, "CORRAL-GUEST-BOOTED count=1"), 60)
    await manager.reset("guest1")
    assert wait_until(lambda: console_has(manager, "CORRAL-GUEST-BOOTED count=2"), 60)
    assert await manager.stop("guest1", timeout_s=30) == "acpi"


async def test_panicked_guest_is_reported_and_stopped_without_waiting_for_acpi(manager,
                                                                               run_dir):
    await manager.start(guest_spec(run_dir, "console=ttyS0 corral.panic=1"))
    assert await wait_status(manager, "guest1", "guest-panicked", 60) == "guest-panicked"
    began = time.monotonic()
    assert await manager.stop("guest1", timeout_s=60) == "hard"
    assert time.monotonic() - began < 15
