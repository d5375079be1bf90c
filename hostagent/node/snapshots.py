"""This node's side of instance snapshots (`corral instance snapshot`): made, listed, reverted, removed.

Snapshots of `file` and `mirror` instances are copies of their disks beside them on the primary
(storage.filesnap says why copies). A running guest is copied by QEMU's backup job (kvm.blockbackup) as of
one instant while it goes on; a stopped one with qemu-img, holding a read lock on the disks, so a start
that races the copy fails rather than changing the disks under it. Progress is kept per instance for the
master's status order, which turns it into the job's progress line with throughput and ETA.

Snapshots of `plain` instances, and of a `drbd` instance's data LVs on its primary, are LVM snapshots
(storage.lvmsnap), taken at once, the running guest held still for that instant (hostagent.node.livecopy). A
drbd revert takes the resources down here first (DRBD holds the data LVs open) and up again after; the master
has made the secondary's copy start afresh, so DRBD then copies every block to it.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from kvm.blockbackup import BackupError, BackupTarget
from kvm.process import QemuManager
from kvm.qmp import QmpError
from storage.errors import StorageError
from storage.filesnap import FileSnapshots, SnapshotInfo
from storage.lvmsnap import LvmSnapshots

from hostagent.clock import SYSTEM, Clock
from hostagent.node.disks import NodeDisks
from hostagent.node.executor import Order, OrderError
from hostagent.node.livecopy import at_one_instant, copy_running

log = logging.getLogger(__name__)

SNAPSHOT_TIMEOUT_S = 6 * 3600.0
SNAPSHOT_TEMPLATES = ("file", "mirror", "plain", "drbd")
ON_LVM = ("plain", "drbd")


class NodeSnapshots:
    """Orders instance.snapshot-{create,status,list,revert,remove}."""

    def __init__(self, node: str, qemu: QemuManager, disks: NodeDisks, clock: Clock = SYSTEM) -> None:
        self._node, self._qemu, self._clock, self._disks = node, qemu, clock, disks
        self._snaps = FileSnapshots(disks.files)
        self._progress: dict[str, tuple[int, int]] = {}  # instance -> (bytes copied, bytes in all)

    @property
    def snaps(self) -> FileSnapshots:
        return self._snaps

    def orders(self) -> dict[str, Order]:
        return {"instance.snapshot-create": self._create, "instance.snapshot-status": self._status,
                "instance.snapshot-list": self._list, "instance.snapshot-revert": self._revert,
                "instance.snapshot-remove": self._remove}

    def _check(self, args: dict[str, Any]) -> tuple[str, str]:
        if args.get("disk_template") not in SNAPSHOT_TEMPLATES:
            raise OrderError(f"instance '{args['name']}': snapshots are made of {' and '.join(SNAPSHOT_TEMPLATES)} "
                             f"disks on this node, not {args.get('disk_template')!r}")
        return str(args["name"]), str(args.get("snapshot", ""))

    def _lvm(self, args: dict[str, Any]) -> LvmSnapshots:
        try:
            return LvmSnapshots(self._disks.volumes(str(args["disk_template"])))
        except StorageError as exc:
            raise OrderError(str(exc)) from exc

    async def _create(self, args: dict[str, Any]) -> dict[str, Any]:
        name, snap = self._check(args)
        indices = [int(d["index"]) for d in args["disks"]]
        running = self._qemu.find(name) is not None
        if args["disk_template"] in ON_LVM:
            return await self._create_lvm(args, name, snap, indices, running)
        try:
            if running:
                sizes = await self._snaps.disk_sizes(name, indices)
                total = sum(s[2] for s in sizes.values())
                self._progress[name] = (0, total)
                targets = await self._snaps.prepare(name, snap, {i: s[2] for i, s in sizes.items()})
                log.info("instance '%s': snapshot '%s' copied from the running guest as of now", name, snap)
                consistency = await copy_running(
                    self._qemu, name, [BackupTarget(i, p) for i, p in targets.items()], SNAPSHOT_TIMEOUT_S,
                    progress=lambda done, all_: self._progress.__setitem__(name, (done, all_)))
                disks = {i: s[2] for i, s in sizes.items()}
            else:
                disks, consistency = await self._snaps.copy_stopped(name, snap, indices), "stopped"
            info = await self._snaps.commit(name, snap, disks, self._clock.time(), consistency)
        except (BackupError, QmpError, StorageError, OSError) as exc:
            self._snaps.abort(name, snap)
            raise OrderError(f"snapshot '{snap}' of instance '{name}' on node '{self._node}' failed: {exc}") from exc
        finally:
            self._progress.pop(name, None)
        log.info("instance '%s': snapshot '%s' made on node '%s' (%s, %d MiB on disk)", name, snap, self._node,
                 consistency, info.used_bytes >> 20)
        return _row(info, self._node)

    async def _create_lvm(self, args: dict[str, Any], name: str, snap: str, indices: list[int],
                          running: bool) -> dict[str, Any]:
        def instant(take: Any) -> Any:
            return at_one_instant(self._qemu, name, len(indices), take)

        try:
            info = await self._lvm(args).create(name, snap, indices, self._clock.time(), instant if running else None)
        except (QmpError, StorageError, OSError) as exc:
            raise OrderError(f"snapshot '{snap}' of instance '{name}' on node '{self._node}' failed: {exc}") from exc
        log.info("instance '%s': LVM snapshot '%s' made on node '%s' (%s, %d MiB of the volume group)", name, snap,
                 self._node, info.consistency, info.used_bytes >> 20)
        return _row(info, self._node)

    async def _status(self, args: dict[str, Any]) -> dict[str, Any]:
        done, total = self._progress.get(str(args["name"]), (0, 0))
        return {"done": done, "total": total}

    async def _list(self, args: dict[str, Any]) -> dict[str, Any]:
        name, _ = self._check(args)
        try:
            found = (await self._lvm(args).snapshots(name) if args["disk_template"] in ON_LVM
                     else self._snaps.snapshots(name))
            return {"snapshots": [_row(s, self._node) for s in found]}
        except StorageError as exc:
            raise OrderError(str(exc)) from exc

    async def _revert(self, args: dict[str, Any]) -> dict[str, Any]:
        name, snap = self._check(args)
        if self._qemu.find(name) is not None:
            raise OrderError(f"instance '{name}' is running on node '{self._node}': a snapshot is reverted only "
                             f"while it is stopped (`corral instance stop {name}`)")
        try:
            if args["disk_template"] == "drbd":
                await self._revert_drbd(args, name, snap)
            elif args["disk_template"] in ON_LVM:
                await self._lvm(args).revert(name, snap)
            else:
                await self._snaps.revert(name, snap)
        except StorageError as exc:
            raise OrderError(str(exc)) from exc
        log.warning("instance '%s': disks reverted to snapshot '%s' on node '%s'", name, snap, self._node)
        return {"reverted": snap}

    async def _revert_drbd(self, args: dict[str, Any], name: str, snap: str) -> None:
        """The resources down (DRBD lets go of the data LVs; activated disks are let go too, and a device
        something holds open stops it here, before anything changed), the LVs merged back, the resources up
        again."""
        drbd, resources = self._disks.drbd, self._disks.drbd_disks(args["instance"])
        if drbd is None:
            raise OrderError(f"node '{self._node}' has no DRBD: set [storage] volume_group in its agent.toml")
        await self._lvm(args).get(name, snap)  # there, before anything is taken down
        async with drbd.taken_down(self._node, resources):
            await self._lvm(args).revert(name, snap)

    async def _remove(self, args: dict[str, Any]) -> dict[str, Any]:
        name, snap = self._check(args)
        try:
            removed = (await self._lvm(args).remove(name, snap) if args["disk_template"] in ON_LVM
                       else self._snaps.remove(name, snap))
        except StorageError as exc:
            raise OrderError(str(exc)) from exc
        return {"removed": removed}


def _row(info: SnapshotInfo, node: str) -> dict[str, Any]:
    row = dataclasses.asdict(info)
    row["disks"] = {str(i): size for i, size in info.disks.items()}
    return {**row, "node": node}
