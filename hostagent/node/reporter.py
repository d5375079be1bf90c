"""What this node tells the cluster about itself: its QEMUs, resources, OSes, disks.

Written to /corral/reports/<node> by the node itself, periodically and after
each order, so `instance list` and `cluster verify` read the truth from the
replica on any node.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Mapping
from typing import Any

import psutil

from kvm import nbdexport
from kvm.process import QemuManager
from storage.backupdir import BackupDirs
from storage.base import StorageError
from storage.filedisk import FileTemplate
from storage.filesnap import FileSnapshots, SnapshotInfo
from storage.lvm import PlainTemplate
from storage.lvmsnap import LvmSnapshots
from storage.osdef import OsCatalog, OsDefinition, OsImage

from hostagent.clock import SYSTEM, Clock
from hostagent.node.boothealth import BootWatcher, qemu_start
from hostagent.node.executor import read_small_file

AGENT_VERSION = "0.1.0"
# The volume group is read (two LVM commands, which scan the disks and take LVM's lock: about a CPU second each
# in an emulated node VM) at most this often, and after every order: in between, only what an operator changes
# by hand goes unseen.
LVM_REFRESH_S = 15.0
STRAY_MIN_AGE_S = 10.0  # younger QEMUs may still be daemonizing: the parent has the same command line


async def collect(node: str, qemu: QemuManager, files: FileTemplate,
                  catalog: Callable[[], OsCatalog], busy: Mapping[str, str],
                  boot: BootWatcher | None = None, clock: Clock = SYSTEM) -> dict[str, Any]:
    """`busy`: instances whose QMP a long order holds (a migration), with the status to show.

    `boot`: judges each QEMU's boot from its console (hostagent.node.boothealth).

    `clock`: the report's time, and the ages of the QEMUs judged above.

    The report's time is when the QEMUs were listed, not when the report was done: under load the QMP
    queries below take seconds, and a QEMU started meanwhile must not look absent from a report that
    claims to be newer than its start (the master would judge that start failed and order it again)."""
    observed = clock.time()
    running = qemu.discover()
    verdicts: dict[str, dict[str, Any]] = {}
    if boot is not None:
        verdicts = boot.look({name: start for name, pid in running.items()
                              if (start := qemu_start(pid)) is not None}, clock.time())
    instances: dict[str, Any] = {}
    for name, pid in running.items():
        vnc = qemu.paths(name).vnc_socket  # hvparam vnc=localhost: `corral instance console --vnc` says how
        instances[name] = {"pid": pid, "status": busy.get(name) or await qemu.status(name),
                           "started": _started_at(pid),
                           **({"vnc_socket": vnc} if os.path.exists(vnc) else {}),
                           **verdicts.get(name, {})}
    mem = psutil.virtual_memory()
    cat = catalog()
    volumes = [{"instance": v.instance, "index": v.index, "path": v.path, "size_mib": v.size_mib,
                "format": v.fmt} for v in await files.list_volumes()]
    snapshots, snapshot_problems, snapshot_leftovers = FileSnapshots(files).everything()
    return {
        "node": node,
        "time": observed,
        "version": AGENT_VERSION,
        "boot_id": _boot_id(),
        "instances": instances,
        "memory_total_mib": mem.total // 2**20,
        "memory_free_mib": mem.available // 2**20,
        "cpus": psutil.cpu_count() or 1,
        "load_1m": os.getloadavg()[0],
        "disk_total_mib": files.total_mib(),
        "disk_free_mib": files.free_mib(),
        "file_storage_dir": files.base_dir,
        "os": {name: ("image" if isinstance(e, OsImage) else "script") for name, e in cat.entries.items()},
        # what `instance add` may ask of each script OS here, checked by the master at submit
        "os_details": {name: {"variants": list(e.variants), "parameters": list(e.parameter_names)}
                       for name, e in cat.entries.items() if isinstance(e, OsDefinition)},
        "os_problems": list(cat.problems),
        **({"kernel_dirs": list(qemu.kernel_dirs)} if qemu.kernel_dirs is not None else {}),
        "volumes": volumes,
        "snapshots": snapshot_rows(snapshots),
        "snapshot_problems": snapshot_problems,
        "snapshot_leftovers": snapshot_leftovers,
        "stray_qemus": stray_qemus(qemu.run_dir, running, clock.time()),
        "exports": exports(qemu.run_dir),
    }


def backups(dirs: BackupDirs) -> dict[str, Any]:
    """The backups in this node's export directories (`backup list`, `cluster verify`), without the
    configuration each holds (read when one is imported or restored)."""
    found, problems, leftovers = dirs.everything()
    return {"export_dirs": list(dirs.dirs),
            "backups": [{k: v for k, v in b.row().items() if k != "config"} for b in found],
            "backup_problems": problems, "backup_leftovers": leftovers}


def _started_at(pid: int) -> float | None:
    """When the process began (`cluster verify --repair` compares it with the node lease)."""
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def stray_qemus(run_dir: str, tracked: Mapping[str, int], now: float,
                min_age_s: float = STRAY_MIN_AGE_S) -> list[dict[str, Any]]:
    """QEMUs of this node's instances that are not the process their pidfile names.

    A QEMU is this node's when its `-pidfile` lies under `<run_dir>/instances/`
    (kvm.cmdline.run_paths), which also keeps apart the agents that share one
    machine in tests. Such a process that the pidfile does not name is a second
    QEMU for the instance, or one the agent lost track of: either way the agent
    would neither see nor stop it. One pass over /proc per report.
    """
    prefix = os.path.join(run_dir, "instances") + os.sep
    found = []
    for proc in psutil.process_iter(["cmdline", "create_time"]):
        argv = proc.info["cmdline"] or []
        pidfile = next((b for a, b in zip(argv, argv[1:]) if a == "-pidfile"), "")
        started = proc.info["create_time"] or now
        if not pidfile.startswith(prefix) or now - started < min_age_s:
            continue
        name = os.path.basename(os.path.dirname(pidfile))
        if tracked.get(name) != proc.pid:
            found.append({"instance": name, "pid": proc.pid, "started": started})
    return found


def exports(run_dir: str) -> list[dict[str, Any]]:
    """The NBD exports this node serves: live qemu-storage-daemons behind the pidfiles in
    `<run_dir>/replication/`, named `<instance>-disk<index>.pid` by hostagent.node.replication."""
    directory = os.path.join(run_dir, "replication")
    try:
        entries = sorted(os.listdir(directory))
    except FileNotFoundError:
        return []
    found = []
    for entry in entries:
        instance, sep, index = entry.removesuffix(".pid").rpartition("-disk")
        if not entry.endswith(".pid") or not sep or not index.isdigit():
            continue
        pidfile = os.path.join(directory, entry)
        pid = nbdexport.export_pid(pidfile)
        if pid is not None:
            found.append({"instance": instance, "disk": int(index), "pid": pid,
                          "client": (read_small_file(pidfile + ".client") or "").partition(" ")[0] or None})
    return found


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            return fh.read().strip()
    except OSError:
        return ""


async def lvm_state(lvm: PlainTemplate) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    """The volume group's size and free space, every LV that claims to be a Corral disk, and the LVM
    snapshots of disks (as the report's snapshots, snapshot_problems and snapshot_leftovers).

    A volume group that cannot be read is reported with the reason, not raised:
    the rest of the report still matters.
    """
    try:
        size, free = await lvm.vg_info()
        volumes = [{"instance": v.instance, "index": v.index, "path": v.path, "size_mib": v.size_mib,
                    "format": v.fmt} for v in await lvm.list_volumes()]
        snaps, problems, leftovers = await LvmSnapshots(lvm).everything()
    except StorageError as exc:
        return {"vg": lvm.vg, "error": str(exc)}, [], {}
    return ({"vg": lvm.vg, "size_mib": size, "free_mib": free}, volumes,
            {"snapshots": snapshot_rows(snaps), "snapshot_problems": problems, "snapshot_leftovers": leftovers})


def snapshot_rows(found: dict[str, list[SnapshotInfo]]) -> dict[str, list[dict[str, Any]]]:
    return {name: [{"name": s.name, "created": s.created, "consistency": s.consistency, "used_bytes": s.used_bytes,
                    "disks": {str(i): b for i, b in s.disks.items()}} for s in snaps] for name, snaps in found.items()}


class LvmSeen:
    """`lvm_state` as last read: read again once LVM_REFRESH_S have passed or after `changed()`."""

    def __init__(self, lvm: PlainTemplate, clock: Clock = SYSTEM) -> None:
        self._lvm, self._clock = lvm, clock
        self._seen: tuple[float, dict[str, Any], list[dict[str, Any]], dict[str, Any]] | None = None

    async def state(self) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
        now = self._clock.monotonic()
        if self._seen is None or now - self._seen[0] >= LVM_REFRESH_S:
            self._seen = (now, *await lvm_state(self._lvm))
        return dict(self._seen[1]), [dict(v) for v in self._seen[2]], copy.deepcopy(self._seen[3])

    def changed(self) -> None:
        self._seen = None
