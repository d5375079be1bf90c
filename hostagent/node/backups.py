"""This node's side of backups (`corral backup ...`): exports made, read, removed, and disks made from them.

An export of a running guest is copied by QEMU's backup job (kvm.blockbackup) as of one instant while it
goes on, straight into the backup's files; a stopped one with `qemu-img convert`, which holds a read lock on
the disks, so a start that races the copy fails rather than changing the disks under it. Backups are kept
under the node's export directories only (storage.backupdir). Progress is kept per instance for the master's
status order, which turns it into the job's progress line with throughput and ETA.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Callable
from typing import Any, BinaryIO

from kvm.blockbackup import BackupError as CopyError, BackupTarget, NbdTarget
from kvm.process import QemuManager
from kvm.qmp import QmpError
from storage import runner
from storage.backupdir import BackupDirs, BackupInfo, needed_bytes
from storage.errors import StorageError
from storage.filesnap import FileSnapshots, replace_disks
from storage.osdef import OsCatalog, OsDefinition
from storage.install import DiskSpec, install_from_images

from hostagent.clock import SYSTEM, Clock
from hostagent.config import AgentConfig
from hostagent.node.backupxfer import BackupReceiver, receive_name
from hostagent.node.disks import NodeDisks
from hostagent.node.executor import Order, OrderError, installed_marker, read_small_file
from hostagent.node.ganetiimport import NodeGanetiImport
from hostagent.node.livecopy import copy_running
from hostagent.node.osdumps import OsDumps

log = logging.getLogger(__name__)

BACKUP_TIMEOUT_S = 6 * 3600.0
TEMPLATES = ("file", "mirror", "plain", "drbd")
ON_LVM = ("plain", "drbd")
_PERCENT = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")


class NodeBackups:
    """Orders backup.{export,send,sizes,status,read,remove,restore,import-disks}, and backup.receive[-end]."""

    def __init__(self, cfg: AgentConfig, qemu: QemuManager, disks: NodeDisks, tls_dir: Callable[[], str],
                 catalog: Callable[[], OsCatalog], clock: Clock = SYSTEM) -> None:
        self._node, self._qemu, self._disks, self._clock, self._tls_dir = cfg.node_name, qemu, disks, clock, tls_dir
        self.dirs = dirs = BackupDirs(cfg.exports)
        self._receiver = BackupReceiver(cfg.node_name, cfg.address, dirs, disks.files, cfg.run_dir, tls_dir)
        self._ganeti = NodeGanetiImport(cfg.node_name, disks, dirs, catalog, os.path.join(cfg.log_dir, "os"),
                                        cfg.os_install_timeout_s, self.reading, self.finished)
        self._files = FileSnapshots(disks.files)
        self._dumps = OsDumps(cfg.node_name, catalog, os.path.join(cfg.log_dir, "os"), cfg.os_install_timeout_s)
        self._progress_dir = os.path.join(cfg.run_dir, "backups")
        # instance -> bytes done before the current copy, bytes in all, the current copy's bytes, its log
        self._progress: dict[str, tuple[int, int, int, str]] = {}
        self._reads: dict[str, BinaryIO] = {}  # instance -> the dump an OS import script reads (its position)

    def orders(self) -> dict[str, Order]:
        return {"backup.export": self._export, "backup.send": self._send, "backup.sizes": self._sizes,
                "backup.send-backup": self._send_backup,
                "backup.status": self._status, "backup.read": self._read,
                "backup.remove": self._remove, "backup.restore": self._restore,
                "backup.import-disks": self._import_disks, **self._receiver.orders(), **self._ganeti.orders()}

    def _template(self, name: str, template: Any) -> None:
        if template not in TEMPLATES:
            raise OrderError(f"instance '{name}': backups are made of {', '.join(TEMPLATES)} disks, not "
                             f"{template!r}")

    async def _sources(self, name: str, template: Any, indices: list[int]) -> dict[int, tuple[str, str, int]]:
        """index -> (path, format, bytes) of the instance's disks here: files, or LVs (a drbd disk's data LV
        is the disk byte for byte: its metadata is external)."""
        if template not in ON_LVM:
            return await self._files.disk_sizes(name, indices)
        lvm = self._disks.volumes(str(template))
        return {i: (lvm.path(name, i, "raw"), "raw", await lvm.size_mib(name, i) * 2**20) for i in indices}

    @staticmethod
    def _needed(template: Any, sizes: dict[int, tuple[str, str, int]]) -> int:
        """The most a backup of these disks takes: a file's blocks, an LV's whole size (its blocks are not known)."""
        if template in ON_LVM:
            return sum(s[2] for s in sizes.values())
        return needed_bytes([s[0] for s in sizes.values()])

    def _log_path(self, name: str) -> str:
        os.makedirs(self._progress_dir, mode=0o700, exist_ok=True)
        return os.path.join(self._progress_dir, f"{name}.progress")

    async def _export(self, args: dict[str, Any]) -> dict[str, Any]:
        inst = args["instance"]
        name, backup_id, compress = str(inst["name"]), str(args["backup_id"]), bool(args.get("compress"))
        self._template(name, inst.get("disk_template"))
        running = self._qemu.find(name) is not None
        if running and not args.get("live"):
            raise OrderError(f"instance '{name}' is running on node '{self._node}': export it with --live (a copy "
                             "as of one instant while it runs), or stop it first")
        partial, started = "", self._clock.time()  # a running guest's copy is of this instant
        rate = int(float(args.get("rate_mib_s") or 0) * 2**20)  # bytes/s a copy may take (0: all it can)
        try:
            sizes = await self._sources(name, inst["disk_template"], [int(d["index"]) for d in inst["disks"]])
            total = sum(s[2] for s in sizes.values())
            partial = self.dirs.begin(args["directory"], name, backup_id, self._needed(inst["disk_template"], sizes))
            consistency, entry = "stopped", self._dumps.script_os(inst)
            if entry is not None:
                consistency = await self._export_dumps(entry, inst, partial, sizes, running, rate)
            elif running:
                targets = await self.dirs.make_targets(partial, {i: s[2] for i, s in sizes.items()})
                consistency = await self._copy_running(name, [BackupTarget(i, p) for i, p in targets.items()], total,
                                                       compress, rate)
            else:
                await self._copy_stopped(name, partial, {i: (s[0], s[1], s[2]) for i, s in sizes.items()}, total,
                                         compress, rate)
            info = await self.dirs.commit(partial, {
                "created": started, "consistency": consistency,
                "compressed": compress and entry is None, "source_node": self._node,
                "dumps": entry.name if entry is not None else "",
                "disks": {str(i): s[2] for i, s in sizes.items()}, "instance": inst})
        except (CopyError, QmpError, StorageError, OSError) as exc:
            if partial:
                self.dirs.abort(partial)
            raise OrderError(f"export of instance '{name}' on node '{self._node}' failed: {exc}") from exc
        finally:
            self.finished(name)
        log.info("instance '%s': exported to %s (%s, %d MiB on disk)", name, info.path, info.consistency,
                 info.used_bytes >> 20)
        return info.row()

    async def _export_dumps(self, entry: OsDefinition, inst: dict[str, Any], partial: str,
                            sizes: dict[int, tuple[str, str, int]], running: bool, rate: int) -> str:
        """Each disk through the OS's export script into disk<i>.dump (hostagent.node.osdumps): a running
        guest's from a copy of one instant made first beside it; the consistency."""
        name, total = str(inst["name"]), sum(s[2] for s in sizes.values())
        disks = {i: s[0] for i, s in sizes.items()}
        sources, consistency = dict(disks), "stopped"
        if running:
            sources = {i: os.path.join(partial, f".disk{i}.raw") for i in sizes}
            for index, path in sources.items():
                await runner.run(["qemu-img", "create", "-q", "-f", "raw", path, str(sizes[index][2])], timeout_s=60)
            consistency = await self._copy_running(name, [BackupTarget(i, p, fmt="raw") for i, p in sources.items()],
                                                   total, False, rate)
        log.info("instance '%s': each disk exported through the export script of OS '%s'", name, entry.name)
        done = 0
        for index in sorted(sources):
            dump = os.path.join(partial, f"disk{index}.dump")
            self._progress[name] = (done, total, sizes[index][2], dump)  # the status reads the dump's growth
            await self._dumps.export(entry, inst, index, sources[index], dump, disks)
            if running:
                os.unlink(sources[index])
            done += sizes[index][2]
        return consistency

    async def _copy_running(self, name: str, targets: list[BackupTarget], total: int, compress: bool,
                            rate: int) -> str:
        """The running guest's copy (hostagent.node.livecopy), each disk's at most `rate` bytes/s; its
        consistency."""
        self._progress[name] = (0, total, 0, "")
        log.info("instance '%s': exported from the running guest as of now%s", name,
                 f", at most {rate >> 20} MiB/s a disk" if rate else "")
        return await copy_running(self._qemu, name, targets, BACKUP_TIMEOUT_S, compress=compress, speed_bytes_s=rate,
                                  progress=lambda done, all_: self._progress.__setitem__(name, (done, all_, 0, "")))

    async def _sizes(self, args: dict[str, Any]) -> dict[str, Any]:
        """What an export of the instance copies: each disk's bytes, and the blocks they hold (its space)."""
        inst = args["instance"]
        self._template(inst["name"], inst.get("disk_template"))
        try:
            sizes = await self._sources(inst["name"], inst["disk_template"], [int(d["index"]) for d in inst["disks"]])
        except StorageError as exc:
            raise OrderError(str(exc)) from exc
        return {"disks": {str(i): s[2] for i, s in sizes.items()}, "needed_bytes": self._needed(inst["disk_template"],
                                                                                                 sizes)}

    async def _send(self, args: dict[str, Any]) -> dict[str, Any]:
        """An export into another node's images (hostagent.node.backupxfer): a running guest as of one
        instant by QEMU's backup job, a stopped one's disks by qemu-img; nothing is kept here."""
        inst, host, ports = args["instance"], str(args["host"]), {int(i): int(p) for i, p in args["ports"].items()}
        name = str(inst["name"])
        self._template(name, inst.get("disk_template"))
        running = self._qemu.find(name) is not None
        if running and not args.get("live"):
            raise OrderError(f"instance '{name}' is running on node '{self._node}': export it with --live")
        started, consistency = self._clock.time(), "stopped"
        rate = int(float(args.get("rate_mib_s") or 0) * 2**20)
        try:
            sizes = await self._sources(name, inst["disk_template"], sorted(ports))
            total = sum(s[2] for s in sizes.values())
            if running:
                consistency = await self._copy_running(name, [BackupTarget(i, f"{host}:{port}", nbd=NbdTarget(
                    host, port, receive_name(name, i), self._tls_dir())) for i, port in ports.items()], total, False,
                    rate)
            else:
                await self._send_stopped(name, host, ports, sizes, total, rate)
        except (CopyError, QmpError, StorageError, OSError) as exc:
            raise OrderError(f"export of instance '{name}' from node '{self._node}' to {host} failed: {exc}") from exc
        finally:
            self.finished(name)
        return {"created": started, "consistency": consistency, "disks": {str(i): s[2] for i, s in sizes.items()}}

    async def _send_backup(self, args: dict[str, Any]) -> dict[str, Any]:
        """A backup's images written into another node's new disks (an import there)."""
        info, name = self._info(args["path"]), str(args["name"])
        ports = {int(i): int(p) for i, p in args["ports"].items()}
        missing = sorted(set(ports) - set(info.disks))
        if missing:
            raise OrderError(f"backup {info.path} has no disk {', '.join(map(str, missing))} for instance '{name}'")
        try:
            await self._send_stopped(name, str(args["host"]), ports, {i: (self.dirs.disk_file(info, i), "qcow2",
                                                                         info.disks[i]) for i in ports},
                                     sum(info.disks[i] for i in ports))
        except (StorageError, OSError) as exc:
            raise OrderError(f"backup {info.path} not sent to {args['host']}: {exc}") from exc
        finally:
            self.finished(name)
        return {"sent": info.path}

    async def _send_stopped(self, name: str, host: str, ports: dict[int, int],
                            sizes: dict[int, tuple[str, str, int]], total: int, rate: int = 0) -> None:
        done, progress_log = 0, self._log_path(name)
        for index, port in sorted(ports.items()):
            path, fmt, size = sizes[index]
            if os.path.exists(progress_log):
                os.unlink(progress_log)
            self._progress[name] = (done, total, size, progress_log)
            target = (f"driver=nbd,server.type=inet,server.host={host},server.port={port},"
                      f"export={receive_name(name, index)},tls-creds=tls0")
            await runner.run(["qemu-img", "convert", "-p", "-n", *(["-r", str(rate)] if rate else []), "-f", fmt,
                              "--object",
                              f"tls-creds-x509,id=tls0,dir={self._tls_dir()},endpoint=client",
                              "--target-image-opts", path, target], timeout_s=BACKUP_TIMEOUT_S, log_path=progress_log)
            done += size

    async def _copy_stopped(self, name: str, partial: str, disks: dict[int, tuple[str, str, int]], total: int,
                            compress: bool, rate: int) -> None:
        done, progress_log = 0, self._log_path(name)
        for index, (path, fmt, size) in sorted(disks.items()):
            if os.path.exists(progress_log):
                os.unlink(progress_log)
            self._progress[name] = (done, total, size, progress_log)
            await self.dirs.copy_in(partial, {index: (path, fmt)}, compress, progress_log, rate)
            done += size

    def reading(self, name: str, before: int, total: int, size: int) -> Callable[[BinaryIO], None]:
        """Progress of an OS import script reading a dump of `size` bytes (after `before` of `total`): the
        dump's file, whose position the script shares, once it is open."""
        self._progress[name] = (before, total, size, "")
        return lambda dump: self._reads.__setitem__(name, dump)

    def finished(self, name: str) -> None:
        self._progress.pop(name, None)
        self._reads.pop(name, None)

    async def _status(self, args: dict[str, Any]) -> dict[str, Any]:
        """Bytes copied so far and in all of the instance's running export or import (0, 0: none)."""
        name = str(args["name"])
        before, total, current, progress_log = self._progress.get(name, (0, 0, 0, ""))
        dump = self._reads.get(name)
        if dump is not None and not dump.closed:
            with contextlib.suppress(OSError, ValueError):
                before += min(current, os.lseek(dump.fileno(), 0, os.SEEK_CUR))
        elif progress_log.endswith(".dump"):  # an OS export script's output, as it grows
            with contextlib.suppress(FileNotFoundError):
                before += min(current, os.path.getsize(progress_log))
        elif progress_log:
            try:
                with open(progress_log, "rb") as fh:
                    found = _PERCENT.findall(fh.read()[-4096:])
                before += int(current * float(found[-1]) / 100) if found else 0
            except FileNotFoundError:
                pass
        return {"done": before, "total": total}

    def _info(self, path: Any) -> BackupInfo:
        try:
            return self.dirs.read(str(path))
        except StorageError as exc:
            raise OrderError(str(exc)) from exc

    async def _read(self, args: dict[str, Any]) -> dict[str, Any]:
        return self._info(args["path"]).row()

    async def _remove(self, args: dict[str, Any]) -> dict[str, Any]:
        try:
            removed = self.dirs.remove(str(args["path"]))
        except StorageError as exc:
            raise OrderError(str(exc)) from exc
        if removed:
            log.warning("backup %s deleted on node '%s'", args["path"], self._node)
        return {"removed": removed}

    async def _restore(self, args: dict[str, Any]) -> dict[str, Any]:
        """The instance's disks replaced by the backup's (it is stopped); refused before anything changes if
        the backup's disks are not the instance's or are larger than them."""
        name = str(args["name"])
        self._template(name, args.get("disk_template"))
        if self._qemu.find(name) is not None:
            raise OrderError(f"instance '{name}' is running on node '{self._node}': it is restored only while "
                             "stopped")
        info = self._info(args["path"])
        template = args.get("disk_template")
        try:
            current = await self._sources(name, template, sorted(info.disks))
            for index, size in info.disks.items():
                if current[index][2] < size:
                    raise OrderError(f"disk {index} of '{name}' ({current[index][2] >> 20} MiB) is smaller than "
                                     f"in backup {info.path} ({size >> 20} MiB)")
            if template == "drbd":
                drbd = self._disks.drbd
                if drbd is None:
                    raise OrderError(f"node '{self._node}' has no DRBD: set [storage] volume_group in its agent.toml")
                async with drbd.taken_down(self._node, self._disks.drbd_disks(args["instance"])):
                    await self._write_back(args["instance"], info, current)
            else:
                await self._write_back(args["instance"], info, current)
        except StorageError as exc:
            raise OrderError(f"restore of '{name}' from {info.path} failed: {exc}") from exc
        finally:
            self.finished(name)
        log.warning("instance '%s': disks restored from backup %s on node '%s'", name, info.path, self._node)
        return {"restored": info.path}

    async def _write_back(self, inst: dict[str, Any], info: BackupInfo,
                          current: dict[int, tuple[str, str, int]]) -> None:
        """Each disk of the backup written over the instance's (files: beside and renamed over; LVs: in place,
        through a qcow2 view at the LV's size, so what the disk grew by since reads as zeros as in a file; dumps:
        through the OS's import script)."""
        name = str(inst["name"])
        entry = self._dumps.definition(info.dumps) if info.dumps else None
        sizes = {i: os.path.getsize(self.dirs.disk_file(info, i)) if entry else size for i, size in info.disks.items()}
        done, total, progress_log = 0, sum(sizes.values()), self._log_path(name)
        for index, size in sorted(sizes.items()):
            if os.path.exists(progress_log):
                os.unlink(progress_log)
            self._progress[name] = (done, total, size, progress_log)
            source = self.dirs.disk_file(info, index)
            path, fmt, now = current[index]
            if entry is not None:
                await self._dumps.write_disk(entry, inst, index, path, source, now, {i: c[0] for i, c in current.items()},
                                             self.reading(name, done, total, size))
            elif fmt == "raw" and path.startswith("/dev/"):
                view = os.path.join(self._progress_dir, f"{name}.disk{index}.view.qcow2")
                try:
                    await runner.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", source, "-F", "qcow2", view,
                                      str(now)], timeout_s=60)
                    await runner.run(["qemu-img", "convert", "-p", "-n", "-f", "qcow2", "-O", "raw", view, path],
                                     timeout_s=BACKUP_TIMEOUT_S, log_path=progress_log)
                finally:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(view)
            else:
                await replace_disks(self._disks.files, name, {index: source}, progress_log)
            done += size

    async def _import_disks(self, args: dict[str, Any]) -> dict[str, Any]:
        """A new instance's disks made from a backup here (no OS installed): all or none. A re-sent order
        after a complete import does nothing."""
        inst = args["instance"]
        name = str(inst["name"])
        self._template(name, inst.get("disk_template"))
        info = self._info(args["path"])
        marker = installed_marker(self._disks.files, name)
        if read_small_file(marker) == inst["uuid"]:
            return {"created": False}
        missing = [str(d["index"]) for d in inst["disks"] if int(d["index"]) not in info.disks]
        if missing:
            raise OrderError(f"backup {info.path} has no disk {', '.join(missing)} for instance '{name}'")
        specs = [(self.dirs.disk_file(info, int(d["index"])),
                  DiskSpec(int(d["size_mib"]), d["format"], d.get("uuid", ""), f"disk{d['index']}"))
                 for d in sorted(inst["disks"], key=lambda d: int(d["index"]))]
        try:  # images: qemu-img's progress, disk by disk; dumps: how far the import script has read each
            if info.dumps:
                dumps = {int(d["index"]): self.dirs.disk_file(info, int(d["index"])) for d in inst["disks"]}
                read = [os.path.getsize(dumps[i]) for i in sorted(dumps)]
                paths = await self._dumps.make_disks(self._disks.for_instance(inst), inst, self._dumps.definition(
                    info.dumps), dumps, lambda i: self.reading(name, sum(read[:i]), sum(read), read[i]))
            else:
                progress_log = self._log_path(name)
                sizes = [info.disks[int(d["index"])] for d in sorted(inst["disks"], key=lambda d: int(d["index"]))]

                def on_disk(index: int) -> None:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(progress_log)
                    self._progress[name] = (sum(sizes[:index]), sum(sizes), sizes[index], progress_log)

                paths = await install_from_images(self._disks.for_instance(inst), name, specs, progress_log, on_disk)
        except StorageError as exc:
            raise OrderError(f"instance '{name}': disks not made from backup {info.path}: {exc}") from exc
        finally:
            self.finished(name)
        os.makedirs(os.path.dirname(marker), mode=0o700, exist_ok=True)
        with open(marker, "w") as fh:
            fh.write(inst["uuid"])
        log.info("instance '%s': disks made from backup %s on node '%s'", name, info.path, self._node)
        return {"created": True, "paths": paths}
