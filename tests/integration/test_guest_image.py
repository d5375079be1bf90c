"""The test guest boots under real QEMU (TCG), counts its boots on its own
disk and powers off on ACPI request: the behaviour every VM-lifecycle test
relies on. Also covers the corral-guest OS definition's scripts."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from qemu.qmp import QMPClient

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "packaging" / "guest" / "build-guest.sh"
OS_DIR = REPO / "packaging" / "os" / "corral-guest"
OS_API_PATH = "/sbin:/bin:/usr/sbin:/usr/bin"
BUILD_TIMEOUT_S = 600.0
BOOT_TIMEOUT_S = 60.0
POWEROFF_TIMEOUT_S = 30.0
QMP_ACCEPT_TIMEOUT_S = 10.0
# The boot line goes on with what the guest sees (mem=, cpus=, disks=, nics=).
BOOTED = re.compile(r"^CORRAL-GUEST-BOOTED count=(\d+) mem=\d+M cpus=\d+ disks=\S* nics=\S*\r?$", re.MULTILINE)


def guest_dir() -> Path:
    return Path(os.environ.get("CORRAL_GUEST_DIR") or "/var/cache/corral/guest")


def run_build() -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BUILD_SCRIPT), str(guest_dir())],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
        check=False,
    )


@pytest.fixture(scope="module")
def image() -> Path:
    result = run_build()
    assert result.returncode == 0, f"build-guest.sh failed:\n{result.stderr}"
    return guest_dir()


@dataclass
class Guest:
    """A running QEMU guest: its process, QMP client and console log."""

    proc: asyncio.subprocess.Process
    qmp: QMPClient
    console: Path
    stderr: Path

    def console_text(self) -> str:
        return self.console.read_text(errors="replace") if self.console.exists() else ""

    def diagnostics(self) -> str:
        return f"console:\n{self.console_text()[-3000:]}\nqemu stderr:\n{self.stderr.read_text()[-2000:]}"

    async def wait_for_console(self, pattern: re.Pattern[str], timeout_s: float) -> re.Match[str]:
        """Poll the console log until pattern appears; QEMU writes it as the guest prints."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            match = pattern.search(self.console_text())
            if match:
                return match
            if self.proc.returncode is not None:
                break
            await asyncio.sleep(0.1)
        raise AssertionError(f"{pattern.pattern!r} not on the console within {timeout_s} s\n{self.diagnostics()}")

    async def power_off(self) -> None:
        """ACPI power button, as `corral stop` would press it; QEMU must exit by itself."""
        await self.qmp.execute("system_powerdown")
        try:
            await asyncio.wait_for(self.proc.wait(), POWEROFF_TIMEOUT_S)
        except TimeoutError:
            raise AssertionError(f"QEMU still running {POWEROFF_TIMEOUT_S} s after system_powerdown\n{self.diagnostics()}")
        assert self.proc.returncode == 0, self.diagnostics()

    def event_names(self) -> list[str]:
        return [event["event"] for event in self.qmp.events.history]


@contextlib.asynccontextmanager
async def boot(image: Path, workdir: Path, drive: str | None, append: str = "", devices: tuple[str, ...] = ()) -> AsyncIterator[Guest]:
    """Start QEMU/TCG on the guest kernel; QEMU dials our QMP server so no socket polling is needed."""
    qemu = shutil.which("qemu-system-x86_64")
    assert qemu, "qemu-system-x86_64 not found; install the Debian package qemu-system-x86"
    qmp_path = workdir / "qmp.sock"
    qmp_path.unlink(missing_ok=True)
    console = workdir / "console.log"
    console.unlink(missing_ok=True)
    stderr = workdir / "qemu.stderr"
    argv = [
        qemu, "-accel", "tcg", "-machine", "q35", "-m", "256", "-nodefaults", "-display", "none",
        "-kernel", str(image / "vmlinuz"), "-initrd", str(image / "initrd.img"),
        "-append", f"console=ttyS0 quiet {append}".strip(),
        "-serial", f"file:{console}", "-qmp", f"unix:{qmp_path}",
    ]  # fmt: skip
    if drive is not None:
        argv += ["-drive", drive]
    for device in devices:
        argv += ["-device", device]
    qmp = QMPClient("guest-test")
    await qmp.start_server(str(qmp_path))
    with stderr.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(*argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err)
    try:
        await asyncio.wait_for(qmp.accept(), QMP_ACCEPT_TIMEOUT_S)
        yield Guest(proc, qmp, console, stderr)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        # qemu.qmp re-raises the EOF of the socket QEMU closed on exit.
        with contextlib.suppress(EOFError):
            await qmp.disconnect()


def overlay(base: Path, path: Path) -> Path:
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base), str(path)],
        check=True,
        timeout=30,
    )
    return path


def run_os_script(name: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run an OS-definition script the way the OS API does: clean env, API version 20."""
    return subprocess.run(
        [str(OS_DIR / name), *args],
        env={"PATH": OS_API_PATH, "OS_API_VERSION": "20", "INSTANCE_NAME": "guest1", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.timeout(660)  # its bounded waits add up to 600 s
def test_rebuild_with_unchanged_inputs_is_a_quick_cache_hit(image: Path) -> None:
    started = time.monotonic()
    result = run_build()
    elapsed_s = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert "guest image up to date" in result.stdout
    assert elapsed_s < 10.0
    assert sorted(p.name for p in image.iterdir()) == ["STAMP", "base.qcow2", "initrd.img", "vmlinuz"]


async def test_guest_counts_boots_on_its_disk_and_honours_acpi_powerdown(image: Path, tmp_path: Path) -> None:
    disk = overlay(image / "base.qcow2", tmp_path / "disk.qcow2")
    drive = f"file={disk},if=virtio,format=qcow2"
    for expected_count in (1, 2):
        async with boot(image, tmp_path, drive) as guest:
            match = await guest.wait_for_console(BOOTED, BOOT_TIMEOUT_S)
            assert int(match.group(1)) == expected_count
            await guest.power_off()
            assert "CORRAL-GUEST-POWEROFF" in guest.console_text()


@pytest.mark.parametrize("filesystem", ["ext4", "ext2"])
async def test_os_create_makes_a_disk_the_guest_boots_from(image: Path, tmp_path: Path, filesystem: str) -> None:
    disk = tmp_path / "disk0.raw"
    disk.write_bytes(b"")
    os.truncate(disk, 32 * 1024 * 1024)
    created = run_os_script("create", {"DISK_COUNT": "1", "DISK_0_PATH": str(disk), "OSP_FILESYSTEM": filesystem})
    assert created.returncode == 0, created.stderr
    async with boot(image, tmp_path, f"file={disk},if=virtio,format=raw") as guest:
        match = await guest.wait_for_console(BOOTED, BOOT_TIMEOUT_S)
        assert match.group(1) == "1"
        await guest.power_off()


async def test_guest_without_disk_reports_it_and_still_powers_off(image: Path, tmp_path: Path) -> None:
    async with boot(image, tmp_path, drive=None) as guest:
        await guest.wait_for_console(re.compile(r"^CORRAL-GUEST-NODISK\r?$", re.MULTILINE), BOOT_TIMEOUT_S)
        await guest.power_off()
        assert "CORRAL-GUEST-POWEROFF" in guest.console_text()


async def test_panic_argument_crashes_the_guest_after_the_marker(image: Path, tmp_path: Path) -> None:
    disk = overlay(image / "base.qcow2", tmp_path / "disk.qcow2")
    drive = f"file={disk},if=virtio,format=qcow2"
    async with boot(image, tmp_path, drive, append="corral.panic=1", devices=("pvpanic",)) as guest:
        await guest.wait_for_console(BOOTED, BOOT_TIMEOUT_S)
        # pvpanic reports the crash; QEMU's default panic action then shuts down.
        await asyncio.wait_for(guest.proc.wait(), POWEROFF_TIMEOUT_S)
        assert "GUEST_PANICKED" in guest.event_names()
        assert "Kernel panic" in guest.console_text()


def test_os_create_refuses_an_unknown_filesystem(tmp_path: Path) -> None:
    disk = tmp_path / "disk0.raw"
    disk.write_bytes(b"\0" * 1024 * 1024)
    result = run_os_script("create", {"DISK_COUNT": "1", "DISK_0_PATH": str(disk), "OSP_FILESYSTEM": "xfs"})
    assert result.returncode != 0
    assert "'xfs' is not supported" in result.stderr


def test_os_create_fails_clearly_when_the_disk_is_missing(tmp_path: Path) -> None:
    result = run_os_script("create", {"DISK_COUNT": "1", "DISK_0_PATH": str(tmp_path / "absent.raw")})
    assert result.returncode != 0
    assert "mke2fs -t ext4 failed" in result.stderr


def test_os_verify_accepts_only_ext2_and_ext4() -> None:
    verdicts = {
        fs: run_os_script("verify", {"OSP_FILESYSTEM": fs}, "parameters").returncode for fs in ("ext2", "ext4", "btrfs")
    }
    assert verdicts == {"ext2": 0, "ext4": 0, "btrfs": 1}


def test_os_export_then_import_copies_the_disk(tmp_path: Path) -> None:
    source = tmp_path / "source.raw"
    source.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    target = tmp_path / "target.raw"
    exported = subprocess.run(
        [str(OS_DIR / "export")],
        env={"PATH": OS_API_PATH, "OS_API_VERSION": "20", "EXPORT_INDEX": "0", "EXPORT_DEVICE": str(source)},
        capture_output=True,
        timeout=60,
        check=True,
    )
    subprocess.run(
        [str(OS_DIR / "import")],
        input=exported.stdout,
        env={"PATH": OS_API_PATH, "OS_API_VERSION": "20", "IMPORT_INDEX": "0", "IMPORT_DEVICE": str(target)},
        capture_output=True,
        timeout=60,
        check=True,
    )
    assert target.read_bytes() == source.read_bytes()


def test_os_definition_declares_api_20_and_its_scripts() -> None:
    assert (OS_DIR / "ganeti_api_version").read_text().split() == ["20"]
    assert (OS_DIR / "variants.list").read_text().split() == ["default"]
    for script in ("create", "import", "export", "rename", "verify"):
        assert os.access(OS_DIR / script, os.X_OK), script
    assert run_os_script("rename", {"OLD_INSTANCE_NAME": "guest0"}).returncode == 0


@pytest.mark.timeout(420)  # its bounded waits add up to 350 s
async def test_seq_mode_keeps_every_printed_number_on_the_disk_across_a_kill(image: Path, tmp_path: Path) -> None:
    """corral.seq=1 syncs each number before printing it: the disk never lags the console."""
    disk = tmp_path / "disk.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(image / "base.qcow2"), str(disk)], check=True, timeout=60)
    seq = re.compile(r"^CORRAL-GUEST-SEQ n=(\d+)\r?$", re.MULTILINE)
    async with boot(image, tmp_path, f"file={disk},if=virtio,format=raw,cache=none", append="corral.seq=1") as guest:
        await guest.wait_for_console(re.compile(r"^CORRAL-GUEST-SEQ n=10\r?$", re.MULTILINE), BOOT_TIMEOUT_S)
        guest.proc.kill()  # no shutdown: like a node losing power
        await guest.proc.wait()
        printed = max(int(n) for n in seq.findall(guest.console_text()))

    # The synced writes may still sit in the ext4 journal: replay it, as the next mount would.
    fsck = subprocess.run(["e2fsck", "-f", "-y", str(disk)], capture_output=True, text=True, timeout=60)
    assert fsck.returncode in (0, 1), fsck.stdout + fsck.stderr

    def slot(name: str) -> int:
        out = subprocess.run(["debugfs", "-R", f"cat /{name}", str(disk)], capture_output=True, text=True, timeout=30)
        return int(out.stdout.strip() or 0)

    on_disk = max(slot("seq.a"), slot("seq.b"))
    assert on_disk >= printed, f"disk holds {on_disk}, console showed {printed}"
    async with boot(image, tmp_path, f"file={disk},if=virtio,format=raw", append="corral.seq=1") as guest:
        match = await guest.wait_for_console(re.compile(r"CORRAL-GUEST-SEQ-START last=(\d+)"), BOOT_TIMEOUT_S)
        assert int(match.group(1)) == on_disk  # counting resumes where the disk says
        await guest.power_off()


@pytest.mark.timeout(1200)  # its bounded waits add up to 1120 s
async def test_seq_mode_prints_no_number_the_disk_lacks_across_an_acpi_power_off(image: Path, tmp_path: Path) -> None:
    """The power button unmounts /mnt while the seq loop still runs. The loop once wrote
    /mnt/seq.* after the umount, into the initramfs directory under the mount point, and
    printed a number that was never on the disk. The window is narrow, so the button is
    pressed at several points of the loop's 100 ms cycle."""
    seq = re.compile(r"^CORRAL-GUEST-SEQ n=(\d+)\r?$", re.MULTILINE)
    for attempt, delay_s in enumerate((0.0, 0.03, 0.06, 0.09)):
        disk = tmp_path / f"disk{attempt}.raw"
        subprocess.run(["qemu-img", "convert", "-O", "raw", str(image / "base.qcow2"), str(disk)], check=True, timeout=60)
        async with boot(image, tmp_path, f"file={disk},if=virtio,format=raw,cache=none", append="corral.seq=1") as guest:
            await guest.wait_for_console(re.compile(r"^CORRAL-GUEST-SEQ n=10\r?$", re.MULTILINE), BOOT_TIMEOUT_S)
            for _ in range(100):  # bounded: a number every ~0.1 s; press relative to the newest print
                if "CORRAL-GUEST-SEQ n=11" in guest.console_text():
                    break
                await asyncio.sleep(0.005)
            await asyncio.sleep(delay_s)
            await guest.power_off()
            printed = max(int(n) for n in seq.findall(guest.console_text()))

        # A failed read-only remount leaves the journal to replay, as the next mount would.
        fsck = subprocess.run(["e2fsck", "-f", "-y", str(disk)], capture_output=True, text=True, timeout=60)
        assert fsck.returncode in (0, 1), fsck.stdout + fsck.stderr
        slots = [
            subprocess.run(["debugfs", "-R", f"cat /{name}", str(disk)], capture_output=True, text=True, timeout=30)
            .stdout.strip() or "0"
            for name in ("seq.a", "seq.b")
        ]
        on_disk = max(int(s) for s in slots)
        assert on_disk >= printed, f"power-off {attempt}: disk holds {on_disk}, console showed {printed}"
