"""Backups written on another node than the instance's, and instances imported on another node than their
backup's: this node receives the images over TLS.

The receiving node makes the backup's images (empty qcow2 of each disk's size, in a hidden partial backup
directory) and serves each over NBD to the sending node only (TLS, its certificate the one identity
accepted: kvm.nbdexport); the sender's running QEMU copies into them with its backup job, or qemu-img
writes a stopped instance's disks (hostagent.node.backups). Then the receiver stops serving, compresses if
asked, and puts the backup in place, or throws the partial one away. An import is received the same way
into the new instance's disks, made empty at their size, which the backup's node writes with qemu-img.
Nothing passes through the CLI or the master: the master only orders both ends.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from typing import Any

from kvm import nbdexport
from storage import runner
from storage.backupdir import BackupDirs
from storage.errors import StorageError
from storage.filedisk import FileTemplate, fsync_path

from hostagent.node.executor import Order, OrderError, client_identity, installed_marker

log = logging.getLogger(__name__)

COMPRESS_TIMEOUT_S = 6 * 3600.0


def receive_name(instance: str, index: int) -> str:
    """The NBD export name of disk `index` of a backup being received."""
    return f"backup-{instance}-disk{index}"


class BackupReceiver:
    """Orders backup.receive and backup.receive-end."""

    def __init__(self, node: str, address: str, dirs: BackupDirs, files: FileTemplate, run_dir: str,
                 tls_dir: Callable[[], str]) -> None:
        self._node, self._address, self._dirs, self._files, self._tls_dir = node, address, dirs, files, tls_dir
        self._run_dir = os.path.join(run_dir, "backups")

    def orders(self) -> dict[str, Order]:
        return {"backup.receive": self._receive, "backup.receive-end": self._end,
                "backup.receive-disks": self._receive_disks, "backup.receive-disks-end": self._disks_end}

    async def _serve(self, name: str, images: dict[int, tuple[str, str]], client: str, port_base: int) -> dict[str, Any]:
        """Each (path, format) image served to `client` on port_base + index."""
        ports = {}
        for index, (path, fmt) in images.items():
            ports[str(index)] = port_base + index
            await nbdexport.start_export(nbdexport.NbdExportSpec(
                image_path=path, fmt=fmt, host=self._address, port=ports[str(index)],
                export_name=receive_name(name, index), pidfile=self._pidfile(name, index),
                tls_dir=self._tls_dir(), client_identity=client_identity(client),
                writethrough=False))  # synced before the images count (backup committed, disks marked made)
        return {"host": self._address, "ports": ports}

    def _pidfile(self, instance: str, index: int) -> str:
        return os.path.join(self._run_dir, f"{receive_name(instance, index)}.pid")

    async def _receive(self, args: dict[str, Any]) -> dict[str, Any]:
        """A partial backup with an image per disk, each served to `client` on port_base + index."""
        name, disks = str(args["name"]), {int(i): int(size) for i, size in args["disks"].items()}
        try:
            partial = self._dirs.begin(args["directory"], name, args["backup_id"], int(args["needed_bytes"]))
            targets = await self._dirs.make_targets(partial, disks)
            served = await self._serve(name, {i: (p, "qcow2") for i, p in targets.items()}, str(args["client"]),
                                       int(args["port_base"]))
        except (StorageError, nbdexport.ExportError, OSError) as exc:
            await self._stop(name, list(disks))
            self._dirs.abort(self._dirs.partial(args["directory"], name, args["backup_id"]))
            raise OrderError(f"node '{self._node}' cannot receive a backup of '{name}': {exc}") from exc
        log.info("instance '%s': receiving a backup from node '%s' into %s", name, args["client"], partial)
        return served

    async def _stop(self, name: str, indices: list[int]) -> None:
        for index in indices:
            await nbdexport.stop_export(self._pidfile(name, index))

    async def _end(self, args: dict[str, Any]) -> dict[str, Any]:
        """Stop serving; then the backup put in place (commit, with its metadata) or thrown away."""
        name, indices = str(args["name"]), [int(i) for i in args["disks"]]
        await self._stop(name, indices)
        partial = self._dirs.partial(args["directory"], name, args["backup_id"])
        if not args.get("commit"):
            self._dirs.abort(partial)
            log.warning("instance '%s': the backup being received from another node was thrown away", name)
            return {"committed": False}
        try:
            if args["meta"].get("compressed"):
                for index in indices:
                    image = os.path.join(partial, f"disk{index}.qcow2")
                    await runner.run(["qemu-img", "convert", "-c", "-O", "qcow2", image, f"{image}.packed"],
                                     timeout_s=COMPRESS_TIMEOUT_S)
                    os.replace(f"{image}.packed", image)
            info = await self._dirs.commit(partial, args["meta"])
        except (StorageError, OSError) as exc:
            self._dirs.abort(partial)
            raise OrderError(f"the backup of '{name}' received on node '{self._node}' was not kept: {exc}") from exc
        log.info("instance '%s': backup received from node '%s' kept at %s", name, args["meta"].get("source_node"),
                 info.path)
        return info.row()

    async def _receive_disks(self, args: dict[str, Any]) -> dict[str, Any]:
        """The new instance's disks made empty at their size and served to the backup's node (`client`)."""
        inst = args["instance"]
        name = str(inst["name"])
        images: dict[int, tuple[str, str]] = {}
        try:
            for disk in sorted(inst["disks"], key=lambda d: int(d["index"])):
                index = int(disk["index"])
                if await self._files.exists(name, index):  # left by an import cut short: never a made disk
                    await self._files.remove(name, index)
                images[index] = (await self._files.create(name, index, int(disk["size_mib"]), disk["format"]),
                                 disk["format"])
            return await self._serve(name, images, str(args["client"]), int(args["port_base"]))
        except (StorageError, nbdexport.ExportError, OSError) as exc:
            await self._stop(name, list(images))
            for index in images:
                await self._files.remove(name, index)
            raise OrderError(f"node '{self._node}' cannot receive the disks of '{name}': {exc}") from exc

    async def _disks_end(self, args: dict[str, Any]) -> dict[str, Any]:
        """Stop serving; the disks then count as made (the marker a re-sent create looks for), or go."""
        inst = args["instance"]
        name, indices = str(inst["name"]), [int(d["index"]) for d in inst["disks"]]
        await self._stop(name, indices)
        if not args.get("commit"):
            for index in indices:
                await self._files.remove(name, index)
            return {"created": False}
        for index in indices:
            await asyncio.to_thread(fsync_path, self._files.locate(name, index)[0])
        marker = installed_marker(self._files, name)
        with open(marker, "w") as fh:
            fh.write(inst["uuid"])
        log.info("instance '%s': disks received from backup %s", name, args.get("path", ""))
        return {"created": True}
