"""Ganeti's disk adoption on this node: logical volumes made outside Corral become an instance's disks as they
are, with no copy and no OS install (`instance add -t plain --disk adopt=NAME`).

The master asks first whether each LV can be adopted and how big it is (before a job exists); the add job then
adopts them, and gives them back if the add fails afterwards, so a failed add never deletes the operator's data.
"""

from __future__ import annotations

import logging
from typing import Any

from kvm.process import QemuManager
from storage.base import StorageError

from hostagent.node.disks import NodeDisks
from hostagent.node.executor import Order, OrderError

log = logging.getLogger(__name__)


class NodeAdoption:
    def __init__(self, node: str, qemu: QemuManager, disks: NodeDisks) -> None:
        self._node = node
        self._qemu = qemu
        self._disks = disks

    def orders(self) -> dict[str, Order]:
        return {"instance.adopt-check": self._check, "instance.adopt": self._adopt,
                "instance.adopt-release": self._release}

    async def _check(self, args: dict[str, Any]) -> dict[str, Any]:
        """Args: names. For each LV name: its size in MiB and why it cannot be adopted here ("" when it can)."""
        names = [str(n) for n in args["names"]]
        try:
            found = await self._disks.volumes().adoptable(names)
        except StorageError as exc:
            said = str(exc) if f"node '{self._node}'" in str(exc) else f"node '{self._node}': {exc}"
            return {"lvs": {name: {"size_mib": 0, "problem": said} for name in names}}
        return {"lvs": {name: {"size_mib": size, "problem": f"node '{self._node}': {problem}" if problem else ""}
                        for name, (size, problem) in found.items()}}

    async def _adopt(self, args: dict[str, Any]) -> dict[str, Any]:
        """Args: instance (its record), adopt (disk index -> LV name). Each LV becomes its disk; when one cannot,
        those adopted by this order are given back and the order fails. Idempotent."""
        inst, plain = args["instance"], self._disks.volumes()
        name, adopted = inst["name"], []
        try:
            for index, lv in sorted((int(i), str(lv)) for i, lv in args["adopt"].items()):
                path = await plain.adopt(lv, name, index)
                adopted.append(index)
                log.info("instance '%s': LV %s adopted as disk %d (%s) on node '%s'", name, lv, index, path,
                         self._node)
        except StorageError as exc:
            for index in adopted:
                await plain.release(name, index)
            raise OrderError(f"instance '{name}': {exc}") from exc
        return {"adopted": adopted}

    async def _release(self, args: dict[str, Any]) -> dict[str, Any]:
        """Args: name, disks. Every adopted LV of those disks gets its old name back, without Corral's tags."""
        name, plain, released = args["name"], self._disks.volumes(), {}
        if self._qemu.find(name) is not None:
            raise OrderError(f"instance '{name}' is running on node '{self._node}': its disks are in use")
        for disk in args["disks"]:
            old = await plain.release(name, int(disk["index"]))
            if old is not None:
                released[int(disk["index"])] = old
                log.warning("instance '%s': disk %d given back as LV %s on node '%s'", name, disk["index"], old,
                            self._node)
        return {"released": released}
