"""The node side of orders: this node's disks and QEMU processes, nothing else.

Every order is idempotent (create-if-missing, start-if-not-running,
remove-if-present), so a new master or a retried job can always re-send it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

from kvm.cmdline import DiskSpec, InstanceSpec, NicSpec
from kvm.hvparams import parse_hvparams
from kvm.process import QemuManager
from kvm.qmp import Qmp, QmpError
from kvm import hotplug, tap
from storage.drbd import DrbdDisks
from storage.errors import StorageError
from storage.filedisk import FileTemplate
from storage.filesnap import FileSnapshots
from storage.install import DiskSpec as InstallDisk, install_os
from storage.osdef import (DiskEnv, NetworkEnv, NicEnv, OsCatalog, OsDefinition, lookup, os_environment,
                           run_rename, split_os_name)

from hostagent import model, pki
from hostagent.node.disks import NodeDisks

log = logging.getLogger(__name__)

# Templates whose disks the primary's QEMU writes to the secondary's copy through a quorum.
HOTPLUG_QMP_TIMEOUT_S = 10.0  # each QMP command; a device's removal waits kvm.hotplug.UNPLUG_TIMEOUT_S more


def read_small_file(path: str) -> str | None:
    """A marker or pidfile's content, stripped; None when the file does not exist."""
    try:
        with open(path) as fh:
            return fh.read().strip()
    except FileNotFoundError:
        return None


class OrderError(Exception):
    """An order this node cannot carry out; the message is for the operator."""


# What carries out one order: its arguments in, its answer to the master out.
Order = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class NodeExecutor:
    def __init__(self, node: str, qemu: QemuManager, disks: NodeDisks,
                 catalog: Callable[[], OsCatalog], log_dir: str, install_timeout_s: float,
                 tls_dir: Callable[[], str]) -> None:
        """`tls_dir`: the node's credentials in QEMU's layout, for migration streams."""
        self._tls_dir = tls_dir
        self._node = node
        self._qemu = qemu
        self._disks = disks
        self._files = disks.files  # also where each instance's markers live, whatever its template
        self._catalog = catalog
        self._log_dir = log_dir
        self._install_timeout_s = install_timeout_s
        # (instance name) -> why this node may not start it now (self-fencing), or None
        self.start_guard: Callable[[str], str | None] | None = None
        # (spec, instance record) -> the spec with its CD-ROM drive and VNC settings (hostagent.node.media)
        self.dress: Callable[[InstanceSpec, dict[str, Any]], InstanceSpec] | None = None
        # (instance record, start order's args) once a `mirror` instance's QEMU runs (hostagent.node.replication)
        self.started: Callable[[dict[str, Any], dict[str, Any]], Awaitable[None]] | None = None

    def orders(self) -> dict[str, Order]:
        """The orders this module carries out, by the name the master sends (hostagent.agent merges the tables)."""
        return {
            "instance.create": self._op_create,
            "instance.reinstall": self._op_reinstall,
            "instance.rename": self._op_rename,
            "instance.start": self._op_start,
            "instance.stop": self._op_stop,
            "instance.console-tail": self._op_console_tail,
            "instance.reset": self._op_reset,
            "instance.remove": self._op_remove,
            "instance.disk-hotplug": self._op_disk_hotplug,
            "instance.disk-unplug": self._op_disk_unplug,
            "instance.nic-hotplug": self._op_nic_hotplug,
            "instance.nic-unplug": self._op_nic_unplug,
            "instance.placement": self._op_placement,
        }

    async def spec(self, inst: dict[str, Any], hvparams: dict[str, Any]) -> InstanceSpec:
        hv = parse_hvparams(hvparams)
        replicated = inst.get("disk_template") in model.QUORUM_MIRRORED
        template = self._disks.for_instance(inst)
        disks = []
        for d in inst["disks"]:
            path = template.path(inst["name"], d["index"], d["format"])
            size = await self._files.virtual_bytes(path, d["format"]) if replicated else 0
            disks.append(DiskSpec(path, d["format"], replicated=replicated, size_bytes=size,
                                  protocol=self._disks.protocol(inst.get("disk_template"))))
        nics = tuple(NicSpec(mac=n["mac"], mode=n["mode"],
                             tap=tap.tap_name(inst["name"], i) if n["mode"] == "bridged" else "")
                     for i, n in enumerate(inst["nics"]))
        return InstanceSpec(name=inst["name"], uuid=inst["uuid"], memory_mib=inst["memory_mib"],
                            vcpus=inst["vcpus"], hv=hv, disks=tuple(disks), nics=nics)

    async def _op_create(self, args: dict[str, Any]) -> dict[str, Any]:
        inst = args["instance"]
        template = self._disks.for_instance(inst)
        marker = self._installed_marker(inst["name"])
        present = [d for d in inst["disks"] if os.path.exists(template.path(inst["name"], d["index"], d["format"]))
                   or (isinstance(template, DrbdDisks) and await template.exists(inst["name"], d["index"]))]
        if read_small_file(marker) == inst["uuid"] and len(present) == len(inst["disks"]):
            return {"created": False}  # re-sent order: this instance's install completed
        for disk in present:  # an earlier attempt died half-way, or another instance's leftovers
            log.warning("instance '%s': removing disk %d left by an interrupted create",
                        inst["name"], disk["index"])
            await template.remove(inst["name"], disk["index"])
        entry = lookup(self._catalog(), inst["os"])
        _, variant = split_os_name(inst["os"])
        paths = await install_os(
            entry, template, instance_name=inst["name"], instance_uuid=inst["uuid"],
            disks=[InstallDisk(d["size_mib"], d["format"], d["uuid"], f"disk{d['index']}") for d in inst["disks"]],
            primary_node=self._node, secondary_nodes=[s for s in [inst.get("secondary_node")] if s],
            hvparams={k: str(v) for k, v in args.get("hvparams", {}).items()},
            beparams={"memory": str(inst["memory_mib"]), "vcpus": str(inst["vcpus"])},
            nics=nic_envs(inst, args.get("networks") or {}),
            variant=variant, osparams=inst.get("osparams", {}), reinstall=bool(args.get("reinstall")),
            log_dir=self._log_dir,
            timeout_s=min(self._install_timeout_s, float(args.get("timeout_s", self._install_timeout_s))))
        os.makedirs(os.path.dirname(marker), mode=0o700, exist_ok=True)  # logical volumes make no directory
        with open(marker, "w") as fh:
            fh.write(inst["uuid"])
        return {"created": True, "paths": paths}

    async def _op_reinstall(self, args: dict[str, Any]) -> dict[str, Any]:
        """`instance reinstall`: the disks made again and the OS installed anew (Ganeti's reinstall
        environment, INSTANCE_REINSTALL=1). `install_id` makes a re-sent order a no-op."""
        inst = args["instance"]
        name = inst["name"]
        if self._qemu.find(name) is not None:
            raise OrderError(f"instance '{name}' is running on node '{self._node}'; it is reinstalled only stopped")
        done = os.path.join(self._files.instance_dir(name), ".reinstalled")
        if read_small_file(done) == args["install_id"]:
            return {"created": False}
        marker = self._installed_marker(name)
        if os.path.exists(marker):
            os.unlink(marker)
        for disk in inst["disks"]:
            await self._disks.of(inst.get("disk_template")).remove(name, disk["index"])
        log.warning("instance '%s': disks deleted for a reinstall with OS '%s'", name, inst["os"])
        result = await self._op_create({**args, "reinstall": True})
        with open(done, "w") as fh:
            fh.write(args["install_id"])
        return result

    async def _op_rename(self, args: dict[str, Any]) -> dict[str, Any]:
        """`instance rename`: the disk directory, console log and replication state take the new name;
        on the primary, the OS definition's `rename` script runs. Idempotent: done parts are skipped."""
        old, inst = args["old_name"], args["instance"]
        new = inst["name"]
        for name in (old, new):
            if self._qemu.find(name) is not None:
                raise OrderError(f"instance '{name}' is running on node '{self._node}'; it is renamed only stopped")
        try:
            moved = await self._files.rename(old, new)
            if inst.get("disk_template") == "plain":  # the instance directory holds no disk: each LV is renamed
                for d in inst["disks"]:
                    moved = await self._disks.volumes().rename_disk(old, new, d["index"]) or moved
        except (FileExistsError, StorageError) as exc:
            raise OrderError(f"cannot rename '{old}' to '{new}' on node '{self._node}': {exc}") from None
        self._qemu.cleanup(old)
        for source, target in ((self._qemu.paths(old).console_log, self._qemu.paths(new).console_log),
                               (self._replication_gen(old), self._replication_gen(new))):
            if os.path.exists(source) and not os.path.exists(target):
                os.rename(source, target)
        script = None
        entry = lookup(self._catalog(), inst["os"]) if args.get("run_script") else None
        if isinstance(entry, OsDefinition) and moved:
            _, variant = split_os_name(inst["os"])
            template = self._disks.for_instance(inst)
            disks = [DiskEnv(template.path(new, d["index"], d["format"]), d["size_mib"], d["uuid"],
                             f"disk{d['index']}") for d in inst["disks"]]
            env = os_environment(entry, instance_name=new, instance_uuid=inst["uuid"], primary_node=self._node,
                                 secondary_nodes=[s for s in [inst.get("secondary_node")] if s],
                                 hvparams={k: str(v) for k, v in args.get("hvparams", {}).items()},
                                 beparams={"memory": str(inst["memory_mib"]), "vcpus": str(inst["vcpus"])},
                                 disks=disks, nics=nic_envs(inst, args.get("networks") or {}),
                                 variant=variant, osparams=inst.get("osparams", {}))
            script = await run_rename(entry, env, old, self._log_dir, self._install_timeout_s)
        log.info("instance '%s' renamed to '%s' on node '%s'%s", old, new, self._node,
                 f" (OS rename script log: {script})" if script else "")
        return {"renamed": moved, "script_log": script}

    def _replication_gen(self, name: str) -> str:
        return os.path.join(self._qemu.run_dir, "replication", f"{name}.gen")

    def _installed_marker(self, name: str) -> str:
        return installed_marker(self._files, name)

    async def _op_start(self, args: dict[str, Any]) -> dict[str, Any]:
        inst = args["instance"]
        refusal = self.start_guard(inst["name"]) if self.start_guard is not None else None
        if refusal:
            raise OrderError(refusal)
        # `incoming`: the URI a live migration arrives on; QEMU then waits for it instead of booting,
        # over TLS, from the node `incoming_from` only.
        spec = await self.spec(inst, args["hvparams"])
        if self.dress is not None:
            spec = self.dress(spec, inst)
        if args.get("incoming"):
            spec = dataclasses.replace(spec, incoming=args["incoming"], incoming_tls_dir=self._tls_dir(),
                                       incoming_client=client_identity(args["incoming_from"]),
                                       placement=tuple(sorted((args.get("placement") or {}).items())))
        for nic, cfg in zip(spec.nics, inst["nics"]):
            if nic.tap:
                await tap.create_tap(nic.tap, cfg["bridge"], vlan=cfg.get("vlan"))
        drbd = self._disks.for_instance(inst) if inst.get("disk_template") == "drbd" else None
        if isinstance(drbd, DrbdDisks) and not args.get("incoming"):
            await drbd.activate(inst["name"])
        try:
            pid = await self._qemu.start(spec)
        except BaseException:
            if isinstance(drbd, DrbdDisks) and self._qemu.find(inst["name"]) is None:
                await drbd.deactivate(inst["name"])
            raise
        if self.started is not None and inst.get("disk_template") in model.QUORUM_MIRRORED:
            await self.started(inst, args)
        return {"pid": pid}

    async def _op_stop(self, args: dict[str, Any]) -> dict[str, Any]:
        how = await self._qemu.stop(args["name"], timeout_s=float(args.get("timeout_s", 120)),
                                    force=bool(args.get("force", False)))
        await self._delete_taps(args["name"], int(args.get("nic_count", 0)))
        await self.release_drbd(args["name"])
        return {"how": how}

    async def release_drbd(self, name: str) -> None:
        """A stopped instance's DRBD resources back to Secondary here, so that no node holds them Primary
        without a QEMU writing through them (and its peer may be promoted)."""
        if self._disks.drbd is not None and self._qemu.find(name) is None:
            await self._disks.drbd.demote_instance(self._node, name)

    async def _op_console_tail(self, args: dict[str, Any]) -> dict[str, Any]:
        lines = self._qemu.console_log_tail(args["name"], 100)  # a panic's trace: 30-45 lines after its header
        return {"lines": [line for line in lines if line.strip()][-60:]}

    async def _op_reset(self, args: dict[str, Any]) -> dict[str, Any]:
        if self._qemu.find(args["name"]) is None:
            raise OrderError(f"instance '{args['name']}' is not running on node '{self._node}'")
        await self._qemu.reset(args["name"])
        return {}

    async def _op_remove(self, args: dict[str, Any]) -> dict[str, Any]:
        name = args["name"]
        how = await self._qemu.stop(name, timeout_s=0, force=True)
        self._qemu.cleanup(name)
        await self._delete_taps(name, int(args.get("nic_count", 0)))
        marker = self._installed_marker(name)
        if os.path.exists(marker):
            os.unlink(marker)
        for disk in args.get("disks", []):
            await self._disks.for_order(args).remove(name, disk["index"])
        FileSnapshots(self._files).remove_all(name)  # they go with the disks (a move leaves none behind)
        with contextlib.suppress(OSError):  # the markers' directory, of an instance whose disks are not files
            os.rmdir(self._files.instance_dir(name))
        console_log = self._qemu.paths(name).console_log
        if os.path.exists(console_log):  # a new instance of the same name starts with a clean log
            os.unlink(console_log)
        return {"stopped": how}

    async def _delete_taps(self, name: str, count: int) -> None:
        for i in range(count):
            await tap.delete_tap(tap.tap_name(name, i))

    # ---- hot-plug (kvm.hotplug): with no QEMU running, each does what a cold start needs and no more ----
    async def _op_disk_hotplug(self, args: dict[str, Any]) -> dict[str, Any]:
        """The disk file made and plugged into the running QEMU. A failed plug deletes the file again, so
        the master records nothing and the config and the guest still agree. Args: name, disk, hvparams,
        replicated (a disk of a replicated template: plugged under its quorum, as a cold start has it)."""
        name, disk, replicated = args["name"], args["disk"], bool(args.get("replicated"))
        template = self._disks.for_order(args)
        path = template.path(name, disk["index"], disk["format"])
        if not os.path.exists(path):
            await template.create(name, disk["index"], disk["size_mib"], disk["format"])
        if self._qemu.find(name) is None:
            return {"path": path, "plugged": False}
        try:
            size = await self._files.virtual_bytes(path, disk["format"]) if replicated else 0
            async with await Qmp.connect(self._qemu.paths(name).qmp_socket, HOTPLUG_QMP_TIMEOUT_S) as qmp:
                await hotplug.plug_disk(qmp, disk["index"], DiskSpec(
                    path, disk["format"], replicated=replicated, size_bytes=size,
                    protocol=self._disks.protocol(args.get("disk_template"))), parse_hvparams(args["hvparams"]))
        except (hotplug.HotplugError, QmpError) as exc:
            await template.remove(name, disk["index"])
            raise OrderError(f"instance '{name}': the new disk was not hot-plugged ({exc}); its file is deleted "
                             "again") from exc
        return {"path": path, "plugged": True}

    async def _op_disk_unplug(self, args: dict[str, Any]) -> dict[str, Any]:
        """Disk `index` out of the running QEMU (the guest must let it go); its file stays. Args: name, index."""
        name, index = args["name"], int(args["index"])
        return {"unplugged": await self._unplug(name, f"disk {index}", lambda qmp: hotplug.unplug_disk(qmp, index))}

    async def _op_nic_hotplug(self, args: dict[str, Any]) -> dict[str, Any]:
        """NIC `index` into the running QEMU, a bridged one's tap made first (on its bridge and VLAN); a failed
        plug deletes that tap again. Args: name, index, nic (the config's NIC: mac, mode, bridge, vlan), hvparams."""
        name, index, cfg = args["name"], int(args["index"]), args["nic"]
        if self._qemu.find(name) is None:
            return {"plugged": False}
        nic = NicSpec(mac=cfg["mac"], mode=cfg["mode"], tap=tap.tap_name(name, index) if cfg["mode"] == "bridged" else "")
        try:
            if nic.tap:
                await tap.create_tap(nic.tap, cfg["bridge"], vlan=cfg.get("vlan"))
            async with await Qmp.connect(self._qemu.paths(name).qmp_socket, HOTPLUG_QMP_TIMEOUT_S) as qmp:
                await hotplug.plug_nic(qmp, index, nic, parse_hvparams(args["hvparams"]))
        except (hotplug.HotplugError, QmpError, tap.TapError) as exc:
            if nic.tap:
                await tap.delete_tap(nic.tap)
            raise OrderError(f"instance '{name}': NIC {index} was not hot-plugged ({exc})") from exc
        return {"plugged": True}

    async def _op_nic_unplug(self, args: dict[str, Any]) -> dict[str, Any]:
        """NIC `index` out of the running QEMU (the guest must let it go), then its tap deleted. Args: name, index."""
        name, index = args["name"], int(args["index"])
        unplugged = await self._unplug(name, f"NIC {index}", lambda qmp: hotplug.unplug_nic(qmp, index))
        await tap.delete_tap(tap.tap_name(name, index))
        return {"unplugged": unplugged}

    async def _unplug(self, name: str, what: str, unplug: Callable[[Qmp], Awaitable[bool]]) -> bool:
        if self._qemu.find(name) is None:
            return False
        try:
            async with await Qmp.connect(self._qemu.paths(name).qmp_socket, HOTPLUG_QMP_TIMEOUT_S) as qmp:
                return await unplug(qmp)
        except (hotplug.HotplugError, QmpError) as exc:
            raise OrderError(f"instance '{name}': {what} was not unplugged ({exc})") from exc


    async def _op_placement(self, args: dict[str, Any]) -> dict[str, Any]:
        """The hot-plugged devices of the running QEMU and their root ports, for a migration target. Args: name."""
        name = args["name"]
        if self._qemu.find(name) is None:
            raise OrderError(f"instance '{name}' is not running on this node")
        try:
            async with await Qmp.connect(self._qemu.paths(name).qmp_socket, HOTPLUG_QMP_TIMEOUT_S) as qmp:
                return {"placement": await hotplug.placement(qmp)}
        except QmpError as exc:
            raise OrderError(f"instance '{name}': where its devices sit is unknown ({exc})") from exc


def nic_envs(inst: dict[str, Any], networks: dict[str, Any]) -> list[NicEnv]:
    """The NICs as OS scripts see them (Ganeti's NIC_n_*), with the networks they are on (sent by the master)."""
    envs = []
    for n in inst["nics"]:
        net = networks.get(n.get("network") or "")
        envs.append(NicEnv(mac=n["mac"], mode=n["mode"], link=n.get("bridge", ""), ip=n.get("ip") or None,
                           vlan=n.get("vlan"), network=None if net is None else NetworkEnv(
                               name=net["name"], uuid=net["uuid"], subnet=net["subnet"], gateway=net["gateway"],
                               mac_prefix=net["mac_prefix"], tags=tuple(net.get("tags") or ()))))
    return envs


def client_identity(node: str) -> str:
    """The DN QEMU sees in a Corral node certificate (subject order: CN, then OU)."""
    return f"CN={node},OU={pki.NODE_OU}"


def installed_marker(files: FileTemplate, name: str) -> str:
    """Written after a complete install (or import); only then may a re-sent create adopt the disks."""
    return os.path.join(files.instance_dir(name), ".installed")
