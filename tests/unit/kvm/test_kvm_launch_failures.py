"""Start failures that real QEMU cannot be made to produce on demand.

A stand-in executable plays a QEMU that hangs before daemonizing, or one
that claims success without leaving a process behind.
"""

import os
import stat
import time
import uuid

import pytest

from kvm.cmdline import InstanceSpec
from kvm.hvparams import HvParams
from kvm.process import QemuManager, QemuStartError, resolved_kernel


def fake_qemu(tmp_path, body: str) -> str:
    path = tmp_path / "fake-qemu"
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def spec() -> InstanceSpec:
    return InstanceSpec(name="vm1", uuid=str(uuid.uuid4()), memory_mib=64, vcpus=1,
                        hv=HvParams(accel="tcg"), disks=(), nics=())


async def test_qemu_that_never_daemonizes_is_killed_after_launch_timeout(tmp_path):
    mgr = QemuManager(str(tmp_path / "run"), qemu_binary=fake_qemu(tmp_path, "exec sleep 30"),
                      launch_timeout_s=0.5)
    began = time.monotonic()
    with pytest.raises(QemuStartError, match="did not daemonize within 0.5 s"):
        await mgr.start(spec())
    assert time.monotonic() - began < 5
    assert not os.path.exists(mgr.paths("vm1").instance_dir)


async def test_success_without_a_live_process_is_a_start_error(tmp_path):
    mgr = QemuManager(str(tmp_path / "run"), qemu_binary=fake_qemu(tmp_path, "exit 0"))
    with pytest.raises(QemuStartError, match="exited right after daemonizing"):
        await mgr.start(spec())
    assert mgr.find("vm1") is None


async def test_qemu_failure_carries_its_stderr(tmp_path):
    binary = fake_qemu(tmp_path, "echo 'qemu: could not open disk' >&2; exit 1")
    mgr = QemuManager(str(tmp_path / "run"), qemu_binary=binary)
    with pytest.raises(QemuStartError) as err:
        await mgr.start(spec())
    assert err.value.reason == "QEMU exited with status 1"
    assert err.value.stderr_tail == "qemu: could not open disk"
    assert "could not open disk" in str(err.value)


async def test_invalid_spec_is_a_start_error_listing_problems(tmp_path):
    mgr = QemuManager(str(tmp_path / "run"))
    bad = InstanceSpec(name="vm1", uuid="nope", memory_mib=64, vcpus=0,
                       hv=HvParams(accel="tcg"), disks=(), nics=())
    with pytest.raises(QemuStartError, match="not a UUID.*vcpus 0"):
        await mgr.start(bad)


async def test_qemu_starts_at_the_guest_niceness_given_not_at_the_callers(tmp_path):
    seen = tmp_path / "nice"
    binary = fake_qemu(tmp_path, f"awk '{{print $19}}' /proc/$$/stat > {seen}; exit 1")
    mgr = QemuManager(str(tmp_path / "run"), qemu_binary=binary, guest_nice=7)
    with pytest.raises(QemuStartError):
        await mgr.start(spec())
    assert seen.read_text().strip() == "7"
    assert os.getpriority(os.PRIO_PROCESS, 0) != 7, "only the child was reniced"


def kernel_spec(kernel: str, initrd: str = "") -> InstanceSpec:
    return InstanceSpec(name="vm1", uuid=str(uuid.uuid4()), memory_mib=64, vcpus=1,
                        hv=HvParams(accel="tcg", kernel_path=kernel, initrd_path=initrd), disks=(), nics=())


@pytest.mark.parametrize("where", ["outside", "symlink", "dotdot", "directory"])
async def test_a_kernel_outside_the_kernel_directories_never_reaches_qemu(tmp_path, where):
    """Checked on the node before every start, after resolving symlinks and '..': QEMU is not run."""
    kernels, secret = tmp_path / "kernels", tmp_path / "shadow"
    kernels.mkdir()
    secret.write_text("root:$6$secret")
    (kernels / "vmlinuz").write_text("kernel")
    (kernels / "link").symlink_to(secret)
    ran = tmp_path / "qemu-ran"
    path = {"outside": str(secret), "symlink": str(kernels / "link"), "dotdot": f"{kernels}/../shadow",
            "directory": str(kernels)}[where]
    mgr = QemuManager(str(tmp_path / "run"), qemu_binary=fake_qemu(tmp_path, f"touch {ran}; exit 1"),
                      kernel_dirs=[str(kernels)])
    with pytest.raises(QemuStartError, match="hypervisor parameter 'initrd_path'"):
        await mgr.start(kernel_spec(str(kernels / "vmlinuz"), path))
    assert not ran.exists()


def test_the_kernel_qemu_gets_is_the_resolved_file(tmp_path):
    real = tmp_path / "kernels" / "vmlinuz-6.1"
    real.parent.mkdir()
    real.write_text("kernel")
    (real.parent / "vmlinuz").symlink_to(real.name)
    spec = resolved_kernel(kernel_spec(str(real.parent / "vmlinuz")), [str(real.parent)])
    assert (spec.hv.kernel_path, spec.hv.initrd_path) == (str(real), "")
