"""Node orders that copy or grow an instance's disks (instance move, grow-disk).

A copy pulls from the source node's NBD export (the same TLS export the
mirror template uses, opened to this node's certificate) with
`qemu-img convert -p`; its progress lines go to a log file, which the
status order reads, so the master can show progress and an ETA.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from typing import Any

from kvm import hotplug, nbdexport
from kvm.process import QemuManager
from kvm.qmp import Qmp, QmpError
from storage import runner
from storage.filedisk import FileTemplate
from storage.lvm import PlainTemplate

from hostagent import pki
from hostagent.node.disks import NodeDisks
from hostagent.node.executor import Order, OrderError
from hostagent.node.replication import export_name

COPY_TIMEOUT_S = 6 * 3600.0
QMP_TRIES, QMP_RETRY_S = 4, 0.5
_PERCENT = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")


log = logging.getLogger(__name__)

class NodeDiskCopy:
    """This node's disk copies and resizes."""

    def __init__(self, node: str, qemu: QemuManager, disks: NodeDisks, pki_paths: pki.PkiPaths,
                 run_dir: str) -> None:
        self._node = node
        self._qemu = qemu
        self._disks = disks
        self._pki = pki_paths
        self._dir = os.path.join(run_dir, "diskcopy")

    def orders(self) -> dict[str, Order]:
        return {"instance.disk-fetch": self._fetch, "instance.disk-fetch-status": self._fetch_status,
                "instance.disk-grow": self._grow, "instance.disk-paths": self._paths,
                "instance.disk-remove": self._remove}

    def _progress_file(self, name: str, index: int) -> str:
        return os.path.join(self._dir, f"{name}-disk{index}.progress")

    async def _fetch(self, args: dict[str, Any]) -> dict[str, Any]:
        """Copy one disk from the source node's export into place here: a file atomically (written beside, then
        renamed), a logical volume (args `disk_template` plain) made anew at the disk's size and written in
        place. A failed copy leaves nothing; a leftover of an interrupted one is replaced."""
        name, disk, host, port = args["name"], args["disk"], args["host"], int(args["port"])
        if self._qemu.find(name) is not None:
            raise OrderError(f"instance '{name}' is running on node '{self._node}': its disks are in use")
        tls = os.path.join(self._dir, "tls")
        nbdexport.link_tls_dir(tls, self._pki.ca_cert, self._pki.node_cert, self._pki.node_key)
        os.makedirs(self._dir, mode=0o700, exist_ok=True)
        progress = self._progress_file(name, disk["index"])
        if os.path.exists(progress):
            os.unlink(progress)
        source = (f"driver=nbd,server.type=inet,server.host={host},server.port={port},"
                  f"export={export_name(name, disk['index'])},tls-creds=tls0")
        convert = ["qemu-img", "convert", "-p", "-O", disk["format"],
                   "--object", f"tls-creds-x509,id=tls0,dir={tls},endpoint=client", "--image-opts", source]
        template = self._disks.for_order(args)
        if isinstance(template, PlainTemplate):
            return {"path": await self._fetch_lv(template, name, disk, convert, progress)}
        dest = template.path(name, disk["index"], disk["format"])
        os.makedirs(os.path.dirname(dest), mode=0o700, exist_ok=True)
        tmp = f"{dest}.incoming"
        if os.path.exists(tmp):
            os.unlink(tmp)
        try:
            await runner.run([*convert, tmp], timeout_s=COPY_TIMEOUT_S, log_path=progress)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        os.replace(tmp, dest)
        return {"path": dest}

    async def _fetch_lv(self, plain: PlainTemplate, name: str, disk: dict[str, Any], convert: list[str],
                        progress: str) -> str:
        """The copy onto a new LV (-n: qemu-img writes into the device, makes nothing). An LV of this disk
        here is a leftover of an interrupted move (this node is not the instance's primary), so it goes."""
        index = disk["index"]
        if await plain.exists(name, index):
            log.warning("instance '%s': replacing disk %d left on node '%s' by an interrupted copy",
                        name, index, self._node)
            await plain.remove(name, index)
        path = await plain.create(name, index, disk["size_mib"], "raw")
        try:
            await runner.run([*convert[:2], "-n", *convert[2:], path], timeout_s=COPY_TIMEOUT_S, log_path=progress)
        except BaseException:
            await plain.remove(name, index)
            raise
        return path

    async def _fetch_status(self, args: dict[str, Any]) -> dict[str, Any]:
        """Percent done of the copy of one disk (0 before its first progress line)."""
        try:
            with open(self._progress_file(args["name"], int(args["index"])), "rb") as fh:
                found = _PERCENT.findall(fh.read()[-4096:])
        except FileNotFoundError:
            return {"percent": 0.0}
        return {"percent": float(found[-1]) if found else 0.0}

    async def _grow(self, args: dict[str, Any]) -> dict[str, Any]:
        """Grow the disk: a file through the running QEMU (which holds the image lock), else with qemu-img;
        a logical volume with lvextend (and a DRBD resource with `drbdadm resize` after it), then, if it runs,
        QEMU told its new size."""
        name, index, size_mib = args["name"], int(args["index"]), int(args["size_mib"])
        template = self._disks.for_order(args)
        running = self._qemu.find(name) is not None
        if not isinstance(template, FileTemplate) or not running:
            await template.grow(name, index, size_mib)
        if not running:
            return {"size_mib": size_mib, "online": False}
        async with await Qmp.connect(self._qemu.paths(name).qmp_socket, 2 * self._qemu.qmp_timeout_s) as qmp:
            await hotplug.resize(qmp, index, size_mib * 2**20)
        return {"size_mib": size_mib, "online": True}

    async def _remove(self, args: dict[str, Any]) -> dict[str, Any]:
        """Delete one disk and its data (asked for with --destroy-data); never one a running QEMU has open
        (hot-removal unplugs it first: instance.disk-unplug)."""
        name, index = args["name"], int(args["index"])
        if self._qemu.find(name) is not None:
            open_images = await self._open_images(name)
            template = self._disks.for_order(args)
            if open_images & {template.path(name, index, fmt) for fmt in template.formats}:
                raise OrderError(f"instance '{name}' is running on node '{self._node}' with disk {index} still "
                                 "plugged in; it is unplugged first, or removed while the instance is stopped")
        await self._disks.for_order(args).remove(name, index)
        log.warning("instance '%s': disk %d and its data deleted on node '%s'", name, index, self._node)
        return {"removed": index}

    async def _open_images(self, name: str) -> set[str]:
        """The images the instance's QEMU has open. Asked again a few times (bounded): right after a hot-unplug
        the monitor was seen refusing a new session for a moment."""
        for attempt in range(QMP_TRIES):
            try:
                async with await Qmp.connect(self._qemu.paths(name).qmp_socket, 2 * self._qemu.qmp_timeout_s) as qmp:
                    return set(await hotplug.open_images(qmp))
            except QmpError as exc:
                if attempt == QMP_TRIES - 1 or self._qemu.find(name) is None:
                    raise
                log.info("instance '%s': QMP did not answer (%s); asking again", name, exc)
                await asyncio.sleep(QMP_RETRY_S)
        raise AssertionError("unreachable")

    async def _paths(self, args: dict[str, Any]) -> dict[str, Any]:
        """Where the disks are; a missing one is an error the operator must see."""
        template = self._disks.for_order(args)
        paths = [template.path(args["name"], d["index"], d["format"]) for d in args["disks"]]
        missing = [p for p in paths if not os.path.exists(p)]
        if missing:
            raise OrderError(f"instance '{args['name']}' misses disk(s) on node '{self._node}': {', '.join(missing)}")
        return {"paths": paths}
