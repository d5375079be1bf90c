"""Snapshots of disks on logical volumes (`plain`, and a `drbd` instance's data LVs): LVM snapshots.

One snapshot LV per disk, `snap-corral-<instance>-disk<N>-<snapshot>` ('_' written '+', as disks' names are),
tagged `corral-snapshot=<instance>/<snapshot>/<N>/<disks>`, `corral-snap-made=<unix time>` and
`corral-snap-consistency=<word>`. The tags are the record: a snapshot is complete when it has an LV for each of
its disks, so one cut short by a crash between two disks shows as a leftover, never as a snapshot.

- Why LVM's copy-on-write and not copies: taking one is instant whatever the disk's size (a suspend of the
  device-mapper table, which also flushes it), and a revert (`lvconvert --merge`) writes back only what changed.
- Its size: the origin's, plus LVM's overhead, so it can never fill up and be invalidated, however much the
  guest rewrites (LVM trims the request to the most it can use). It is taken from the volume group's free
  space when it is made, and the space shown is that.
- A revert merges the snapshot into its disk, which consumes it; it is taken again at once of the reverted,
  stopped disk, so it is still there to go back to (made, consistency: the original's). A revert cut short
  between those steps leaves the disk reverted and the snapshot gone for that disk (a leftover `cluster verify`
  names).
- LVM refuses to grow an active origin: a disk with snapshots is not grown (the master says so at submit).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence

from storage.base import MIB
from storage.errors import InvalidName, NoSpace, StorageError
from storage.filesnap import SnapshotError, SnapshotInfo, check_snapshot_name
from storage.lvm import PlainTemplate
from storage.lvmparse import DM_NAME_MAX, LV_PREFIX, LvReport, dm_name

TAG_SNAPSHOT = "corral-snapshot="
TAG_MADE = "corral-snap-made="
TAG_CONSISTENCY = "corral-snap-consistency="
SNAP_PREFIX = "snap-"


def snapshot_lv_name(vg: str, instance: str, index: int, snap: str) -> str:
    """The LV holding disk `index`'s part of a snapshot; InvalidName when the names are too long for LVM."""
    check_snapshot_name(snap)
    name = f"{SNAP_PREFIX}{LV_PREFIX}{instance.replace('_', '+')}-disk{index}-{snap.replace('_', '+')}"
    length = len(dm_name(vg, name))
    if length > DM_NAME_MAX:
        raise InvalidName(snap, f"for instance '{instance}' in volume group {vg!r} its LVM device name would be "
                                f"{length} characters, at most {DM_NAME_MAX} fit; use a shorter snapshot name "
                                "(each '-' counts twice)")
    return name


def cow_mib(size_mib: int) -> int:
    """What a snapshot of a disk of size_mib asks of the volume group: enough to hold every block rewritten
    (LVM's exception store adds under 1/32 of the origin, measured 4 MiB on 64 MiB); LVM gives back the excess."""
    return size_mib + math.ceil(size_mib / 32) + 4


def snapshot_tags(instance: str, snap: str, index: int, disks: int, made: float, consistency: str) -> list[str]:
    return [f"{TAG_SNAPSHOT}{instance}/{snap}/{index}/{disks}", f"{TAG_MADE}{int(made)}",
            f"{TAG_CONSISTENCY}{consistency}"]


def parse_snapshot_tags(tags: Sequence[str]) -> tuple[str, str, int, int, float, str] | None:
    """(instance, snapshot, index, disks, made, consistency) from a snapshot LV's tags; None if not one of ours."""
    fields = {prefix: next((t[len(prefix):] for t in tags if t.startswith(prefix)), None)
              for prefix in (TAG_SNAPSHOT, TAG_MADE, TAG_CONSISTENCY)}
    which, made, consistency = fields[TAG_SNAPSHOT], fields[TAG_MADE], fields[TAG_CONSISTENCY]
    if which is None:
        return None
    parts = which.split("/")
    if len(parts) != 4 or not all(parts) or not (parts[2].isdigit() and parts[3].isdigit()):
        return None
    return (parts[0], parts[1], int(parts[2]), int(parts[3]), float(made) if made and made.isdigit() else 0.0,
            consistency or "crash")


def gather(lvs: Sequence[LvReport], vg: str) -> tuple[dict[str, list[SnapshotInfo]], list[str],
                                                         dict[str, list[str]]]:
    """Every instance's complete snapshots in the volume group, what is wrong with any (an invalid snapshot),
    and per instance the LVs of incomplete ones (leftovers of a snapshot, revert or removal cut short)."""
    parts: dict[tuple[str, str], list[tuple[int, int, float, str, LvReport]]] = {}
    for lv in lvs:
        found = parse_snapshot_tags(lv.tags)
        if found is not None:
            instance, snap, index, disks, made, consistency = found
            parts.setdefault((instance, snap), []).append((index, disks, made, consistency, lv))
    snapshots: dict[str, list[SnapshotInfo]] = {}
    problems: list[str] = []
    leftovers: dict[str, list[str]] = {}
    origins = {lv.name: lv for lv in lvs}
    for (instance, snap), pieces in sorted(parts.items()):
        indices = {p[0] for p in pieces}
        if len(indices) != pieces[0][1] or len(pieces) != len(indices):
            leftovers.setdefault(instance, []).extend(f"/dev/{vg}/{p[4].name}" for p in pieces)
            continue
        invalid = [p[4].name for p in pieces if p[4].attr[4:5] == "I"]
        if invalid:
            problems.append(f"snapshot '{snap}' of instance '{instance}' is invalid (LV {', '.join(invalid)} "
                            "overflowed or its origin failed): it cannot be reverted to; remove it")
        sizes = {p[0]: origins[p[4].origin].size_bytes if p[4].origin in origins else p[4].size_bytes
                 for p in pieces}
        snapshots.setdefault(instance, []).append(SnapshotInfo(
            snap, min(p[2] for p in pieces), pieces[0][3], sizes, sum(p[4].size_bytes for p in pieces)))
    for found_list in snapshots.values():
        found_list.sort(key=lambda s: (s.created, s.name))
    return snapshots, problems, leftovers


Instant = Callable[[Callable[[str], Awaitable[None]]], Awaitable[str]]


class LvmSnapshots:
    """The snapshots of a volume group's disks (the `plain` template's LVs)."""

    def __init__(self, lvm: PlainTemplate) -> None:
        self.lvm = lvm

    async def everything(self) -> tuple[dict[str, list[SnapshotInfo]], list[str], dict[str, list[str]]]:
        return gather(await self.lvm.logical_volumes(), self.lvm.vg)

    async def snapshots(self, instance: str) -> list[SnapshotInfo]:
        return (await self.everything())[0].get(instance, [])

    async def get(self, instance: str, snap: str) -> SnapshotInfo:
        for info in await self.snapshots(instance):
            if info.name == snap:
                return info
        raise SnapshotError(f"instance '{instance}' has no snapshot named '{snap}' in volume group {self.lvm.vg} "
                            "on this node")

    async def create(self, instance: str, snap: str, indices: list[int], made: float,
                     instant: Instant | None = None) -> SnapshotInfo:
        """A snapshot of every listed disk, taken inside `instant` (which holds the running guest still for it,
        and says how consistent that makes it) or, for a stopped instance, as they are ("stopped"). All or
        nothing: the LVs already made go again if one fails."""
        lvs = {lv.name: lv for lv in await self.lvm.logical_volumes()}
        names = {i: snapshot_lv_name(self.lvm.vg, instance, i, snap) for i in indices}
        if any(n in lvs for n in names.values()) or snap in {s.name for s in (await self.snapshots(instance))}:
            raise SnapshotError(f"instance '{instance}' already has a snapshot named '{snap}'")
        origins = {i: lvs.get(self.lvm.lv_name(instance, i)) for i in indices}
        missing = [i for i, lv in origins.items() if lv is None]
        if missing:
            raise SnapshotError(f"instance '{instance}' has no disk {missing[0]} in volume group {self.lvm.vg} here")
        sizes = {i: math.ceil(lv.size_bytes / MIB) for i, lv in origins.items() if lv is not None}
        needed = sum(cow_mib(s) for s in sizes.values())
        free = (await self.lvm.vg_info())[1]
        if needed > free:
            raise NoSpace(f"volume group {self.lvm.vg}", needed, free)
        made_lvs: list[str] = []

        async def take(consistency: str) -> None:
            for index, size in sorted(sizes.items()):
                tags = snapshot_tags(instance, snap, index, len(indices), made, consistency)
                await self.lvm.run_lvm("lvcreate", ["--yes", "-s", "-n", names[index], "-L", f"{cow_mib(size)}m",
                                                    *[a for t in tags for a in ("--addtag", t)],
                                                    f"{self.lvm.vg}/{self.lvm.lv_name(instance, index)}"])
                made_lvs.append(names[index])

        try:
            if instant is None:
                await take("stopped")
            else:
                await instant(take)
        except BaseException:
            for name in made_lvs:
                await self.lvm.run_lvm("lvremove", ["-f", f"{self.lvm.vg}/{name}"], check=False)
            raise
        return await self.get(instance, snap)

    async def revert(self, instance: str, snap: str) -> None:
        """Each disk merged back to the snapshot (disks not in use: the instance stopped, DRBD down), then the
        snapshot taken again of the reverted disk so it stays."""
        info = await self.get(instance, snap)
        lvs = {lv.name: lv for lv in await self.lvm.logical_volumes()}
        for index in sorted(info.disks):
            origin = lvs.get(self.lvm.lv_name(instance, index))
            if origin is not None and origin.attr[5:6] == "o":
                raise SnapshotError(f"disk {index} of '{instance}' ({self.lvm.vg}/{origin.name}) is in use: LVM "
                                    "merges a snapshot back only into a disk nothing holds open")
        for index in sorted(info.disks):
            name = snapshot_lv_name(self.lvm.vg, instance, index, snap)
            snap_lv = lvs[name]
            # --interval 1: without lvmpolld, lvconvert looks once at the merge, then every 15 s by default.
            await self.lvm.run_lvm("lvconvert", ["--merge", "--interval", "1", f"{self.lvm.vg}/{name}"],
                                   timeout_s=self.lvm.copy_timeout_s)
            tags = [a for t in snap_lv.tags for a in ("--addtag", t)]
            await self.lvm.run_lvm("lvcreate", ["--yes", "-s", "-n", name, "-L", f"{snap_lv.size_bytes // MIB}m",
                                                *tags, f"{self.lvm.vg}/{self.lvm.lv_name(instance, index)}"])

    async def remove(self, instance: str, snap: str) -> bool:
        """The snapshot's LVs gone (a leftover's too); False if there were none (idempotent)."""
        doomed = [lv.name for lv in await self.lvm.logical_volumes()
                  if (found := parse_snapshot_tags(lv.tags)) and found[:2] == (instance, snap)]
        for name in doomed:
            try:
                await self.lvm.run_lvm("lvremove", ["-f", f"{self.lvm.vg}/{name}"])
            except StorageError as exc:
                raise SnapshotError(f"snapshot '{snap}' of '{instance}': LV {self.lvm.vg}/{name} was not removed: "
                                    f"{exc}") from exc
        return bool(doomed)
