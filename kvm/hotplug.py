"""Disks and NICs added to and removed from a running QEMU through QMP (hot-plug).

A disk is two block nodes (``disk<i>-file``, the image, and ``disk<i>``, its
format) under a ``virtio-blk-pci`` device ``disk<i>-dev`` (a replicated disk:
its quorum ``disk<i>`` over ``disk<i>-local`` and a sink); a NIC is a netdev
``net<i>`` under device ``net<i>-dev``: the names kvm.cmdline gives the same
disk or NIC at a cold start, so either can be removed later whichever way it
came. On q35 a device goes into a free spare root port (hvparam
``hotplug_slots``); on the PC machine, onto its PCI bus.

Removal is the guest's to complete: ``device_del`` asks it to let the device
go (ACPI eject), and only the DEVICE_DELETED event, awaited on the same
connection with a bound, says it did; the block nodes or netdev are deleted
after. Every call is idempotent: a device already there is not plugged again,
one already gone is not unplugged again, leftovers of an interrupted call are
cleared first. Errors: ``HotplugError`` (what failed and what would fix it);
QMP failures are ``kvm.qmp.QmpError``.
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from kvm.cmdline import (_CACHE, _NIC_DEVICES, DiskSpec, NicSpec, disk_device_id, hotplug_port, nic_device_id,
                         sink_node)
from kvm.hvparams import HvParams
from kvm.qmp import Qmp, QmpError

log = logging.getLogger(__name__)

UNPLUG_TIMEOUT_S = 30.0

Command = tuple[str, dict[str, Any]]


class HotplugError(Exception):
    """Disk or NIC ``what`` could not be plugged or unplugged; ``reason`` says why and what to do."""

    def __init__(self, what: str, reason: str) -> None:
        self.what = what
        self.reason = reason
        super().__init__(f"{what}: {reason}")


def disk_nodes(index: int) -> tuple[str, ...]:
    """The block nodes disk ``index`` may have, each parent before its children (the order they are deleted
    in): ``disk<i>`` (the device's: the format node, or a replicated disk's quorum), then a replicated disk's
    local format node and sink, then the image file."""
    return f"disk{index}", f"disk{index}-local", sink_node(index), f"disk{index}-file"


def disk_commands(index: int, disk: DiskSpec, hv: HvParams, bus: str | None) -> list[Command]:
    """The QMP commands that plug ``disk`` in as disk ``index``, in order (pure, for tests). A replicated
    disk gets the block graph a cold start gives it (kvm.cmdline): its image and a sink under a quorum
    ``disk<i>``, the device stopping the guest on a write error, so replication treats it like the others."""
    problem = _disk_problem(disk, hv)
    if problem:
        raise HotplugError(f"disk {index}", problem)
    direct, no_flush, write_cache = _CACHE[hv.disk_cache]
    cache = {"direct": direct, "no-flush": no_flush}
    fmt_node, local_node, sink, file_node = disk_nodes(index)
    device: dict[str, Any] = {"driver": "virtio-blk-pci", "drive": fmt_node, "id": disk_device_id(index),
                              "write-cache": "on" if write_cache else "off"}
    if bus:
        device["bus"] = bus
    image: list[Command] = [("blockdev-add", {"driver": disk.protocol, "filename": disk.path, "node-name": file_node,
                                              "cache": cache, "discard": "unmap"})]
    if not disk.replicated:
        return image + [("blockdev-add", {"driver": disk.format, "file": file_node, "node-name": fmt_node,
                                          "cache": cache, "discard": "unmap"}), ("device_add", device)]
    if disk.size_bytes <= 0:
        raise HotplugError(f"disk {index}", "a replicated disk needs its virtual size")
    return image + [
        ("blockdev-add", {"driver": disk.format, "file": file_node, "node-name": local_node, "cache": cache,
                          "discard": "unmap"}),
        ("blockdev-add", {"driver": "null-co", "node-name": sink, "size": disk.size_bytes}),
        ("blockdev-add", {"driver": "quorum", "node-name": fmt_node, "vote-threshold": 2, "read-pattern": "fifo",
                          "children": [local_node, sink]}),
        ("device_add", {**device, "werror": "stop", "rerror": "stop"}),
    ]


def nic_commands(index: int, nic: NicSpec, hv: HvParams, bus: str | None) -> list[Command]:
    """The QMP commands that plug ``nic`` in as NIC ``index`` (a bridged NIC's tap must exist)."""
    netdev: dict[str, Any] = {"type": "user", "id": f"net{index}"}
    if nic.mode == "bridged":
        netdev = {"type": "tap", "id": f"net{index}", "ifname": nic.tap, "script": "no", "downscript": "no"}
    device: dict[str, Any] = {"driver": _NIC_DEVICES[hv.nic_model], "netdev": f"net{index}",
                              "id": nic_device_id(index), "mac": nic.mac}
    if bus:
        device["bus"] = bus
    return [("netdev_add", netdev), ("device_add", device)]


def free_port(pci: object, slots: int) -> str | None:
    """The first spare root port with nothing plugged in, from a ``query-pci`` answer."""
    used: set[str] = set()
    present: set[str] = set()
    for bus in pci if isinstance(pci, list) else []:
        for dev in bus.get("devices", []):
            bridge = dev.get("pci_bridge")
            if bridge is not None:
                present.add(str(dev.get("qdev_id")))
                if bridge.get("devices"):
                    used.add(str(dev.get("qdev_id")))
    for n in range(slots):
        if hotplug_port(n) in present and hotplug_port(n) not in used:
            return hotplug_port(n)
    return None


def placement_of(pci: object) -> dict[str, str]:
    """Which device (id) sits on which spare root port, from a ``query-pci`` answer: what a migration
    target must rebuild (kvm.cmdline InstanceSpec.placement)."""
    found: dict[str, str] = {}
    for bus in pci if isinstance(pci, list) else []:
        for dev in bus.get("devices", []):
            bridge = dev.get("pci_bridge")
            port = str(dev.get("qdev_id"))
            if bridge is None or not port.startswith(hotplug_port(0)[:-1]):
                continue
            for child in bridge.get("devices") or []:
                if child.get("qdev_id"):
                    found[str(child["qdev_id"])] = port
    return found


async def placement(qmp: Qmp) -> dict[str, str]:
    return placement_of(await qmp.execute("query-pci"))


async def plug_disk(qmp: Qmp, index: int, disk: DiskSpec, hv: HvParams) -> bool:
    """Plug the image in as disk ``index``; False when it already was (nothing done)."""
    problem = _disk_problem(disk, hv)
    if problem:
        raise HotplugError(f"disk {index}", problem)
    return await _plug(qmp, hv, f"disk {index} ({disk.path})", disk_device_id(index),
                       lambda bus: disk_commands(index, disk, hv, bus), lambda: _delete_nodes(qmp, index))


async def unplug_disk(qmp: Qmp, index: int, timeout_s: float = UNPLUG_TIMEOUT_S) -> bool:
    """Take disk ``index`` out of the guest and close its image; False when it was not there."""
    return await _take_out(qmp, disk_device_id(index), f"disk {index}", timeout_s, lambda: _delete_nodes(qmp, index))


async def plug_nic(qmp: Qmp, index: int, nic: NicSpec, hv: HvParams) -> bool:
    """Plug NIC ``index`` in; False when it already was (nothing done)."""
    return await _plug(qmp, hv, f"NIC {index} ({nic.mac})", nic_device_id(index),
                       lambda bus: nic_commands(index, nic, hv, bus), lambda: _delete_netdev(qmp, index))


async def unplug_nic(qmp: Qmp, index: int, timeout_s: float = UNPLUG_TIMEOUT_S) -> bool:
    """Take NIC ``index`` out of the guest and delete its netdev; False when it was not there."""
    return await _take_out(qmp, nic_device_id(index), f"NIC {index}", timeout_s, lambda: _delete_netdev(qmp, index))


async def _take_out(qmp: Qmp, device: str, what: str, timeout_s: float, clear: Callable[[], Awaitable[None]]) -> bool:
    """Unplug ``device`` if the guest has it, then ``clear`` what backed it (also what a half-done unplug left)."""
    present = device in await _devices(qmp)
    if present:
        await _unplug(qmp, device, what, timeout_s)
    await clear()
    return present


async def resize(qmp: Qmp, index: int, size_bytes: int) -> None:
    """Grow disk ``index``, whether it came with the QEMU (a -drive named disk<i>) or was hot-plugged
    (a block node of that name)."""
    nodes = await qmp.execute("query-named-block-nodes", {"flat": True})
    fmt_node = disk_nodes(index)[0]
    hot = isinstance(nodes, list) and any(isinstance(n, dict) and n.get("node-name") == fmt_node for n in nodes)
    await qmp.execute("block_resize", {"node-name" if hot else "device": fmt_node, "size": size_bytes})


async def open_images(qmp: Qmp) -> set[str]:
    """The image files this QEMU has open, whatever their node or device names."""
    nodes = await qmp.execute("query-named-block-nodes", {"flat": True})
    return {str(n["file"]) for n in nodes if isinstance(n, dict) and n.get("file")} \
        if isinstance(nodes, list) else set()


def _disk_problem(disk: DiskSpec, hv: HvParams) -> str:
    if hv.disk_bus != "virtio":
        return (f"only virtio disks are hot-plugged (the instance's disk_bus is {hv.disk_bus!r}); "
                "stop the instance to add or remove it")
    if disk.media != "disk":
        return "only a disk image is hot-plugged (not a CD-ROM)"
    return ""


async def _plug(qmp: Qmp, hv: HvParams, what: str, device: str, commands: Callable[[str | None], list[Command]],
                clear: Callable[[], Awaitable[None]]) -> bool:
    """Run ``commands`` unless ``device`` exists; ``clear`` removes what an interrupted or failed plug left."""
    if device in await _devices(qmp):
        return False
    await clear()
    try:
        for command, args in commands(await _bus(qmp, hv, what)):
            await qmp.execute(command, args)
    except QmpError as exc:
        await clear()
        raise HotplugError(what, f"QEMU refused it: {exc.reason}") from exc
    log.info("%s hot-plugged", what)
    return True


async def _bus(qmp: Qmp, hv: HvParams, what: str) -> str | None:
    """Where the device goes: a free root port on q35, the PCI bus itself (None) on the PC machine."""
    if hv.machine == "pc" or hv.machine.startswith("pc-i440fx"):
        return None
    if "q35" not in hv.machine:
        raise HotplugError(what, f"machine {hv.machine!r} has no PCI hot-plug; stop the instance to change it")
    port = free_port(await qmp.execute("query-pci"), hv.hotplug_slots)
    if port is None:
        raise HotplugError(what, f"no free hot-plug slot: the instance started with hotplug_slots="
                                 f"{hv.hotplug_slots}, all in use (or it started before they existed); stop it "
                                 "to make the change, or raise hotplug_slots (`corral instance modify --hv`) "
                                 "for its next start")
    return port


async def _devices(qmp: Qmp) -> set[str]:
    """Ids of the devices given one (-device id=..., device_add)."""
    children = await qmp.execute("qom-list", {"path": "/machine/peripheral"})
    return {str(c.get("name")) for c in children if isinstance(c, dict)} if isinstance(children, list) else set()


async def _unplug(qmp: Qmp, device: str, what: str, timeout_s: float) -> None:
    """device_del, then wait (bounded) for the guest to let the device go."""
    try:
        await qmp.execute("device_del", {"id": device})
    except QmpError as exc:
        if "does not support hotplugging" in exc.reason:
            raise HotplugError(what, "it came with the instance's start, on a bus without hot-plug (the q35 "
                                     "machine's root bus): stop the instance to remove it") from exc
        raise HotplugError(what, f"QEMU refused it: {exc.reason}") from exc
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while (remaining := deadline - loop.time()) > 0:
        event = await qmp.next_event(remaining)
        if event is None:
            break
        if event.get("event") == "DEVICE_DELETED" and (event.get("data") or {}).get("device") == device:
            log.info("%s unplugged", what)
            return
    if device not in await _devices(qmp):
        return
    raise HotplugError(what, f"the guest did not let it go within {timeout_s:g} s (a guest without ACPI or "
                             "PCI hot-plug support, or one still booting, ignores the request); it may still "
                             "let go later: try again, or stop the instance")


async def _delete_nodes(qmp: Qmp, index: int) -> None:
    """Delete this disk's block nodes that exist, parents first (a replicated disk's mirror is ended
    before: its job and copy hold the quorum)."""
    nodes = await qmp.execute("query-named-block-nodes", {"flat": True})
    names = {n.get("node-name") for n in nodes if isinstance(n, dict)} if isinstance(nodes, list) else set()
    for node in disk_nodes(index):
        if node in names:
            await qmp.execute("blockdev-del", {"node-name": node})


async def _delete_netdev(qmp: Qmp, index: int) -> None:
    """netdev_del of ``net<i>`` if it exists; QMP cannot list netdevs, so its refusal is the answer."""
    try:
        await qmp.execute("netdev_del", {"id": f"net{index}"})
    except QmpError as exc:
        if "not found" not in exc.reason:
            raise
