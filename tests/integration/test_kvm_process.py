"""QemuManager against real QEMU (TCG), booting only the firmware.

With no kernel and no disk, SeaBIOS prints "No bootable device." on the
serial console and idles; it ignores ACPI power-off, which is exactly what
the hard-stop fallback needs.
"""

import asyncio
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import psutil
import pytest

from conftest import is_gone, wait_until

from kvm.cmdline import DiskSpec, InstanceSpec, NicSpec
from kvm.console import ConsoleError, attach
from kvm.hvparams import HvParams
from kvm.process import InstanceNotRunning, InstanceStillRunning, QemuManager, QemuStartError
from kvm.qmp import Qmp, QmpError

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def bare_spec(name: str, **hv_fields: object) -> InstanceSpec:
    hv = HvParams(**{"accel": "tcg", **hv_fields})  # type: ignore[arg-type]
    return InstanceSpec(name=name, uuid=str(uuid.uuid4()), memory_mib=64, vcpus=1, hv=hv,
                        disks=(), nics=())




@pytest.fixture
def run_dir() -> Iterator[str]:
    # Short path under /tmp: unix socket paths are limited to 107 bytes.
    path = tempfile.mkdtemp(prefix="ckvm-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def started(run_dir: str) -> Iterator[list[int]]:
    """Pids of QEMUs a test started; teardown SIGKILLs those still alive."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            if run_dir in " ".join(proc.cmdline()):
                proc.kill()
        except psutil.Error:
            continue
        wait_until(lambda: is_gone(pid), timeout_s=5)


@pytest.fixture
async def manager(run_dir: str, started: list[int]) -> AsyncIterator[QemuManager]:
    mgr = QemuManager(run_dir, qmp_timeout_s=2.0)
    yield mgr
    started.extend(mgr.discover().values())


async def start(mgr: QemuManager, started: list[int], spec: InstanceSpec) -> int:
    pid = await mgr.start(spec)
    started.append(pid)
    return pid


def runtime_files(mgr: QemuManager, name: str) -> list[str]:
    paths = mgr.paths(name)
    return [p for p in (paths.pidfile, paths.qmp_socket, paths.console_socket)
            if os.path.exists(p)]


async def test_started_instance_is_running_and_found(manager, started):
    pid = await start(manager, started, bare_spec("vm1"))
    assert await manager.status("vm1") == "running"
    assert manager.find("vm1") == pid
    assert manager.discover() == {"vm1": pid}
    assert psutil.Process(pid).name() == "corral-vm1"


async def test_second_start_returns_the_running_pid(manager, started):
    spec = bare_spec("vm1")
    pid = await start(manager, started, spec)
    assert await manager.start(spec) == pid
    assert manager.discover() == {"vm1": pid}


async def test_concurrent_starts_launch_one_qemu(manager, started):
    spec = bare_spec("vm1")
    pids = await asyncio.gather(manager.start(spec), manager.start(spec))
    started.extend(pids)
    assert pids[0] == pids[1]
    assert manager.discover() == {"vm1": pids[0]}


async def test_new_manager_finds_instances_left_running_by_previous_agent(run_dir, manager,
                                                                         started):
    pid1 = await start(manager, started, bare_spec("vm1"))
    pid2 = await start(manager, started, bare_spec("vm2"))
    successor = QemuManager(run_dir, qmp_timeout_s=2.0)
    assert successor.discover() == {"vm1": pid1, "vm2": pid2}
    assert await successor.status("vm2") == "running"
    assert await successor.stop("vm1", timeout_s=0.2, force=True) == "hard"
    assert successor.discover() == {"vm2": pid2}


async def test_firmware_output_is_logged_without_a_console_client(manager, started):
    await start(manager, started, bare_spec("vm1"))
    assert wait_until(lambda: "No bootable device." in manager.console_log_tail("vm1"))


async def test_reset_reboots_the_firmware(manager, started):
    pid = await start(manager, started, bare_spec("vm1"))
    assert wait_until(lambda: "No bootable device." in manager.console_log_tail("vm1"))
    await manager.reset("vm1")
    assert wait_until(lambda: sum("SeaBIOS" in line
                                  for line in manager.console_log_tail("vm1", 50)) == 2)
    assert manager.find("vm1") == pid
    assert await manager.status("vm1") == "running"


async def test_reset_of_stopped_instance_says_not_running(manager):
    with pytest.raises(InstanceNotRunning):
        await manager.reset("vm1")


async def test_stop_falls_back_to_hard_stop_when_guest_ignores_acpi(manager, started):
    pid = await start(manager, started, bare_spec("vm1"))
    began = time.monotonic()
    assert await manager.stop("vm1", timeout_s=1.0) == "hard"
    assert time.monotonic() - began >= 1.0
    assert is_gone(pid)
    assert manager.find("vm1") is None
    assert await manager.status("vm1") == "stopped"
    assert runtime_files(manager, "vm1") == []
    assert "SeaBIOS" in "\n".join(manager.console_log_tail("vm1"))


async def test_forced_stop_skips_acpi(manager, started):
    pid = await start(manager, started, bare_spec("vm1"))
    began = time.monotonic()
    assert await manager.stop("vm1", timeout_s=60, force=True) == "hard"
    assert time.monotonic() - began < 5
    assert is_gone(pid)
    assert runtime_files(manager, "vm1") == []


async def test_stop_of_stopped_instance_reports_not_running(manager):
    assert await manager.stop("vm1", timeout_s=1) == "not-running"


async def test_hung_qemu_has_unknown_status_and_is_killed(manager, started):
    pid = await start(manager, started, bare_spec("vm1"))
    os.kill(pid, signal.SIGSTOP)
    try:
        assert await manager.status("vm1") == "unknown"
        assert await manager.stop("vm1", timeout_s=0.5) == "hard"
        assert is_gone(pid)
    finally:
        if not is_gone(pid):
            os.kill(pid, signal.SIGCONT)


async def test_stale_pidfile_of_dead_process_is_not_trusted(manager, started):
    dead = subprocess.Popen(["true"])
    dead.wait(timeout=5)
    paths = manager.paths("vm1")
    os.makedirs(paths.instance_dir)
    with open(paths.pidfile, "w") as f:
        f.write(f"{dead.pid}\n")
    assert manager.find("vm1") is None
    assert await manager.status("vm1") == "stopped"
    pid = await start(manager, started, bare_spec("vm1"))
    assert pid != dead.pid
    assert manager.find("vm1") == pid


async def test_pidfile_naming_an_unrelated_process_is_not_trusted(manager):
    bystander = subprocess.Popen(["sleep", "30"])
    try:
        paths = manager.paths("vm1")
        os.makedirs(paths.instance_dir)
        with open(paths.pidfile, "w") as f:
            f.write(f"{bystander.pid}\n")
        assert manager.find("vm1") is None
        assert manager.discover() == {}
        assert await manager.stop("vm1", timeout_s=1, force=True) == "not-running"
        assert bystander.poll() is None
        assert not os.path.exists(paths.pidfile)
    finally:
        bystander.kill()
        bystander.wait(timeout=5)


async def test_failed_start_reports_qemu_error_and_leaves_no_files(manager, run_dir):
    spec = bare_spec("vm1")
    spec = InstanceSpec(**{**spec.__dict__, "disks": (DiskSpec(f"{run_dir}/missing.qcow2",
                                                              "qcow2"),)})
    with pytest.raises(QemuStartError) as err:
        await manager.start(spec)
    assert err.value.name == "vm1"
    assert "missing.qcow2" in err.value.stderr_tail
    assert runtime_files(manager, "vm1") == []
    assert manager.discover() == {}


async def test_missing_qemu_binary_is_a_start_error(run_dir):
    mgr = QemuManager(run_dir, qemu_binary="/nonexistent/qemu-system-x86_64")
    with pytest.raises(QemuStartError, match="install qemu-system-x86"):
        await mgr.start(bare_spec("vm1"))
    assert runtime_files(mgr, "vm1") == []


async def test_cleanup_refuses_to_remove_files_of_a_running_instance(manager, started):
    pid = await start(manager, started, bare_spec("vm1"))
    with pytest.raises(InstanceStillRunning):
        manager.cleanup("vm1")
    assert manager.find("vm1") == pid


async def test_vnc_is_a_unix_socket_in_the_root_only_instance_directory_and_no_tcp_port(manager, started):
    pid = await start(manager, started, bare_spec("vm1", vnc="localhost"))
    assert await manager.vnc_address("vm1") == "unix:" + manager.paths("vm1").vnc_socket
    assert [c for c in psutil.Process(pid).net_connections(kind="inet") if c.status == "LISTEN"] == []
    assert os.stat(manager.paths("vm1").instance_dir).st_mode & 0o077 == 0


async def test_no_vnc_address_without_vnc(manager, started):
    await start(manager, started, bare_spec("vm1"))
    assert await manager.vnc_address("vm1") is None


@pytest.mark.parametrize("hv_fields", [
    {"disk_bus": "virtio", "nic_model": "virtio", "disk_cache": "none"},
    {"disk_bus": "scsi", "nic_model": "e1000", "boot": "cdrom", "disk_cache": "writeback"},
    {"disk_bus": "ide", "nic_model": "rtl8139", "boot": "network", "machine": "pc"},
])
@pytest.mark.timeout(120)  # its bounded waits add up to 61 s
async def test_device_combinations_are_accepted_by_qemu(manager, started, run_dir, hv_fields):
    disk = f"{run_dir}/disk.qcow2"
    iso = f"{run_dir}/cd.iso"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", disk, "16M"], check=True,
                   timeout=30)
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", iso, "1M"], check=True, timeout=30)
    base = bare_spec("vm1", **hv_fields)
    spec = InstanceSpec(**{**base.__dict__,
                           "disks": (DiskSpec(disk, "qcow2"), DiskSpec(iso, "raw", "cdrom")),
                           "nics": (NicSpec("52:54:00:00:00:01", "user"),)})
    await start(manager, started, spec)
    assert await manager.status("vm1") == "running"
    assert await manager.stop("vm1", timeout_s=1, force=True) == "hard"


async def test_console_attach_receives_guest_output(manager, started):
    await start(manager, started, bare_spec("vm1"))
    # A reset during SeaBIOS's first moments can silence it; let it finish once.
    assert wait_until(lambda: "No bootable device." in manager.console_log_tail("vm1"))
    reader, writer = await attach(manager.paths("vm1").console_socket)
    try:
        await manager.reset("vm1")
        seen = b""
        deadline = time.monotonic() + 10
        for _ in range(10_000):  # the UART sends about one byte per read
            if b"No bootable device." in seen or time.monotonic() > deadline:
                break
            seen += await asyncio.wait_for(reader.read(4096), 10)
        assert b"SeaBIOS" in seen and b"No bootable device." in seen
    finally:
        writer.close()
        await writer.wait_closed()


async def test_console_attach_to_missing_socket_explains(run_dir):
    with pytest.raises(ConsoleError, match="is the instance running"):
        await attach(f"{run_dir}/none.sock")


async def test_qmp_errors_name_the_socket_and_keep_the_session(manager, started, run_dir):
    with pytest.raises(QmpError, match="cannot connect") as err:
        await Qmp.connect(f"{run_dir}/none.sock", timeout_s=1)
    assert err.value.socket_path == f"{run_dir}/none.sock"
    await start(manager, started, bare_spec("vm1"))
    async with await Qmp.connect(manager.paths("vm1").qmp_socket, timeout_s=2) as qmp:
        with pytest.raises(QmpError, match="no-such-command"):
            await qmp.execute("no-such-command")
        assert await qmp.status() == "running"


async def test_qmp_quit_ends_qemu_without_error(manager, started):
    pid = await start(manager, started, bare_spec("vm1"))
    async with await Qmp.connect(manager.paths("vm1").qmp_socket, timeout_s=2) as qmp:
        await qmp.quit()
    assert wait_until(lambda: is_gone(pid), timeout_s=5)
    assert await manager.status("vm1") == "stopped"


async def test_clients_taking_turns_on_the_monitor_all_get_through_and_no_qemu_fails_at_once(manager, started):
    """QEMU serves one monitor client at a time; the agent's reports, a copy's looks at its job and an order
    may ask at once. Each waits its turn (some were seen dropped at the handshake, and try again)."""
    await start(manager, started, bare_spec("vm1"))
    socket = manager.paths("vm1").qmp_socket

    async def turns(count: int) -> int:
        for _ in range(count):
            async with await Qmp.connect(socket, 10.0) as qmp:
                assert (await qmp.execute("query-status"))["status"] in ("running", "prelaunch")
        return count

    assert await asyncio.gather(*(turns(30) for _ in range(3))) == [30, 30, 30]
    began = time.monotonic()
    with pytest.raises(QmpError, match="No such file"):
        await Qmp.connect(f"{manager.paths('vm1').qmp_socket}.gone", 10.0)
    assert time.monotonic() - began < 1.0, "nothing to wait for when no QEMU listens"
