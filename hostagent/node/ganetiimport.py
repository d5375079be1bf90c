"""This node's side of `corral backup import --ganeti`: an export written by Ganeti's `gnt-backup export`.

Such an export is a directory (under this node's export directories) holding `config.ini` and one dump file
per disk. With an OS, each dump is what that OS's `export` script wrote, so it goes back through the same
OS's `import` script (Ganeti OS API: IMPORT_DEVICE, IMPORT_INDEX, the dump on its stdin) into a new raw
disk; an image OS here takes the dump as a raw disk image. The master reads config.ini through
`backup.read-ganeti` and maps it (hostagent.master.decide.ganeti_export); this module only reads files and
makes disks, all or none.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any, BinaryIO

from storage.backupdir import BackupDirs
from storage.errors import StorageError
from storage.osdef import DiskEnv, OsCatalog, OsImage, lookup, os_environment, run_import, split_os_name

from hostagent.node.disks import NodeDisks
from hostagent.node.executor import Order, OrderError, installed_marker, nic_envs, read_small_file

log = logging.getLogger(__name__)

CONFIG_MAX_BYTES = 1 << 20  # a config.ini is a few KiB; a larger file is not one


class NodeGanetiImport:
    """Orders backup.read-ganeti and backup.import-ganeti."""

    def __init__(self, node: str, disks: NodeDisks, dirs: BackupDirs, catalog: Callable[[], OsCatalog],
                 log_dir: str, timeout_s: float, reading: Callable[[str, int, int, int], Callable[[BinaryIO], None]],
                 finished: Callable[[str], None]) -> None:
        """`reading(instance, before, total, size)` follows an import script through a dump (the node's
        backup.status answers with it); `finished(instance)` ends that."""
        self._node, self._disks, self._dirs, self._catalog = node, disks, dirs, catalog
        self._log_dir, self._timeout_s, self._reading, self._finished = log_dir, timeout_s, reading, finished

    def orders(self) -> dict[str, Order]:
        return {"backup.read-ganeti": self._read, "backup.import-ganeti": self._import}

    def _directory(self, path: Any) -> str:
        try:
            directory = self._dirs.check_backup(str(path))
        except StorageError as exc:
            raise OrderError(str(exc)) from exc
        if not os.path.isdir(directory):
            raise OrderError(f"{directory} is not a directory on node '{self._node}'")
        return directory

    async def _read(self, args: dict[str, Any]) -> dict[str, Any]:
        """config.ini's text and the size of every file beside it."""
        directory = self._directory(args["path"])
        config = os.path.join(directory, "config.ini")
        if not os.path.isfile(config):
            corral = " (it has backup.json: a Corral backup, imported without --ganeti)" if os.path.exists(
                os.path.join(directory, "backup.json")) else ""
            raise OrderError(f"{directory} is not a Ganeti export: it has no config.ini{corral}")
        if os.path.getsize(config) > CONFIG_MAX_BYTES:
            raise OrderError(f"{config} is larger than {CONFIG_MAX_BYTES >> 20} MiB: not a Ganeti config.ini")
        with open(config, encoding="utf-8", errors="replace") as fh:
            text = fh.read()
        files = {n: os.path.getsize(os.path.join(directory, n)) for n in sorted(os.listdir(directory))
                 if os.path.isfile(os.path.join(directory, n))}
        return {"path": directory, "config": text, "files": files}

    async def _import(self, args: dict[str, Any]) -> dict[str, Any]:
        """The new instance's disks made from the dumps (index -> file name in the export directory)."""
        inst = args["instance"]
        name = str(inst["name"])
        directory = self._directory(args["path"])
        marker = installed_marker(self._disks.files, name)
        if read_small_file(marker) == inst["uuid"]:
            return {"created": False}
        dumps = {int(i): os.path.join(directory, str(f)) for i, f in args["dumps"].items()
                 if os.path.basename(str(f)) == str(f)}
        missing = [d["index"] for d in inst["disks"] if not os.path.isfile(dumps.get(int(d["index"]), ""))]
        if missing:
            raise OrderError(f"the Ganeti export {directory} lacks the dump of disk(s) {missing}")
        template = self._disks.for_instance(inst)
        entry = lookup(self._catalog(), inst["os"])
        made: list[int] = []
        try:
            for disk in sorted(inst["disks"], key=lambda d: int(d["index"])):
                index = int(disk["index"])
                if await template.exists(name, index):
                    await template.remove(name, index)  # left by an import cut short
                if isinstance(entry, OsImage):  # no import script: the dump is a raw disk image
                    await template.clone_image(name, index, dumps[index], int(disk["size_mib"]), disk["format"],
                                               image_fmt="raw")
                else:  # the import script writes the device: raw
                    await template.create(name, index, int(disk["size_mib"]), "raw")
                made.append(index)
            if not isinstance(entry, OsImage):
                _, variant = split_os_name(inst["os"])
                disk_envs = [DiskEnv(template.locate(name, i)[0], int(d["size_mib"]), d.get("uuid", ""), f"disk{i}")
                             for d in inst["disks"] for i in [int(d["index"])]]
                env = os_environment(
                    entry, instance_name=name, instance_uuid=inst["uuid"], primary_node=self._node,
                    secondary_nodes=[s for s in [inst.get("secondary_node")] if s],
                    hvparams={k: str(v) for k, v in args.get("hvparams", {}).items()},
                    beparams={"memory": str(inst["memory_mib"]), "vcpus": str(inst["vcpus"])},
                    disks=disk_envs, nics=nic_envs(inst, args.get("networks") or {}), variant=variant,
                    osparams=inst.get("osparams", {}))
                read = {i: os.path.getsize(dumps[i]) for i in made}
                for index in made:
                    before = sum(read[i] for i in made if i < index)
                    await run_import(entry, env, index, disk_envs[index].path, dumps[index], self._log_dir,
                                     self._timeout_s, self._reading(name, before, sum(read.values()), read[index]))
        except (StorageError, OSError) as exc:
            for index in made:
                await template.remove(name, index)
            raise OrderError(f"instance '{name}': disks not made from the Ganeti export {directory}: {exc}") from exc
        except BaseException:
            for index in made:
                await template.remove(name, index)
            raise
        finally:
            self._finished(name)
        os.makedirs(os.path.dirname(marker), mode=0o700, exist_ok=True)
        with open(marker, "w") as fh:
            fh.write(inst["uuid"])
        log.info("instance '%s': disks made on node '%s' from the Ganeti export %s", name, self._node, directory)
        return {"created": True}
