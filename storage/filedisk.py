"""The `file` disk template: raw or qcow2 files in a per-node directory.

Layout: `<base_dir>/<instance>/disk<index>.<raw|qcow2>`. New disks are
built under a hidden temporary name and linked into place only when
complete and synced, so a crash or a kill never leaves a file that looks
like a finished disk; hidden names (`.disk<index>.*`) are never reported
as volumes and `remove` sweeps them.
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
import weakref
from collections.abc import Awaitable, Callable
from typing import ClassVar

from storage import runner
from storage.base import MIB, DiskTemplate, Volume, check_disk, check_instance_name
from storage.errors import (
    DiskExists,
    DiskNotFound,
    DiskSmallerThanImage,
    NoSpace,
    ShrinkRefused,
    StorageError,
)

_VOLUME_RE = re.compile(r"disk(0|[1-9][0-9]*)\.(raw|qcow2)")


class FileTemplate(DiskTemplate):
    """Disks as files under base_dir (the node's file storage directory)."""

    name: ClassVar[str] = "file"
    formats: ClassVar[tuple[str, ...]] = ("raw", "qcow2")

    def __init__(
        self, base_dir: str, *, timeout_s: float = 60.0, copy_timeout_s: float = 3600.0
    ) -> None:
        """timeout_s bounds metadata commands; copy_timeout_s bounds data copies."""
        self.base_dir = os.path.abspath(base_dir)
        self.timeout_s = timeout_s
        self.copy_timeout_s = copy_timeout_s
        # One lock per instance: a remove emptying the instance directory
        # must not race a create putting a file into it.
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )

    def instance_dir(self, instance: str) -> str:
        check_instance_name(instance)
        return os.path.join(self.base_dir, instance)

    def path(self, instance: str, index: int, fmt: str) -> str:
        check_disk(instance, index)
        self.check_format(fmt)
        return os.path.join(self.base_dir, instance, f"disk{index}.{fmt}")

    def scratch_path(self, instance: str, index: int) -> str:
        """A raw working file for an OS script; never reported as a volume."""
        check_disk(instance, index)
        return os.path.join(self.base_dir, instance, f".disk{index}.scratch")

    async def create(self, instance: str, index: int, size_mib: int, fmt: str) -> str:
        check_disk(instance, index, size_mib)
        self.check_format(fmt)

        async def make(tmp: str) -> None:
            await self._qemu_img(["create", "-q", "-f", fmt, tmp, f"{size_mib}M"])

        return await self._build(instance, index, fmt, size_mib, make)

    async def create_scratch(self, instance: str, index: int, size_mib: int) -> str:
        """Create (or replace) a sparse raw scratch file of size_mib.

        For OS scripts that need a raw file while the final disk is qcow2;
        `clone_image(..., image_fmt="raw")` then turns it into the disk and
        `remove` deletes it with the disk.
        """
        check_disk(instance, index, size_mib)
        final = self.scratch_path(instance, index)

        async def make(tmp: str) -> None:
            await self._qemu_img(["create", "-q", "-f", "raw", tmp, f"{size_mib}M"])

        return await self._build(instance, index, "raw", size_mib, make, final=final)

    async def remove_scratch(self, instance: str, index: int) -> None:
        """Delete the scratch file of a disk if present (idempotent)."""
        async with self._lock(instance):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.scratch_path(instance, index))
            _remove_dir_if_empty(self.instance_dir(instance))

    async def clone_image(
        self,
        instance: str,
        index: int,
        image_path: str,
        size_mib: int | None,
        fmt: str,
        *,
        image_fmt: str = "qcow2",
        progress_log: str | None = None,
    ) -> str:
        """Make an independent disk with the image's content, grown to size_mib (qemu-img's progress lines into
        progress_log when given).

        A full copy rather than a backing chain, so deleting or replacing
        the image never affects the instance. size_mib None keeps the
        image's virtual size; smaller than the image raises
        DiskSmallerThanImage.
        """
        check_disk(instance, index, size_mib)
        self.check_format(fmt)
        image = os.path.abspath(image_path)
        image_bytes = await self.virtual_bytes(image, image_fmt)
        image_mib = math.ceil(image_bytes / MIB)
        target_mib = image_mib if size_mib is None else size_mib
        if target_mib * MIB < image_bytes:
            raise DiskSmallerThanImage(image, image_mib, target_mib)

        async def make(tmp: str) -> None:
            await runner.run(["qemu-img", "convert", "-p" if progress_log else "-q", "-f", image_fmt, "-O", fmt, image,
                              tmp], timeout_s=self.copy_timeout_s, log_path=progress_log)
            if target_mib * MIB > image_bytes:
                await self._qemu_img(["resize", "-q", "-f", fmt, tmp, f"{target_mib}M"])

        return await self._build(instance, index, fmt, target_mib, make)

    async def remove(self, instance: str, index: int) -> None:
        check_disk(instance, index)
        async with self._lock(instance):
            directory = self.instance_dir(instance)
            prefixes = (f"disk{index}.", f".disk{index}.")
            with contextlib.suppress(FileNotFoundError):
                for entry in os.listdir(directory):
                    if entry.startswith(prefixes):
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(os.path.join(directory, entry))
            _remove_dir_if_empty(directory)

    async def grow(self, instance: str, index: int, new_size_mib: int) -> None:
        check_disk(instance, index, new_size_mib)
        async with self._lock(instance):
            path, fmt = self.locate(instance, index)
            current_mib = math.ceil(await self.virtual_bytes(path, fmt) / MIB)
            if new_size_mib < current_mib:
                raise ShrinkRefused(path, current_mib, new_size_mib)
            if new_size_mib == current_mib:
                return
            self._check_space(new_size_mib - current_mib)
            await self._qemu_img(["resize", "-q", "-f", fmt, path, f"{new_size_mib}M"])

    async def rename(self, old: str, new: str) -> bool:
        """Give an instance's disk directory its new name; False if that was done already (idempotent).

        Refuses (FileExistsError) to merge into a directory the new name already has."""
        source, target = self.instance_dir(old), self.instance_dir(new)
        async with self._lock(old), self._lock(new):
            if not os.path.isdir(source):
                return False
            if os.path.lexists(target):
                raise FileExistsError(f"{target} exists: not renaming {source} over it")
            os.rename(source, target)
            return True

    async def exists(self, instance: str, index: int) -> bool:
        try:
            self.locate(instance, index)
        except DiskNotFound:
            return False
        return True

    async def size_mib(self, instance: str, index: int) -> int:
        path, fmt = self.locate(instance, index)
        return math.ceil(await self.virtual_bytes(path, fmt) / MIB)

    async def list_volumes(self) -> list[Volume]:
        volumes: list[Volume] = []
        try:
            instances = sorted(os.listdir(self.base_dir))
        except FileNotFoundError:
            return volumes
        for instance in instances:
            directory = os.path.join(self.base_dir, instance)
            if not os.path.isdir(directory):
                continue
            for entry in sorted(os.listdir(directory)):
                match = _VOLUME_RE.fullmatch(entry)
                if not match:
                    continue
                path = os.path.join(directory, entry)
                fmt = match.group(2)
                size = math.ceil(await self.virtual_bytes(path, fmt) / MIB)
                volumes.append(Volume(instance, int(match.group(1)), path, size, fmt))
        return volumes

    def free_mib(self) -> int:
        """Space available for new disks in the file storage directory."""
        return shutil.disk_usage(_existing_ancestor(self.base_dir)).free // MIB

    def total_mib(self) -> int:
        """Size of the file system holding the file storage directory."""
        return shutil.disk_usage(_existing_ancestor(self.base_dir)).total // MIB

    def _lock(self, instance: str) -> asyncio.Lock:
        lock = self._locks.get(instance)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[instance] = lock
        return lock

    def locate(self, instance: str, index: int) -> tuple[str, str]:
        """(path, format) of the disk; DiskNotFound if it has none."""
        for fmt in self.formats:
            path = self.path(instance, index, fmt)
            if os.path.isfile(path):
                return path, fmt
        raise DiskNotFound(instance, index, self.instance_dir(instance))

    def _check_space(self, needed_mib: int) -> None:
        # Sparse files use little now but the guest may fill them: count the
        # full size, or a full file system would surface as guest I/O errors.
        free = self.free_mib()
        if needed_mib > free:
            raise NoSpace(self.base_dir, needed_mib, free)

    async def _build(
        self,
        instance: str,
        index: int,
        fmt: str,
        size_mib: int,
        make: Callable[[str], Awaitable[None]],
        *,
        final: str | None = None,
    ) -> str:
        """Run make(tmp) on a hidden name, then put it in place atomically.

        Without `final` the target is the disk and an existing one is never
        replaced (DiskExists); with `final` (scratch files) it is replaced.
        """
        replace = final is not None
        target = final if final is not None else self.path(instance, index, fmt)
        async with self._lock(instance):
            if not replace and await self.exists(instance, index):
                raise DiskExists(self.locate(instance, index)[0])
            self._check_space(size_mib)
            directory = self.instance_dir(instance)
            os.makedirs(directory, mode=0o700, exist_ok=True)
            tmp = os.path.join(directory, f".disk{index}.{uuid.uuid4().hex}.tmp")
            try:
                await make(tmp)
                os.chmod(tmp, 0o600)
                await asyncio.to_thread(fsync_path, tmp)
                if replace:
                    os.replace(tmp, target)
                else:
                    _link_new(tmp, target)
                await asyncio.to_thread(fsync_path, directory)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                _remove_dir_if_empty(directory)
                raise
        return target

    async def virtual_bytes(self, path: str, fmt: str) -> int:
        """The size the guest sees (a qcow2 file is smaller or larger than that)."""
        if fmt == "raw":
            try:
                return os.stat(path).st_size
            except FileNotFoundError as exc:
                raise StorageError(f"{path} does not exist") from exc
        # -U: a running QEMU holds a lock on the image; reading its size is safe.
        result = await self._qemu_img(["info", "-U", "--output=json", "-f", fmt, path])
        try:
            return int(json.loads(result.stdout)["virtual-size"])
        except (ValueError, KeyError, TypeError) as exc:
            raise StorageError(
                f"cannot read the size of {path} from qemu-img info: {result.stdout[:200]!r}"
            ) from exc

    async def _qemu_img(
        self, args: list[str], *, timeout_s: float | None = None
    ) -> runner.CommandResult:
        return await runner.run(
            ["qemu-img", *args], timeout_s=timeout_s if timeout_s is not None else self.timeout_s
        )


def _link_new(tmp: str, target: str) -> None:
    """Hard-link tmp to target (fails rather than overwrite), then drop tmp."""
    try:
        os.link(tmp, target)
    except FileExistsError:
        raise DiskExists(target) from None
    os.unlink(tmp)


def fsync_path(path: str) -> None:
    """A file's (or a directory's entries') data on disk before it counts as written."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_dir_if_empty(directory: str) -> None:
    with contextlib.suppress(OSError):  # not empty, or already gone
        os.rmdir(directory)


def _existing_ancestor(path: str) -> str:
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path
