"""This node's side of CD-ROMs and VNC displays: which files a guest may be given as a CD, the CD-ROM drive
and VNC settings of each QEMU this node starts, and the live change of a running guest's medium.

A guest reads every byte of its CD, so a CD-ROM may only be a regular file inside
this node's ISO directories (`iso_dirs` in [paths] of agent.toml), judged after
symlinks are resolved, as kernels are (kvm.hvparams.within): a write user must
not hand /etc/shadow to a guest. The master asks before a job exists (order
`instance.cdrom-check`), and the node judges again at every start and change:
a file gone or swapped since then leaves the drive empty at a start (the
instance still runs: a failover must not fail for want of an ISO) and fails a
live change.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import stat
from collections.abc import Callable
from typing import Any

from kvm import media
from kvm.cmdline import DiskSpec, InstanceSpec, cdrom_device
from kvm.hvparams import within
from kvm.process import QemuManager
from kvm.qmp import Qmp, QmpError

from hostagent.node.executor import Order, OrderError

log = logging.getLogger(__name__)

DEFAULT_ISO_DIRS = ("/var/lib/corral/iso",)


class NodeMedia:
    """`password_of(uuid)`: an instance's VNC password from this node's replica (hostagent.master.vncpass)."""

    def __init__(self, node: str, address: str, qemu: QemuManager, iso_dirs: tuple[str, ...],
                 password_of: Callable[[str], str]) -> None:
        self._node, self._address, self._qemu = node, address, qemu
        self._iso_dirs, self._password_of = iso_dirs, password_of

    def orders(self) -> dict[str, Order]:
        return {"instance.cdrom-check": self._op_check, "instance.cdrom-change": self._op_change}

    def iso_problem(self, path: str) -> str:
        """Why `path` may not be a guest's CD on this node, or ""."""
        dirs = ", ".join(self._iso_dirs) or "none"
        if not within(path, self._iso_dirs):
            return (f"{path!r} is not a file in the ISO directories of node '{self._node}' ({dirs}); put it there, "
                    "or add its directory to iso_dirs in [paths] of that node's agent.toml")
        real = os.path.realpath(path)
        if not within(real, self._iso_dirs):
            return f"{path!r} on node '{self._node}' is a link to {real!r}, outside its ISO directories ({dirs})"
        try:
            mode = os.stat(real).st_mode
        except FileNotFoundError:
            return f"{path!r} does not exist on node '{self._node}'"
        except OSError as exc:
            return f"{path!r} cannot be read on node '{self._node}' ({exc.strerror})"
        if not stat.S_ISREG(mode):
            return f"{path!r} on node '{self._node}' is not a regular file (an ISO image)"
        if not os.access(real, os.R_OK):
            return f"{path!r} on node '{self._node}' is not readable"
        return ""

    def dress(self, spec: InstanceSpec, inst: dict[str, Any]) -> InstanceSpec:
        """`spec` with the instance's CD-ROM drive (if it has one) and, with vnc=tcp, where VNC listens and
        its password."""
        disks = spec.disks
        cdrom = inst.get("cdrom")
        if cdrom is not None:
            problem = self.iso_problem(cdrom) if cdrom else ""
            if problem:
                log.warning("instance '%s' starts with its CD-ROM drive empty: %s", spec.name, problem)
            disks += (DiskSpec(os.path.realpath(cdrom) if cdrom and not problem else "", "raw", "cdrom"),)
        if spec.hv.vnc != "tcp":
            return dataclasses.replace(spec, disks=disks)
        return dataclasses.replace(spec, disks=disks, vnc_host=self._address,
                                   vnc_password=self._password_of(inst["uuid"]))

    async def _op_check(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"problem": self.iso_problem(str(args["path"]))}

    async def _op_change(self, args: dict[str, Any]) -> dict[str, Any]:
        """The running guest's medium: `path` inserted, or ejected for "". {"live": False} when no QEMU
        runs the instance here (its next start reads the config)."""
        name, path = str(args["name"]), str(args["path"])
        if self._qemu.find(name) is None:
            return {"live": False}
        if path and (problem := self.iso_problem(path)):
            raise OrderError(problem)
        device = cdrom_device(0)
        try:
            async with await Qmp.connect(self._qemu.paths(name).qmp_socket, self._qemu.qmp_timeout_s) as qmp:
                if await media.medium(qmp, device) is None:
                    raise OrderError(f"instance '{name}' runs without a CD-ROM drive on node '{self._node}'; "
                                     "it gets one at its next start")
                if path:
                    await media.insert(qmp, device, os.path.realpath(path))
                else:
                    await media.eject(qmp, device)
                now = await media.medium(qmp, device)
        except QmpError as exc:
            raise OrderError(f"the CD-ROM of instance '{name}' could not be changed on node '{self._node}': "
                             f"{exc.reason}") from None
        log.info("instance '%s': CD-ROM %s", name, f"medium now {now}" if now else "ejected")
        return {"live": True, "medium": now or ""}
