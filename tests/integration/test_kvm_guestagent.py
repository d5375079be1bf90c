"""kvm.guestagent with real QEMU (TCG): the test guest's qemu-ga freezes and thaws its disk's file system, and a
guest with no agent is told apart within the short sync timeout, without hanging.

The test guest (packaging/guest, `make guest`) starts qemu-ga after its CORRAL-GUEST-BOOTED line, on the
channel kvm.cmdline gives every instance; its disk is mounted at /mnt, the file system qemu-ga freezes.
"""

import asyncio
import json
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kvm import guestagent
from kvm.cmdline import DiskSpec, InstanceSpec
from kvm.console import attach
from kvm.guestagent import SYNC_TIMEOUT_S, GuestAgentError, frozen
from kvm.hvparams import HvParams
from kvm.process import QemuManager
from kvm.qmp import Qmp

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

BOOT_TIMEOUT_S = 60.0
AGENT_TIMEOUT_S = 15.0  # from the boot line until qemu-ga answers
FREEZE_TIMEOUT_S = 10.0


def booted(manager: QemuManager, name: str) -> bool:
    return any("CORRAL-GUEST-BOOTED count=1" in line for line in manager.console_log_tail(name, 300))


async def wait_booted(manager: QemuManager, name: str) -> None:
    deadline = time.monotonic() + BOOT_TIMEOUT_S
    while not booted(manager, name):
        if time.monotonic() > deadline:
            tail = "\n".join(manager.console_log_tail(name, 30))
            raise AssertionError(f"no CORRAL-GUEST-BOOTED within {BOOT_TIMEOUT_S:g} s; console:\n{tail}")
        await asyncio.sleep(0.1)


async def console_shows(manager: QemuManager, name: str, text: str, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not any(text in line for line in manager.console_log_tail(name, 50)):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.1)
    return True


async def wait_agent(socket_path: str) -> None:
    deadline = time.monotonic() + AGENT_TIMEOUT_S
    while True:
        try:
            await guestagent.ping(socket_path, 1.0)
            return
        except GuestAgentError as exc:
            if time.monotonic() > deadline:
                raise AssertionError(f"qemu-ga did not answer within {AGENT_TIMEOUT_S:g} s of the boot: {exc}")
        await asyncio.sleep(0.2)


@pytest.fixture
async def guest(root: str, started: list[int], guest_dir: Path) -> AsyncIterator[tuple[QemuManager, str]]:
    """The test guest booted from an overlay of its disk, its qemu-ga answering; yields (manager, agent socket)."""
    overlay = f"{root}/disk0.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(guest_dir / "base.qcow2"), "-F", "qcow2",
                    overlay], check=True, timeout=30)
    hv = HvParams(accel="tcg", guest_agent=True, kernel_path=str(guest_dir / "vmlinuz"), initrd_path=str(guest_dir / "initrd.img"),
                  kernel_args="console=ttyS0 quiet")
    spec = InstanceSpec(name="ga1", uuid=str(uuid.uuid4()), memory_mib=256, vcpus=1, hv=hv,
                        disks=(DiskSpec(overlay, "qcow2"),), nics=())
    manager = QemuManager(f"{root}/run", qmp_timeout_s=5.0)
    started.append(await manager.start(spec))
    await wait_booted(manager, spec.name)
    socket_path = manager.paths(spec.name).ga_socket
    await wait_agent(socket_path)
    yield manager, socket_path


async def test_the_agent_freezes_the_guest_disk_and_thaws_it_on_leaving_whatever_happened(guest):
    manager, socket_path = guest
    assert await guestagent.fsfreeze_status(socket_path) == "thawed"
    _, console = await attach(manager.paths("ga1").console_socket)
    try:
        async with frozen(socket_path, FREEZE_TIMEOUT_S) as hold:
            assert hold.count >= 1 and hold.problem == "" and not hold.no_agent, (hold.count, hold.problem)
            assert await hold.fsfreeze_status() == "frozen"
            # a write to the guest's disk waits for the thaw (the echoed command line shows no "42")
            console.write(b"touch /mnt/probe && echo WROTE-$((40+2))\n")
            await console.drain()
            assert await console_shows(manager, "ga1", "WROTE-$((40+2))", 10.0), "the shell did not take the command"
            assert not await console_shows(manager, "ga1", "WROTE-42", 2.0), "the guest wrote to a frozen disk"
        assert hold.thawed == hold.count and hold.thaw_problem == ""
        assert await console_shows(manager, "ga1", "WROTE-42", 10.0), "the write still waits after the thaw"
    finally:
        console.close()
    assert await guestagent.fsfreeze_status(socket_path) == "thawed"

    # thawed early (a backup's at_start), then not again on leaving
    async with frozen(socket_path, FREEZE_TIMEOUT_S) as hold:
        await hold.thaw()
        assert hold.thawed == hold.count >= 1
        await hold.thaw()
    assert await guestagent.fsfreeze_status(socket_path) == "thawed"

    # the caller fails inside
    with pytest.raises(RuntimeError, match="backup failed"):
        async with frozen(socket_path, FREEZE_TIMEOUT_S) as hold:
            assert hold.count >= 1
            raise RuntimeError("backup failed")
    assert await guestagent.fsfreeze_status(socket_path) == "thawed"

    # the caller is cancelled inside
    entered = asyncio.Event()

    async def backup() -> None:
        async with frozen(socket_path, FREEZE_TIMEOUT_S) as hold:
            assert hold.count >= 1
            entered.set()
            await asyncio.sleep(3600)

    task = asyncio.create_task(backup())
    await asyncio.wait_for(entered.wait(), FREEZE_TIMEOUT_S)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, FREEZE_TIMEOUT_S + guestagent.THAW_TIMEOUT_S)
    assert await guestagent.fsfreeze_status(socket_path) == "thawed"
    assert booted(manager, "ga1")


async def test_a_paused_guest_is_reported_as_having_no_agent_and_answers_again_once_running(guest):
    """A paused guest's agent cannot answer: the sync sent then is answered after `cont`, a stale reply the
    next session must skip."""
    manager, socket_path = guest
    async with await Qmp.connect(manager.paths("ga1").qmp_socket, 5.0) as qmp:
        await qmp.execute("stop")
        began = time.monotonic()
        async with frozen(socket_path, FREEZE_TIMEOUT_S) as hold:
            assert hold.count == 0 and hold.no_agent and "no guest agent answered" in hold.problem, hold.problem
        with pytest.raises(GuestAgentError, match="no guest agent answered") as err:
            await guestagent.ping(socket_path)
        assert err.value.no_agent
        assert time.monotonic() - began < 2 * SYNC_TIMEOUT_S + 2.0, "each attempt waits the sync timeout at most"
        await qmp.execute("cont")
    await wait_agent(socket_path)
    assert await guestagent.fsfreeze_status(socket_path) == "thawed"


async def test_a_guest_without_an_agent_is_told_apart_within_the_sync_timeout(root, started):
    """Firmware only (no kernel, an empty disk): QEMU runs and has the channel, nothing in the guest opens it."""
    disk = Path(root) / "empty.raw"
    with disk.open("wb") as f:
        f.truncate(16 * 2**20)
    spec = InstanceSpec(name="bare1", uuid=str(uuid.uuid4()), memory_mib=64, vcpus=1, hv=HvParams(accel="tcg", guest_agent=True),
                        disks=(DiskSpec(str(disk), "raw"),), nics=())
    manager = QemuManager(f"{root}/run", qmp_timeout_s=5.0)
    started.append(await manager.start(spec))
    socket_path = manager.paths("bare1").ga_socket
    began = time.monotonic()
    async with frozen(socket_path, FREEZE_TIMEOUT_S) as hold:
        assert hold.count == 0 and hold.no_agent, hold.problem
        assert "no guest agent answered within" in hold.problem
    assert time.monotonic() - began < SYNC_TIMEOUT_S + 1.5
    assert hold.thawed is None and hold.thaw_problem == ""  # nothing was sent, so nothing to thaw

    await manager.stop("bare1", timeout_s=1, force=True)
    with pytest.raises(GuestAgentError, match="no guest agent channel") as err:
        await guestagent.ping(socket_path)
    assert err.value.no_agent


async def test_a_freeze_cut_short_on_our_side_is_still_thawed_after_it_completes(root):
    """No QEMU: a stand-in agent on a unix socket whose freeze outlasts the caller's timeout. qemu-ga serves
    one command after the other, so the thaw sent after the resync comes once the freeze is done, and must
    come (the freeze may have frozen file systems by then)."""
    path = f"{root}/fake-qga.sock"
    seen: list[str] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            sync = line.startswith(b"\xff")
            command = json.loads(line.lstrip(b"\xff"))
            seen.append(command["execute"])
            if command["execute"] == "guest-fsfreeze-freeze":
                await asyncio.sleep(1.0)
            answer = command.get("arguments", {}).get("id", 1)
            writer.write((b"\xff" if sync else b"") + f'{{"return": {answer}}}\n'.encode())
            await writer.drain()
        writer.close()

    server = await asyncio.start_unix_server(serve, path)
    async with server:
        async with frozen(path, 0.3) as hold:
            assert hold.count == 0 and "guest-fsfreeze-freeze: no answer within" in hold.problem
            assert not hold.no_agent
        assert hold.thawed == 1 and hold.thaw_problem == ""
    assert seen == ["guest-sync-delimited", "guest-fsfreeze-freeze", "guest-sync-delimited", "guest-fsfreeze-thaw"]
