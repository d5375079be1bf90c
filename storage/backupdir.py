"""Backups (exports) of instances on a node: `<export dir>/<instance>/<backup id>/`.

A backup holds `backup.json` (the instance's configuration as the cluster had it, when and how consistently
the disks were copied) and `disk<index>.qcow2` per disk, sparse and optionally compressed. It is built in a
hidden `.<id>.partial` directory and renamed into place once every file is complete and synced, so a cut at
any point never leaves what looks like a backup; the hidden leftovers are listed for `cluster verify`.

Backups live only under the node's export directories (`export_dirs` in [paths] of agent.toml): an API
caller names a directory, never an arbitrary path the agent would write into or read from.
"""

from __future__ import annotations

import asyncio
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
from storage.filedisk import fsync_path
from storage.filesnap import sync_tree, used_file_bytes, used_tree_bytes

BACKUP_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
META = "backup.json"
FORMAT = "corral-backup"
VERSION = 1


class BackupError(StorageError):
    """A backup could not be made, found, read or removed; the message says why."""


@dataclass(frozen=True)
class BackupInfo:
    """One complete backup on this node."""

    path: str
    instance: str
    backup_id: str
    created: float
    consistency: str  # "stopped", "crash" or "filesystems"
    compressed: bool
    source_node: str
    disks: dict[int, int]  # index -> virtual bytes
    used_bytes: int
    config: dict[str, Any]  # the instance as the cluster had it
    dumps: str = ""  # the script OS whose `export` wrote disk<i>.dump (its `import` reads them); "": qcow2 images

    def row(self) -> dict[str, Any]:
        return {"path": self.path, "instance": self.instance, "backup_id": self.backup_id, "created": self.created,
                "consistency": self.consistency, "compressed": self.compressed, "source_node": self.source_node,
                "disks": {str(i): size for i, size in self.disks.items()}, "used_bytes": self.used_bytes,
                "config": self.config, "dumps": self.dumps}


def within(path: str, dirs: tuple[str, ...]) -> bool:
    real = os.path.realpath(path)
    return any(real == os.path.realpath(d) or real.startswith(os.path.realpath(d).rstrip("/") + "/") for d in dirs)


class BackupDirs:
    """The backups under one node's export directories."""

    def __init__(self, dirs: tuple[str, ...], *, timeout_s: float = 60.0, copy_timeout_s: float = 6 * 3600.0) -> None:
        self.dirs, self.timeout_s, self.copy_timeout_s = dirs, timeout_s, copy_timeout_s

    def check_dir(self, directory: str) -> str:
        """The export directory, if it is one of this node's (made if missing); else BackupError."""
        if not os.path.isabs(directory) or not within(directory, self.dirs):
            raise BackupError(f"{directory!r} is not an export directory of this node (it has: "
                              f"{', '.join(self.dirs) or 'none'}; set export_dirs in [paths] of agent.toml)")
        os.makedirs(directory, mode=0o700, exist_ok=True)
        return os.path.realpath(directory)

    def check_backup(self, path: str) -> str:
        if not os.path.isabs(path) or not within(path, self.dirs):
            raise BackupError(f"{path!r} is not under an export directory of this node ({', '.join(self.dirs)})")
        return os.path.realpath(path)

    def final(self, directory: str, instance: str, backup_id: str) -> str:
        if not BACKUP_ID_RE.fullmatch(backup_id):
            raise BackupError(f"backup id {backup_id!r} is not valid")
        return os.path.join(self.check_dir(directory), instance, backup_id)

    def partial(self, directory: str, instance: str, backup_id: str) -> str:
        return os.path.join(os.path.dirname(self.final(directory, instance, backup_id)), f".{backup_id}.partial")

    def begin(self, directory: str, instance: str, backup_id: str, needed_bytes: int) -> str:
        """A fresh partial backup directory, refused if the id is taken or the space is not there."""
        final = self.final(directory, instance, backup_id)
        if os.path.exists(final):
            raise BackupError(f"backup {final} already exists")
        partial = self.partial(directory, instance, backup_id)
        shutil.rmtree(partial, ignore_errors=True)  # left by an interrupted attempt: never a backup
        os.makedirs(os.path.dirname(partial), mode=0o700, exist_ok=True)
        stat = os.statvfs(os.path.dirname(partial))
        free_mib = stat.f_bavail * stat.f_frsize // MIB
        if math.ceil(needed_bytes / MIB) > free_mib:
            raise NoSpace(os.path.dirname(partial), math.ceil(needed_bytes / MIB), free_mib)
        os.makedirs(partial, mode=0o700)
        return partial

    async def make_targets(self, partial: str, disks: dict[int, int]) -> dict[int, str]:
        """An empty qcow2 per disk (index -> virtual bytes) for a running guest's backup job to fill."""
        targets = {}
        for index, size in disks.items():
            targets[index] = os.path.join(partial, f"disk{index}.qcow2")
            await runner.run(["qemu-img", "create", "-q", "-f", "qcow2", targets[index], str(size)],
                             timeout_s=self.timeout_s)
        return targets

    async def copy_in(self, partial: str, sources: dict[int, tuple[str, str]], compress: bool,
                      progress_path: str | None = None, rate: int = 0) -> None:
        """Each (path, format) source copied into the partial backup as qcow2 (`-c`: compressed), at most
        `rate` bytes/s (0: as fast as it goes)."""
        for index, (path, fmt) in sorted(sources.items()):
            await runner.run(["qemu-img", "convert", "-p", *(["-c"] if compress else []),
                              *(["-r", str(rate)] if rate else []), "-f", fmt, "-O", "qcow2",
                              path, os.path.join(partial, f"disk{index}.qcow2")],
                             timeout_s=self.copy_timeout_s, log_path=progress_path)

    async def commit(self, partial: str, meta: dict[str, Any]) -> BackupInfo:
        """The partial backup, complete, synced and put in place."""
        with open(os.path.join(partial, META), "w") as fh:
            json.dump({"format": FORMAT, "version": VERSION, **meta}, fh, indent=1, sort_keys=True)
        await asyncio.to_thread(sync_tree, partial)
        final = os.path.join(os.path.dirname(partial), os.path.basename(partial)[1:].removesuffix(".partial"))
        os.rename(partial, final)
        await asyncio.to_thread(fsync_path, os.path.dirname(final))
        return self.read(final)

    @staticmethod
    def abort(partial: str) -> None:
        shutil.rmtree(partial, ignore_errors=True)

    def read(self, path: str) -> BackupInfo:
        """The backup at path, checked: BackupError says what is missing if it is not a complete backup."""
        path = self.check_backup(path)
        meta_path = os.path.join(path, META)
        if not os.path.isdir(path):
            raise BackupError(f"{path} is not a directory")
        if not os.path.exists(meta_path):
            ganeti = " (it has config.ini: a Ganeti export, read with --ganeti)" if os.path.exists(
                os.path.join(path, "config.ini")) else ""
            raise BackupError(f"{path} is not a Corral backup: it has no {META}{ganeti}")
        try:
            with open(meta_path) as fh:
                meta: dict[str, Any] = json.load(fh)
            if meta.get("format") != FORMAT or int(meta.get("version", 0)) > VERSION:
                raise BackupError(f"{meta_path} is not a {FORMAT} version {VERSION} file")
            disks = {int(i): int(size) for i, size in meta["disks"].items()}
            config = dict(meta["instance"])
            info = BackupInfo(path, str(config["name"]), os.path.basename(path), float(meta["created"]),
                              str(meta["consistency"]), bool(meta.get("compressed")), str(meta.get("source_node", "")),
                              disks, used_tree_bytes(path), config, str(meta.get("dumps") or ""))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise BackupError(f"{meta_path} is not readable: {exc}") from exc
        missing = [os.path.basename(self.disk_file(info, i)) for i in disks
                   if not os.path.isfile(self.disk_file(info, i))]
        if missing:
            raise BackupError(f"backup {path} is incomplete: it lacks {', '.join(missing)}")
        return info

    @staticmethod
    def disk_file(info: BackupInfo, index: int) -> str:
        return os.path.join(info.path, f"disk{index}.dump" if info.dumps else f"disk{index}.qcow2")

    def everything(self) -> tuple[list[BackupInfo], list[str], list[str]]:
        """Every complete backup on this node (oldest first), what could not be read, and the hidden
        directories an export or a removal cut short left (they take space until deleted)."""
        found: list[BackupInfo] = []
        problems: list[str] = []
        leftovers: list[str] = []
        for directory in self.dirs:
            try:
                instances = sorted(n for n in os.listdir(directory) if not n.startswith("."))
            except FileNotFoundError:
                continue
            except OSError as exc:
                problems.append(f"cannot list {directory}: {exc}")
                continue
            for instance in instances:
                folder = os.path.join(directory, instance)
                if not os.path.isdir(folder):
                    continue
                if os.path.exists(os.path.join(folder, "config.ini")):
                    continue  # a Ganeti export (`backup import --ganeti`), not backups of an instance
                for name in sorted(os.listdir(folder)):
                    path = os.path.join(folder, name)
                    if not os.path.isdir(path):
                        continue
                    if name.startswith("."):
                        leftovers.append(path)
                        continue
                    try:
                        found.append(self.read(path))
                    except StorageError as exc:  # one unreadable backup must not hide the others
                        problems.append(str(exc))
        return sorted(found, key=lambda b: (b.created, b.path)), problems, leftovers

    def remove(self, path: str) -> bool:
        """The backup gone; False if it was not there (idempotent)."""
        path = self.check_backup(path)
        if not os.path.isdir(path):
            return False
        self.read(path)  # only what is a backup is deleted
        doomed = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{uuid.uuid4().hex}.removing")
        os.rename(path, doomed)
        shutil.rmtree(doomed, ignore_errors=True)
        with_siblings = os.path.dirname(path)
        if not os.listdir(with_siblings):
            os.rmdir(with_siblings)
        return True


def needed_bytes(paths: list[str]) -> int:
    """What a backup of these disk files takes at most: the blocks they hold."""
    return sum(used_file_bytes(p) for p in paths)
