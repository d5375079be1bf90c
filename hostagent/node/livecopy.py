"""A running guest's disks copied as of one instant (snapshots, live exports), its file systems frozen for
that instant when it runs the QEMU guest agent; or held still for LVM snapshots taken of them (`at_one_instant`).

An instance started with hvparam guest_agent has the agent's channel (its socket exists while that QEMU
runs): its file systems are frozen (kvm.guestagent), the backup jobs start (kvm.blockbackup), and they are
thawed right away, so the guest's writes wait only the moment the jobs take to start. A guest that does not
answer on the channel, or an instance without it, is copied crash-consistent; the log says which and why.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable, Sequence

from kvm import guestagent
from kvm.blockbackup import BackupTarget, Progress, backup_disks
from kvm.process import QemuManager
from kvm.qmp import Qmp

log = logging.getLogger(__name__)

FREEZE_TIMEOUT_S = 10.0  # qemu-ga syncs the file systems before it freezes them: seconds on a busy guest


async def copy_running(qemu: QemuManager, name: str, targets: Sequence[BackupTarget], timeout_s: float,
                       progress: Progress | None = None, compress: bool = False, speed_bytes_s: int = 0) -> str:
    """Copy the guest's disks into `targets`; the copy's consistency: "filesystems" or "crash"."""
    paths = qemu.paths(name)

    def connect() -> Awaitable[Qmp]:
        return Qmp.connect(paths.qmp_socket, 2 * qemu.qmp_timeout_s)

    if not os.path.exists(paths.ga_socket):
        log.info("instance '%s': copied as of now, crash-consistent (no guest agent channel: hvparam guest_agent "
                 "is off, or was when it started)", name)
        await backup_disks(connect, targets, timeout_s, progress=progress, compress=compress,
                           speed_bytes_s=speed_bytes_s)
        return "crash"
    async with guestagent.frozen(paths.ga_socket, FREEZE_TIMEOUT_S) as hold:
        if hold.count:
            log.info("instance '%s': %d file system(s) frozen by the guest agent for the copy's instant", name,
                     hold.count)
        else:
            log.warning("instance '%s': copied crash-consistent: the guest agent did not freeze its file systems "
                        "(%s)", name, hold.problem)
        await backup_disks(connect, targets, timeout_s, progress=progress, compress=compress, at_start=hold.thaw,
                           speed_bytes_s=speed_bytes_s)
    if hold.thaw_problem:
        log.error("instance '%s': the guest agent did not thaw its file systems (%s): its writes wait until "
                  "they are thawed", name, hold.thaw_problem)
    return "filesystems" if hold.count else "crash"


async def at_one_instant(qemu: QemuManager, name: str, disks: int, take: Callable[[str], Awaitable[None]]) -> str:
    """Call `take(consistency)` while the running guest's disks hold one instant; that consistency.

    The guest agent freezes the file systems for it when it answers ("filesystems"). Otherwise, with more than
    one disk, the guest is paused (QMP stop, which drains its block requests) and resumed right after, so the
    disks' snapshots are of the same instant ("crash"); a single disk's LVM snapshot is one instant by itself."""
    paths = qemu.paths(name)
    if os.path.exists(paths.ga_socket):
        async with guestagent.frozen(paths.ga_socket, FREEZE_TIMEOUT_S) as hold:
            if hold.count:
                log.info("instance '%s': %d file system(s) frozen by the guest agent for the snapshot", name,
                         hold.count)
                await take("filesystems")
            else:
                log.warning("instance '%s': snapshot crash-consistent: the guest agent did not freeze its file "
                            "systems (%s)", name, hold.problem)
                await _paused(qemu, name, disks, take)
        if hold.thaw_problem:
            log.error("instance '%s': the guest agent did not thaw its file systems (%s): its writes wait until "
                      "they are thawed", name, hold.thaw_problem)
        return "filesystems" if hold.count else "crash"
    log.info("instance '%s': snapshot crash-consistent (no guest agent channel: hvparam guest_agent is off, or was "
             "when it started)", name)
    await _paused(qemu, name, disks, take)
    return "crash"


async def _paused(qemu: QemuManager, name: str, disks: int, take: Callable[[str], Awaitable[None]]) -> None:
    if disks < 2:
        await take("crash")
        return
    async with await Qmp.connect(qemu.paths(name).qmp_socket, 2 * qemu.qmp_timeout_s) as qmp:
        running = await qmp.status() == "running"
        if running:
            await qmp.execute("stop")
        try:
            await take("crash")
        finally:
            if running:
                await qmp.execute("cont")
    log.info("instance '%s': paused while its %d disks were snapshotted, so they hold the same instant", name,
             disks)
