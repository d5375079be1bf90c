"""Backups of instances whose OS is a script OS, through that OS's own `export` and `import` scripts.

Ganeti's OS API has each OS say how its disks are saved and brought back: `export` writes disk EXPORT_INDEX,
read from EXPORT_DEVICE, to its stdout, and `import` writes what it reads on stdin to IMPORT_DEVICE. An OS may
dump only its file systems' contents, or compress, so a backup of such an instance holds `disk<i>.dump`, the
script's output, instead of a qcow2 image, and its backup.json names the OS (storage.backupdir). Image OSes,
and disks that are not raw (a qcow2 file disk is not a device a script can read), are copied as qcow2 images.

A running guest is first copied as of one instant into a sparse raw file beside the dump (QEMU's backup job),
the script reads that, and the file goes; a stopped one's disk is read in place. Restores and imports run the
`import` script onto the disk (a file disk is then given back its size: scripts that write with dd truncate).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping
from typing import Any, BinaryIO

from storage.errors import StorageError
from storage.install import Disks
from storage.osdef import DiskEnv, OsCatalog, OsDefinition, lookup, os_environment, run_export, run_import, split_os_name

from hostagent.node.executor import nic_envs

Opened = Callable[[BinaryIO], None]


class OsDumps:
    """The export and import scripts of this node's script OSes, run for backups."""

    def __init__(self, node: str, catalog: Callable[[], OsCatalog], log_dir: str, timeout_s: float) -> None:
        self._node, self._catalog, self._log_dir, self._timeout_s = node, catalog, log_dir, timeout_s

    def script_os(self, inst: Mapping[str, Any]) -> OsDefinition | None:
        """The instance's OS when its backups go through the OS's scripts: a script OS, every disk raw."""
        try:
            entry = lookup(self._catalog(), str(inst.get("os") or ""))
        except StorageError:  # an OS this node lacks: the backup holds qcow2 images
            return None
        if not isinstance(entry, OsDefinition) or any(d.get("format", "raw") != "raw" for d in inst["disks"]):
            return None
        return entry

    def definition(self, name: str) -> OsDefinition:
        """The script OS that wrote a backup's dumps; StorageError when this node lacks it."""
        entry = lookup(self._catalog(), name)
        if not isinstance(entry, OsDefinition):
            raise StorageError(f"OS '{name}' is an image OS on node '{self._node}': the backup's dumps were written "
                               "by a script OS of that name, whose import script reads them")
        return entry

    def _env(self, entry: OsDefinition, inst: Mapping[str, Any], paths: Mapping[int, str]) -> dict[str, str]:
        _, variant = split_os_name(str(inst["os"]))
        disks = [DiskEnv(paths.get(int(d["index"]), ""), int(d["size_mib"]), d.get("uuid", ""), f"disk{d['index']}")
                 for d in sorted(inst["disks"], key=lambda d: int(d["index"]))]
        return os_environment(
            entry, instance_name=str(inst["name"]), instance_uuid=str(inst.get("uuid", "")), primary_node=self._node,
            secondary_nodes=[s for s in [inst.get("secondary_node")] if s], hvparams={},
            beparams={"memory": str(inst["memory_mib"]), "vcpus": str(inst["vcpus"])}, disks=disks,
            nics=nic_envs(dict(inst), {}), variant=variant, osparams=inst.get("osparams", {}))

    async def export(self, entry: OsDefinition, inst: Mapping[str, Any], index: int, device: str, dump: str,
                     paths: Mapping[int, str]) -> None:
        await run_export(entry, self._env(entry, inst, paths), index, device, dump, self._log_dir, self._timeout_s)

    async def restore(self, entry: OsDefinition, inst: Mapping[str, Any], index: int, device: str, dump: str,
                      size_bytes: int, paths: Mapping[int, str], on_open: Opened | None = None) -> None:
        """The dump through the import script onto `device`; a file keeps (or gets back) `size_bytes`.
        `on_open`: the dump's file as the script reads it (storage.osdef.run_import)."""
        await run_import(entry, self._env(entry, inst, paths), index, device, dump, self._log_dir, self._timeout_s,
                         on_open)
        if not device.startswith("/dev/") and os.path.getsize(device) < size_bytes:
            os.truncate(device, size_bytes)

    async def write_disk(self, entry: OsDefinition, inst: Mapping[str, Any], index: int, path: str, dump: str,
                         size: int, paths: Mapping[int, str], on_open: Opened | None = None) -> None:
        """A dump through the import script onto an existing disk: an LV or DRBD device in place, a file beside
        it and renamed over it (a cut leaves the disk as it was)."""
        if path.startswith("/dev/"):
            await self.restore(entry, inst, index, path, dump, size, paths, on_open)
            return
        tmp = os.path.join(os.path.dirname(path), f".disk{index}.{os.getpid()}.import")
        try:
            with open(tmp, "wb") as fh:
                fh.truncate(size)
            await self.restore(entry, inst, index, tmp, dump, size, paths, on_open)
            os.chmod(tmp, 0o600)
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    async def make_disks(self, template: Disks, inst: Mapping[str, Any], entry: OsDefinition,
                         dumps: Mapping[int, str], on_disk: Callable[[int], Opened] | None = None) -> list[str]:
        """A new instance's disks made empty (raw) and filled by the OS's import script from the dumps (index
        -> file): all or none. `on_disk(index)`: what follows that disk's dump as it is read."""
        name, made = str(inst["name"]), []
        disks = sorted(inst["disks"], key=lambda d: int(d["index"]))
        try:
            for disk in disks:
                await template.create(name, int(disk["index"]), int(disk["size_mib"]), "raw")
                made.append(int(disk["index"]))
            paths = {int(d["index"]): template.locate(name, int(d["index"]))[0] for d in disks}
            for disk in disks:
                index = int(disk["index"])
                await self.restore(entry, inst, index, paths[index], dumps[index], int(disk["size_mib"]) << 20, paths,
                                   on_disk(index) if on_disk is not None else None)
        except BaseException:
            for index in made:
                await template.remove(name, index)
            raise
        return [paths[i] for i in sorted(paths)]
