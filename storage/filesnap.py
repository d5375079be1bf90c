"""Snapshots of `file` disks: a full point-in-time copy of every disk of an instance, kept beside its disks.

Layout: `<base_dir>/<instance>/snapshots/<snap>/disk<index>.qcow2` and `snapshot.json` (what was copied,
when, how consistent). A snapshot is built in a hidden `.<snap>.partial` directory and renamed into place
once every copy is complete and synced, so a crash or a kill never leaves what looks like a snapshot.

Why copies and not qcow2 internal snapshots or overlays: `file` disks are raw by default, and raw files hold
neither; an overlay chain would change which file the guest runs on, which every other operation (mirror,
migration, move, grow) would then have to follow. A copy is independent of the disk, its space is exactly
its files' (shown in `instance info`), and the same copy is what a live export makes. It costs time in
proportion to the data the disks hold (sparse qcow2: unused blocks are not stored), and a running guest is
copied by QEMU's backup job (kvm.blockbackup) without stopping it; this module makes the stopped copies,
the targets for a running one, and reverts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from typing import Any

from storage import runner
from storage.base import MIB
from storage.errors import NoSpace, StorageError
from storage.filedisk import FileTemplate, fsync_path

SNAPSHOT_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
SNAPSHOT_NAME_RULE = "1-63 letters, digits, '_', '.' or '-', starting with a letter or digit"
_META = "snapshot.json"


class SnapshotError(StorageError):
    """A snapshot could not be made, found, reverted or removed; the message says why."""


@dataclass(frozen=True)
class SnapshotInfo:
    """One complete snapshot on this node."""

    name: str
    created: float
    consistency: str  # "stopped", "crash" or "filesystems" (the guest agent froze them)
    disks: dict[int, int]  # index -> virtual bytes
    used_bytes: int  # what its files take on disk


def check_snapshot_name(name: str) -> None:
    if not SNAPSHOT_NAME_RE.fullmatch(name):
        raise SnapshotError(f"snapshot name {name!r} is not valid: use {SNAPSHOT_NAME_RULE}")


class FileSnapshots:
    """The snapshots of a node's `file` disks (the template's directory and lock)."""

    def __init__(self, template: FileTemplate) -> None:
        self.template = template

    def directory(self, instance: str) -> str:
        return os.path.join(self.template.instance_dir(instance), "snapshots")

    def _final(self, instance: str, snap: str) -> str:
        check_snapshot_name(snap)
        return os.path.join(self.directory(instance), snap)

    def _partial(self, instance: str, snap: str) -> str:
        check_snapshot_name(snap)
        return os.path.join(self.directory(instance), f".{snap}.partial")

    async def disk_sizes(self, instance: str, indices: list[int]) -> dict[int, tuple[str, str, int]]:
        """index -> (path, format, virtual bytes) of the instance's disks here."""
        found = {}
        for index in indices:
            path, fmt = self.template.locate(instance, index)
            found[index] = (path, fmt, await self.template.virtual_bytes(path, fmt))
        return found

    async def prepare(self, instance: str, snap: str, disks: dict[int, int]) -> dict[int, str]:
        """A fresh partial snapshot with an empty qcow2 target per disk (index -> virtual bytes): the running
        guest's backup job writes into them. Refused if the name is taken or the space (the disks' used
        blocks) is not there."""
        if os.path.exists(self._final(instance, snap)):
            raise SnapshotError(f"instance '{instance}' already has a snapshot named '{snap}'")
        partial = self._partial(instance, snap)
        shutil.rmtree(partial, ignore_errors=True)  # left by an interrupted attempt: never a snapshot
        self._check_space(instance, list(disks))
        os.makedirs(partial, mode=0o700)
        targets = {}
        for index, size in disks.items():
            targets[index] = os.path.join(partial, f"disk{index}.qcow2")
            await runner.run(["qemu-img", "create", "-q", "-f", "qcow2", targets[index], str(size)],
                             timeout_s=self.template.timeout_s)
        return targets

    async def copy_stopped(self, instance: str, snap: str, indices: list[int]) -> dict[int, int]:
        """Every listed disk of a stopped instance copied into a fresh partial snapshot; index -> bytes."""
        sizes = await self.disk_sizes(instance, indices)
        targets = await self.prepare(instance, snap, {i: s[2] for i, s in sizes.items()})
        for index, (path, fmt, _) in sizes.items():
            await runner.run(["qemu-img", "convert", "-q", "-f", fmt, "-O", "qcow2", path, targets[index]],
                             timeout_s=self.template.copy_timeout_s)
        return {i: s[2] for i, s in sizes.items()}

    async def commit(self, instance: str, snap: str, disks: dict[int, int], created: float,
                     consistency: str) -> SnapshotInfo:
        """The partial snapshot, complete, synced and put in place."""
        partial = self._partial(instance, snap)
        meta = {"name": snap, "created": created, "consistency": consistency,
                "disks": {str(i): size for i, size in disks.items()}}
        with open(os.path.join(partial, _META), "w") as fh:
            json.dump(meta, fh)
        await asyncio.to_thread(sync_tree, partial)
        os.rename(partial, self._final(instance, snap))
        await asyncio.to_thread(fsync_path, self.directory(instance))
        return self._info(self._final(instance, snap))

    def abort(self, instance: str, snap: str) -> None:
        shutil.rmtree(self._partial(instance, snap), ignore_errors=True)

    def snapshots(self, instance: str) -> list[SnapshotInfo]:
        """Every complete snapshot of the instance here, oldest first; unreadable ones raise SnapshotError."""
        try:
            names = [n for n in os.listdir(self.directory(instance)) if not n.startswith(".")]
        except FileNotFoundError:
            return []
        found = [self._info(os.path.join(self.directory(instance), n)) for n in names]
        return sorted(found, key=lambda s: (s.created, s.name))

    def get(self, instance: str, snap: str) -> SnapshotInfo:
        path = self._final(instance, snap)
        if not os.path.isdir(path):
            raise SnapshotError(f"instance '{instance}' has no snapshot named '{snap}' on this node")
        return self._info(path)

    async def revert(self, instance: str, snap: str) -> None:
        """Each disk replaced by its copy in the snapshot (the instance stopped), in the disk's own format and
        at its current size. Refused before anything changes if a disk is missing on either side or has
        shrunk below the snapshot's size (disks only grow, so the snapshot always fits)."""
        info = self.get(instance, snap)
        current = await self.disk_sizes(instance, sorted(info.disks))
        for index, size in info.disks.items():
            if current[index][2] < size:
                raise SnapshotError(f"disk {index} of '{instance}' is smaller than in snapshot '{snap}'")
        folder = self._final(instance, snap)
        await replace_disks(self.template, instance, {i: os.path.join(folder, f"disk{i}.qcow2") for i in info.disks})

    def remove(self, instance: str, snap: str) -> bool:
        """The snapshot gone; False if it was not there (idempotent)."""
        path = self._final(instance, snap)
        if not os.path.isdir(path):
            return False
        doomed = os.path.join(self.directory(instance), f".{snap}.{uuid.uuid4().hex}.removing")
        os.rename(path, doomed)  # gone from the list at once, even if the delete below is cut short
        shutil.rmtree(doomed, ignore_errors=True)
        return True

    def remove_all(self, instance: str) -> None:
        """Every snapshot and leftover of the instance (its removal)."""
        shutil.rmtree(self.directory(instance), ignore_errors=True)

    def everything(self) -> tuple[dict[str, list[SnapshotInfo]], list[str], dict[str, list[str]]]:
        """Every instance's snapshots on this node (for its report), what could not be read, and per instance
        the hidden directories a snapshot or a removal cut short left behind (taking space until deleted)."""
        found: dict[str, list[SnapshotInfo]] = {}
        problems: list[str] = []
        leftovers: dict[str, list[str]] = {}
        try:
            instances = sorted(os.listdir(self.template.base_dir))
        except FileNotFoundError:
            return found, problems, leftovers
        except OSError as exc:
            return found, [f"cannot list {self.template.base_dir}: {exc}"], leftovers
        for instance in instances:
            directory = os.path.join(self.template.base_dir, instance, "snapshots")
            if not os.path.isdir(directory):
                continue
            try:
                if hidden := sorted(os.path.join(directory, n) for n in os.listdir(directory) if n.startswith(".")):
                    leftovers[instance] = hidden
                if snaps := self.snapshots(instance):
                    found[instance] = snaps
            except (StorageError, OSError) as exc:  # one unreadable snapshot must not cost the node its report
                problems.append(str(exc))
        return found, problems, leftovers

    def used_bytes(self, instance: str) -> int:
        return sum(s.used_bytes for s in self.snapshots(instance))

    def _info(self, path: str) -> SnapshotInfo:
        try:
            with open(os.path.join(path, _META)) as fh:
                meta: dict[str, Any] = json.load(fh)
            disks = {int(i): int(size) for i, size in meta["disks"].items()}
            return SnapshotInfo(str(meta["name"]), float(meta["created"]), str(meta["consistency"]), disks,
                                used_tree_bytes(path))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise SnapshotError(f"snapshot directory {path} is not readable: {exc}") from exc

    def _check_space(self, instance: str, indices: list[int]) -> None:
        needed = sum(used_file_bytes(self.template.locate(instance, i)[0]) for i in indices)
        free = self.template.free_mib()
        if math.ceil(needed / MIB) > free:
            raise NoSpace(self.directory(instance), math.ceil(needed / MIB), free)


async def replace_disks(template: FileTemplate, instance: str, sources: dict[int, str],
                        progress_log: str | None = None) -> None:
    """Each listed disk of a stopped instance replaced by the qcow2 copy given (index -> path), in the disk's
    own format and at its current size when it grew since the copy; each written beside and renamed over
    the disk, so a cut leaves the disk as it was or as the copy. The caller checked that no copy is larger.
    `progress_log`: qemu-img's progress lines go there (a status order reads them)."""
    directory = template.instance_dir(instance)
    for index, source in sorted(sources.items()):
        path, fmt = template.locate(instance, index)
        size = await template.virtual_bytes(path, fmt)
        tmp = os.path.join(directory, f".disk{index}.{uuid.uuid4().hex}.tmp")
        try:
            await runner.run(["qemu-img", "convert", "-p" if progress_log else "-q", "-f", "qcow2", "-O", fmt, source,
                              tmp], timeout_s=template.copy_timeout_s, log_path=progress_log)
            if size > await template.virtual_bytes(tmp, fmt):  # grown since: the copy's data, today's size
                await runner.run(["qemu-img", "resize", "-q", "-f", fmt, tmp, str(size)], timeout_s=template.timeout_s)
            os.chmod(tmp, 0o600)
            await asyncio.to_thread(fsync_path, tmp)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
    await asyncio.to_thread(fsync_path, directory)


def used_file_bytes(path: str) -> int:
    return os.stat(path).st_blocks * 512


def used_tree_bytes(path: str) -> int:
    return sum(used_file_bytes(os.path.join(path, n)) for n in os.listdir(path))


def sync_tree(path: str) -> None:
    for name in os.listdir(path):
        fsync_path(os.path.join(path, name))
    fsync_path(path)
