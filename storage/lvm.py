"""The `plain` disk template: LVM logical volumes in one volume group per node.

Disk N of instance I is the LV `/dev/<vg>/corral-<I>-disk<N>` tagged
`corral-instance=<I>` and `corral-disk=<N>` (see storage.lvmparse for why),
so `list_volumes` can hand `cluster verify` every LV that claims to be a
Corral disk, whether or not the config still knows it.

Every command runs with `lvm_args` right after the program name: production
passes nothing; tests on a machine without device-mapper pass
("--driverloaded", "n") so LVM edits metadata without activating LVs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections.abc import Sequence
from typing import ClassVar, Protocol

from storage import runner
from storage.base import MIB, DiskTemplate, Volume, check_disk
from storage.errors import (
    CommandFailed,
    CommandTimeout,
    DiskExists,
    DiskNotFound,
    DiskSmallerThanImage,
    NoSpace,
    ShrinkRefused,
    StorageError,
)
from storage.lvmparse import (
    LVS_FIELDS,
    VGS_FIELDS,
    TAG_ADOPTED,
    LvReport,
    VgReport,
    adoption_problem,
    disk_identity,
    disk_tags,
    lv_name,
    parse_lvs,
    parse_vgs,
    report_args,
    vg_name_problem,
)


class VolumeGroupError(StorageError):
    """The node's volume group cannot be used (bad name, missing)."""

    def __init__(self, vg: str, reason: str) -> None:
        super().__init__(f"volume group {vg!r} cannot be used: {reason}")
        self.vg = vg
        self.reason = reason


class VolumeGroupNotFound(VolumeGroupError):
    def __init__(self, vg: str) -> None:
        super().__init__(
            vg,
            "LVM does not find it on this node; create it with vgcreate, "
            "or set the node's volume group to one that `vgs` lists",
        )


class Run(Protocol):
    """The part of storage.runner.run this template uses (a seam for tests)."""

    async def __call__(
        self, argv: Sequence[str], *, timeout_s: float, check: bool = True, log_path: str | None = None
    ) -> runner.CommandResult: ...


class PlainTemplate(DiskTemplate):
    """Raw disks as logical volumes in the volume group vg."""

    name: ClassVar[str] = "plain"
    formats: ClassVar[tuple[str, ...]] = ("raw",)

    def __init__(
        self,
        vg: str,
        *,
        lvm_args: Sequence[str] = (),
        timeout_s: float = 60.0,
        copy_timeout_s: float = 3600.0,
        run: Run = runner.run,
    ) -> None:
        """timeout_s bounds each LVM command, copy_timeout_s an image's copy onto an LV; run is the
        command seam."""
        problem = vg_name_problem(vg)
        if problem:
            raise VolumeGroupError(vg, problem)
        self.vg = vg
        self.lvm_args = tuple(lvm_args)
        self.timeout_s = timeout_s
        self.copy_timeout_s = copy_timeout_s
        self._run = run

    def lv_name(self, instance: str, index: int) -> str:
        """The LV holding this disk (InvalidName when too long for the VG)."""
        return lv_name(self.vg, instance, index)

    def path(self, instance: str, index: int, fmt: str) -> str:
        self.check_format(fmt)
        return self._lv_path(self.lv_name(instance, index))

    async def create(self, instance: str, index: int, size_mib: int, fmt: str) -> str:
        check_disk(instance, index, size_mib)
        self.check_format(fmt)
        name = self.lv_name(instance, index)
        path = self._lv_path(name)
        vg = await self._vg_report()
        if await self._find(name) is not None:
            raise DiskExists(path)
        needed = vg.allocated_bytes(size_mib)
        if needed > vg.free_bytes:
            raise NoSpace(self._where(), math.ceil(needed / MIB), vg.free_mib)
        tags = [arg for tag in disk_tags(instance, index) for arg in ("--addtag", tag)]
        argv = ["--yes", "-n", name, "-L", f"{size_mib}m", *tags, self.vg]
        try:
            await self._lvm("lvcreate", argv)
        except CommandFailed as exc:
            await self._raise_lost_race(exc, needed, path)
            raise
        except (CommandTimeout, asyncio.CancelledError):
            # LVM may have committed the LV before it was killed, possibly
            # before wiping old signatures: drop it, so nothing half-made
            # looks like a disk.
            await self._discard(name)
            raise
        return path

    async def clone_image(
        self,
        instance: str,
        index: int,
        image_path: str,
        size_mib: int,
        fmt: str,
        *,
        image_fmt: str = "qcow2",
        progress_log: str | None = None,
    ) -> str:
        """A new LV of size_mib with the image's content, copied onto the device (no backing chain, as for
        files; qemu-img's progress into progress_log when given). DiskSmallerThanImage before anything is made;
        a failed copy removes the LV again."""
        check_disk(instance, index, size_mib)
        self.check_format(fmt)
        image_bytes = await self.image_bytes(image_path, image_fmt)
        if size_mib * MIB < image_bytes:
            raise DiskSmallerThanImage(image_path, math.ceil(image_bytes / MIB), size_mib)
        path = await self.create(instance, index, size_mib, fmt)
        try:
            await self._run(["qemu-img", "convert", "-p" if progress_log else "-q", "-n", "-f", image_fmt, "-O", "raw",
                             image_path, path], timeout_s=self.copy_timeout_s, log_path=progress_log)
        except BaseException:
            await self._discard(self.lv_name(instance, index))
            raise
        return path

    def locate(self, instance: str, index: int) -> tuple[str, str]:
        """(path, format) where the disk is or would be (an LV is always raw), for messages."""
        return self.path(instance, index, "raw"), "raw"

    async def image_bytes(self, image_path: str, image_fmt: str) -> int:
        """The image's virtual size: what a disk cloned from it must hold at least."""
        result = await self._run(["qemu-img", "info", "--output=json", "-f", image_fmt, image_path],
                                 timeout_s=self.timeout_s)
        try:
            return int(json.loads(result.stdout)["virtual-size"])
        except (ValueError, KeyError, TypeError) as exc:
            raise StorageError(f"cannot read the size of {image_path} from qemu-img info: "
                               f"{result.stdout[:200]!r}") from exc

    async def remove(self, instance: str, index: int) -> None:
        check_disk(instance, index)
        name = self.lv_name(instance, index)
        if await self._find(name) is None:
            return
        try:
            await self._lvm("lvremove", ["-f", f"{self.vg}/{name}"])
        except CommandFailed:
            if await self._find(name) is None:
                return  # removed by someone else meanwhile: the goal is met
            raise

    async def grow(self, instance: str, index: int, new_size_mib: int) -> None:
        check_disk(instance, index, new_size_mib)
        name = self.lv_name(instance, index)
        lv = await self._get(instance, index, name)
        vg = await self._vg_report()
        target = vg.allocated_bytes(new_size_mib)
        if target < lv.size_bytes:
            raise ShrinkRefused(
                self._lv_path(name), math.ceil(lv.size_bytes / MIB), new_size_mib
            )
        if target == lv.size_bytes:
            return  # already that size once rounded to extents
        extra = target - lv.size_bytes
        if extra > vg.free_bytes:
            raise NoSpace(self._where(), math.ceil(extra / MIB), vg.free_mib)
        try:
            await self._lvm("lvextend", ["-L", f"{new_size_mib}m", f"{self.vg}/{name}"])
        except CommandFailed as exc:
            await self._raise_lost_race(exc, extra, None)
            raise

    async def exists(self, instance: str, index: int) -> bool:
        check_disk(instance, index)
        return await self._find(self.lv_name(instance, index)) is not None

    async def size_mib(self, instance: str, index: int) -> int:
        check_disk(instance, index)
        lv = await self._get(instance, index, self.lv_name(instance, index))
        return math.ceil(lv.size_bytes / MIB)

    async def list_volumes(self) -> list[Volume]:
        volumes: list[Volume] = []
        for lv in await self._lvs():
            identity = disk_identity(lv)
            if identity is not None:
                instance, index = identity
                volumes.append(
                    Volume(
                        instance, index, self._lv_path(lv.name),
                        math.ceil(lv.size_bytes / MIB), "raw",
                    )
                )
        return sorted(volumes, key=lambda v: (v.instance, v.index, v.path))

    async def adoptable(self, names: Sequence[str]) -> dict[str, tuple[int, str | None]]:
        """For each LV name: (its size in MiB, why it cannot be adopted or None); size 0 when it is missing."""
        lvs = {lv.name: lv for lv in await self._lvs()}
        return {name: (math.ceil(lvs[name].size_bytes / MIB) if name in lvs else 0,
                       adoption_problem(name, lvs.get(name), self.vg)) for name in names}

    async def adopt(self, lv: str, instance: str, index: int) -> str:
        """The LV `lv` becomes disk `index` of `instance`, data untouched: renamed to lv_name (every other
        operation finds a disk by that name) and tagged, with its old name kept in a tag for `release`.
        Idempotent: an LV already adopted from `lv` for this disk is left as it is."""
        check_disk(instance, index)
        name = self.lv_name(instance, index)
        lvs = {found.name: found for found in await self._lvs()}
        mine = lvs.get(name)
        if mine is not None and f"{TAG_ADOPTED}{lv}" in mine.tags and disk_identity(mine) == (instance, index):
            return self._lv_path(name)
        problem = adoption_problem(lv, lvs.get(lv), self.vg)
        if problem:
            raise StorageError(f"cannot adopt LV {self.vg}/{lv} as disk {index} of '{instance}': {problem}")
        if mine is not None:
            raise DiskExists(self._lv_path(name))
        tags = [arg for tag in (*disk_tags(instance, index), f"{TAG_ADOPTED}{lv}") for arg in ("--addtag", tag)]
        await self._lvm("lvchange", [*tags, f"{self.vg}/{lv}"])
        try:
            await self._lvm("lvrename", [self.vg, lv, name])
        except BaseException:
            await self._untag(lv, instance, index)
            raise
        return self._lv_path(name)

    async def rename_disk(self, old: str, new: str, index: int) -> bool:
        """Disk `index` of instance `old` becomes instance `new`'s (`instance rename`): the LV renamed and its
        instance tag changed, data untouched. Idempotent: False when there is nothing left to rename."""
        check_disk(new, index)
        source, target = self.lv_name(old, index), self.lv_name(new, index)
        lvs = {found.name: found for found in await self._lvs()}
        if source not in lvs:
            return False  # renamed by an earlier attempt (or never made: `cluster verify` says so)
        if target in lvs:
            raise DiskExists(self._lv_path(target))
        tags, want = set(lvs[source].tags), set(disk_tags(new, index))
        swap = [arg for tag in sorted(tags & (set(disk_tags(old, index)) - want)) for arg in ("--deltag", tag)]
        swap += [arg for tag in sorted(want - tags) for arg in ("--addtag", tag)]
        if swap:
            await self._lvm("lvchange", [*swap, f"{self.vg}/{source}"])
        await self._lvm("lvrename", [self.vg, source, target])
        return True

    async def release(self, instance: str, index: int) -> str | None:
        """Undo `adopt`: the LV gets back its old name, without Corral's tags (an add that failed after the
        adoption must not delete the operator's data). The old name, or None when there is no adopted LV."""
        check_disk(instance, index)
        name = self.lv_name(instance, index)
        lv = await self._find(name)
        old = next((t[len(TAG_ADOPTED):] for t in lv.tags if t.startswith(TAG_ADOPTED)), None) if lv else None
        if old is None:
            return None
        await self._lvm("lvrename", [self.vg, name, old])
        await self._untag(old, instance, index)
        return old

    async def _untag(self, lv: str, instance: str, index: int) -> None:
        found = await self._find(lv)
        ours = [t for t in found.tags if t in disk_tags(instance, index) or t.startswith(TAG_ADOPTED)] if found else []
        if ours:
            await self._lvm("lvchange", [arg for tag in ours for arg in ("--deltag", tag)] + [f"{self.vg}/{lv}"])

    async def vg_info(self) -> tuple[int, int]:
        """(size_mib, free_mib) of the volume group, for the node's report."""
        vg = await self._vg_report()
        return vg.size_mib, vg.free_mib

    async def logical_volumes(self) -> list[LvReport]:
        """Every LV of the volume group as `lvs` reports it (storage.lvmsnap finds snapshots in it)."""
        return await self._lvs()

    async def run_lvm(self, program: str, args: Sequence[str], *, check: bool = True,
                      timeout_s: float | None = None) -> runner.CommandResult:
        """An LVM command on this volume group's terms (its lvm_args, its timeout unless given)."""
        return await self._run([program, *self.lvm_args, *args], timeout_s=timeout_s or self.timeout_s, check=check)

    def _lv_path(self, name: str) -> str:
        return f"/dev/{self.vg}/{name}"

    def _where(self) -> str:
        return f"volume group {self.vg}"

    async def _find(self, name: str) -> LvReport | None:
        for lv in await self._lvs():
            if lv.name == name:
                return lv
        return None

    async def _get(self, instance: str, index: int, name: str) -> LvReport:
        lv = await self._find(name)
        if lv is None:
            raise DiskNotFound(instance, index, self._where())
        return lv

    async def _lvs(self) -> list[LvReport]:
        result = await self._report("lvs", LVS_FIELDS)
        return [lv for lv in parse_lvs(result.stdout) if lv.vg == self.vg]

    async def _vg_report(self) -> VgReport:
        result = await self._report("vgs", VGS_FIELDS)
        for vg in parse_vgs(result.stdout):
            if vg.name == self.vg:
                return vg
        raise VolumeGroupNotFound(self.vg)

    async def _report(self, program: str, fields: str) -> runner.CommandResult:
        try:
            return await self._lvm(program, [*report_args(fields), self.vg])
        except CommandFailed as exc:
            if f'Volume group "{self.vg}" not found' in exc.stderr_tail:
                raise VolumeGroupNotFound(self.vg) from exc
            raise

    async def _raise_lost_race(
        self, exc: CommandFailed, needed_bytes: int, path: str | None
    ) -> None:
        """Raise DiskExists/NoSpace for an lvcreate/lvextend that lost a race.

        The checks before the command catch the usual case; this catches
        another command taking the name or the space in between.
        """
        text = exc.stderr_tail.lower()
        if path is not None and "already exists" in text:
            raise DiskExists(path) from exc
        if "insufficient free space" in text:
            free_mib = 0
            with contextlib.suppress(StorageError):
                free_mib = (await self._vg_report()).free_mib
            raise NoSpace(self._where(), math.ceil(needed_bytes / MIB), free_mib) from exc

    async def _discard(self, name: str) -> None:
        with contextlib.suppress(StorageError):
            await self._lvm("lvremove", ["-f", f"{self.vg}/{name}"], check=False)

    async def _lvm(
        self, program: str, args: Sequence[str], *, check: bool = True
    ) -> runner.CommandResult:
        return await self._run(
            [program, *self.lvm_args, *args], timeout_s=self.timeout_s, check=check
        )
