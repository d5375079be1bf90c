"""What this node tells the cluster about itself: its QEMUs, resources, OSes, disks.

Written to /corral/reports/<node> by the node itself, periodically and after
each order, so `instance list` and `cluster verify` read the truth from the
replica on any node.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import psutil

from kvm.process import QemuManager
from storage.base import StorageError
from storage.filedisk import FileTemplate
from storage.lvm import PlainTemplate
from storage.osdef import OsCatalog, OsImage

AGENT_VERSION = "0.1.0"


async def collect(node: str, qemu: QemuManager, files: FileTemplate,
                  catalog: Callable[[], OsCatalog], busy: Mapping[str, str]) -> dict[str, Any]:
    """`busy`: instances whose QMP a long order holds (a migration), with the status to show."""
    instances: dict[str, Any] = {}
    for name, pid in qemu.discover().items():
        instances[name] = {"pid": pid, "status": busy.get(name) or await qemu.status(name)}
    mem = psutil.virtual_memory()
    cat = catalog()
    volumes = [{"instance": v.instance, "index": v.index, "path": v.path, "size_mib": v.size_mib,
                "format": v.fmt} for v in await files.list_volumes()]
    return {
        "node": node,
        "time": time.time(),
        "version": AGENT_VERSION,
        "boot_id": _boot_id(),
        "instances": instances,
        "memory_total_mib": mem.total // 2**20,
        "memory_free_mib": mem.available // 2**20,
        "cpus": psutil.cpu_count() or 1,
        "load_1m": os.getloadavg()[0],
        "disk_total_mib": files.total_mib(),
        "disk_free_mib": files.free_mib(),
        "os": {name: ("image" if isinstance(e, OsImage) else "script") for name, e in cat.entries.items()},
        "os_problems": list(cat.problems),
        "volumes": volumes,
    }


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            return fh.read().strip()
    except OSError:
        return ""


async def lvm_state(lvm: PlainTemplate) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The volume group's size and free space, and every LV that claims to be a Corral disk.

    A volume group that cannot be read is reported with the reason, not raised:
    the rest of the report still matters.
    """
    try:
        size, free = await lvm.vg_info()
        volumes = [{"instance": v.instance, "index": v.index, "path": v.path, "size_mib": v.size_mib,
                    "format": v.fmt} for v in await lvm.list_volumes()]
    except StorageError as exc:
        return {"vg": lvm.vg, "error": str(exc)}, []
    return {"vg": lvm.vg, "size_mib": size, "free_mib": free}, volumes
