"""Hot-plug of disks and NICs: the QMP commands built, the root port chosen, and the unplug
handshake against a fake QMP session (the seam), without QEMU."""

import dataclasses
import re
from typing import Any

import pytest

from kvm.cmdline import DiskSpec, InstanceSpec, NicSpec, build_argv, run_paths
from kvm.hotplug import (HotplugError, disk_commands, free_port, nic_commands, placement_of, plug_disk,
                         unplug_disk, unplug_nic)
from kvm.hvparams import HvParams
from kvm.qmp import QmpError

Q35 = HvParams()
DISK = DiskSpec("/var/lib/corral/disks/web1/disk1.raw", "raw")


def test_a_disk_is_a_file_node_a_format_node_and_a_virtio_device_named_by_its_index():
    commands = disk_commands(1, DISK, Q35, "hotplug0")
    assert commands == [
        ("blockdev-add", {"driver": "file", "filename": DISK.path, "node-name": "disk1-file",
                          "cache": {"direct": True, "no-flush": False}, "discard": "unmap"}),
        ("blockdev-add", {"driver": "raw", "file": "disk1-file", "node-name": "disk1",
                          "cache": {"direct": True, "no-flush": False}, "discard": "unmap"}),
        ("device_add", {"driver": "virtio-blk-pci", "drive": "disk1", "id": "disk1-dev", "write-cache": "on",
                        "bus": "hotplug0"}),
    ]


def test_a_logical_volume_is_plugged_as_a_block_device():
    lv = DiskSpec("/dev/vg0/corral-web1-disk1", "raw", protocol="host_device")
    assert disk_commands(1, lv, Q35, "hotplug0")[0] == \
        ("blockdev-add", {"driver": "host_device", "filename": lv.path, "node-name": "disk1-file",
                          "cache": {"direct": True, "no-flush": False}, "discard": "unmap"})


def test_a_writethrough_disk_has_no_guest_write_cache_and_the_pc_machine_picks_its_own_slot():
    commands = disk_commands(2, DISK, HvParams(machine="pc", disk_cache="writethrough"), None)
    device = commands[-1][1]
    assert device["write-cache"] == "off" and "bus" not in device


def test_a_replicated_disk_is_plugged_under_a_quorum_of_its_image_and_a_sink_as_a_cold_start_builds_it():
    disk = dataclasses.replace(DISK, format="qcow2", replicated=True, size_bytes=64 * 2**20)
    commands = disk_commands(1, disk, Q35, "hotplug0")
    cache = {"direct": True, "no-flush": False}
    assert commands == [
        ("blockdev-add", {"driver": "file", "filename": DISK.path, "node-name": "disk1-file", "cache": cache,
                          "discard": "unmap"}),
        ("blockdev-add", {"driver": "qcow2", "file": "disk1-file", "node-name": "disk1-local", "cache": cache,
                          "discard": "unmap"}),
        ("blockdev-add", {"driver": "null-co", "node-name": "disk1-sink", "size": 64 * 2**20}),
        ("blockdev-add", {"driver": "quorum", "node-name": "disk1", "vote-threshold": 2, "read-pattern": "fifo",
                          "children": ["disk1-local", "disk1-sink"]}),
        ("device_add", {"driver": "virtio-blk-pci", "drive": "disk1", "id": "disk1-dev", "write-cache": "on",
                        "bus": "hotplug0", "werror": "stop", "rerror": "stop"}),
    ]
    # The node names of a cold start's -blockdev options, so that mirror, guard and unplug find them either way.
    cold = build_argv(InstanceSpec("m1", "00000000-0000-4000-8000-000000000001", 128, 1, Q35, (disk,), ()),
                      run_paths("/run/c", "m1"))
    plugged = {a["node-name"] for c, a in disk_commands(0, disk, Q35, None) if c == "blockdev-add"}
    assert plugged == {m.group(1) for a in cold for m in [re.search(r"node-name=([^,]+)", a)] if m}
    with pytest.raises(HotplugError, match="virtual size"):
        disk_commands(1, dataclasses.replace(disk, size_bytes=0), Q35, None)


@pytest.mark.parametrize("hv, disk", [(HvParams(disk_bus="ide"), DISK),
                                      (Q35, DiskSpec("/d/x.iso", "raw", "cdrom"))])
def test_only_virtio_disk_images_are_hot_plugged(hv, disk):
    with pytest.raises(HotplugError, match="hot-plugged"):
        disk_commands(1, disk, hv, None)



def test_a_bridged_nic_uses_its_prepared_tap_and_a_user_nic_the_user_network():
    bridged = nic_commands(1, NicSpec("52:54:00:00:00:02", "bridged", "crl1234abcdn1"), Q35, "hotplug1")
    assert bridged == [
        ("netdev_add", {"type": "tap", "id": "net1", "ifname": "crl1234abcdn1", "script": "no",
                        "downscript": "no"}),
        ("device_add", {"driver": "virtio-net-pci", "netdev": "net1", "id": "net1-dev", "mac": "52:54:00:00:00:02",
                        "bus": "hotplug1"}),
    ]
    user = nic_commands(0, NicSpec("52:54:00:00:00:01", "user"), HvParams(nic_model="e1000"), None)
    assert user[0][1] == {"type": "user", "id": "net0"} and user[1][1]["driver"] == "e1000"


# query-pci of a q35 guest with two spare ports, a disk hot-plugged into the first (QEMU 7.2).
QUERY_PCI = [{"bus": 0, "devices": [
    {"bus": 0, "slot": 0, "function": 0, "qdev_id": ""},
    {"bus": 0, "slot": 1, "function": 0, "qdev_id": "disk0-dev"},
    {"bus": 0, "slot": 3, "function": 0, "qdev_id": "hotplug0",
     "pci_bridge": {"bus": {"number": 1, "secondary": 1, "subordinate": 1},
                    "devices": [{"bus": 1, "slot": 0, "function": 0, "qdev_id": "disk1-dev"}]}},
    {"bus": 0, "slot": 4, "function": 0, "qdev_id": "hotplug1",
     "pci_bridge": {"bus": {"number": 2, "secondary": 2, "subordinate": 2}, "devices": []}},
]}]


def test_the_first_empty_spare_port_is_taken_and_none_when_all_are_used():
    assert free_port(QUERY_PCI, 2) == "hotplug1"
    assert free_port(QUERY_PCI, 1) is None
    assert free_port([], 4) is None


def test_q35_gets_its_spare_root_ports_after_every_other_device_and_pc_none():
    spec = InstanceSpec(name="web1", uuid="3b6c1f42-9d7e-4c1a-8e0f-2a5b6c7d8e9f", memory_mib=256, vcpus=1,
                        hv=HvParams(hotplug_slots=2), disks=(DISK,), nics=(NicSpec("52:54:00:00:00:01", "user"),))
    argv = build_argv(spec, run_paths("/run/corral", "web1"))
    devices = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "-device"]
    assert devices[-2:] == ["pcie-root-port,id=hotplug0,chassis=1", "pcie-root-port,id=hotplug1,chassis=2"]
    pc = dataclasses.replace(spec, hv=HvParams(machine="pc"))
    assert not any("pcie-root-port" in a for a in build_argv(pc, run_paths("/run/corral", "web1")))


def test_a_migration_target_puts_the_source_s_hot_plugged_devices_on_the_same_ports():
    assert placement_of(QUERY_PCI) == {"disk1-dev": "hotplug0"}
    nics = (NicSpec("52:54:00:00:00:01", "user"), NicSpec("52:54:00:00:00:02", "user"))
    spec = InstanceSpec(name="web1", uuid="3b6c1f42-9d7e-4c1a-8e0f-2a5b6c7d8e9f", memory_mib=256, vcpus=1,
                        hv=HvParams(hotplug_slots=2), disks=(DISK,), nics=nics,
                        placement=(("net1-dev", "hotplug0"),))
    argv = build_argv(spec, run_paths("/run/corral", "web1"))
    devices = [argv[i + 1].split(",") for i, a in enumerate(argv[:-1]) if a == "-device"]
    ids = [next(p for p in d if p.startswith("id=")) for d in devices if any(p.startswith("id=") for p in d)]
    # the root bus keeps its devices in order, the ports come next, then what sits on them
    assert ids[-4:] == ["id=net0-dev", "id=hotplug0", "id=hotplug1", "id=net1-dev"]
    assert "bus=hotplug0" in devices[-1] and not any("bus=hotplug" in p for d in devices[:-1] for p in d)
    assert argv.index("-netdev", argv.index("pcie-root-port,id=hotplug1,chassis=2")) > 0  # its netdev moved along


class FakeQmp:
    """Answers the few commands hot-plug sends, and queues the events a guest would cause."""

    def __init__(self, devices: set[str], nodes: set[str], guest_obeys: bool = True) -> None:
        self.devices, self.nodes, self.guest_obeys = devices, nodes, guest_obeys
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.events: list[dict[str, Any]] = []

    async def execute(self, command: str, arguments: dict[str, Any] | None = None) -> object:
        args = arguments or {}
        self.sent.append((command, args))
        if command == "qom-list":
            return [{"name": d, "type": "child<virtio-blk-pci>"} for d in self.devices]
        if command == "query-named-block-nodes":
            return [{"node-name": n, "file": f"/d/{n}"} for n in self.nodes]
        if command == "query-pci":
            return QUERY_PCI
        if command == "device_del" and self.guest_obeys:
            self.devices.discard(args["id"])
            self.events += [{"event": "DEVICE_DELETED", "data": {"path": f"/machine/peripheral/{args['id']}/x"}},
                            {"event": "DEVICE_DELETED", "data": {"device": args["id"]}}]
        if command == "blockdev-del":
            self.nodes.discard(args["node-name"])
        if command == "netdev_del" and args["id"] != "net1":
            raise QmpError("/q", f"netdev_del: Device '{args['id']}' not found")
        if command == "device_add" and args["id"] in self.devices:
            raise QmpError("/q", "device_add: Duplicate device ID")
        return {}

    async def next_event(self, timeout_s: float) -> dict[str, Any] | None:
        return self.events.pop(0) if self.events else None


async def test_unplug_waits_for_the_guest_then_deletes_the_block_nodes():
    qmp = FakeQmp({"disk0-dev", "disk1-dev"}, {"disk1", "disk1-file"})
    assert await unplug_disk(qmp, 1, timeout_s=1) is True  # type: ignore[arg-type]
    assert [c for c, _ in qmp.sent if c in ("device_del", "blockdev-del")] == \
        ["device_del", "blockdev-del", "blockdev-del"]
    assert qmp.nodes == set()
    assert await unplug_disk(qmp, 1, timeout_s=1) is False  # type: ignore[arg-type]  # again: nothing to do


async def test_a_guest_that_keeps_the_device_fails_the_unplug_and_its_image_stays_open():
    qmp = FakeQmp({"disk1-dev", "net1-dev"}, {"disk1", "disk1-file"}, guest_obeys=False)
    with pytest.raises(HotplugError, match="did not let it go within 0.1 s"):
        await unplug_disk(qmp, 1, timeout_s=0.1)  # type: ignore[arg-type]
    assert qmp.nodes == {"disk1", "disk1-file"}
    with pytest.raises(HotplugError, match="NIC 1"):
        await unplug_nic(qmp, 1, timeout_s=0.1)  # type: ignore[arg-type]


async def test_plugging_clears_leftovers_goes_into_a_free_port_and_is_not_repeated():
    qmp = FakeQmp({"disk0-dev"}, {"disk1-file"})  # an earlier attempt died after its first blockdev-add
    assert await plug_disk(qmp, 1, DISK, Q35) is True  # type: ignore[arg-type]
    sent = [c for c, _ in qmp.sent]
    assert sent.index("blockdev-del") < sent.index("blockdev-add")
    assert qmp.sent[-1] == ("device_add", {"driver": "virtio-blk-pci", "drive": "disk1", "id": "disk1-dev",
                                           "write-cache": "on", "bus": "hotplug1"})
    qmp.devices.add("disk1-dev")
    assert await plug_disk(qmp, 1, DISK, Q35) is False  # type: ignore[arg-type]


async def test_unplugging_a_replicated_disk_deletes_its_quorum_before_the_nodes_under_it():
    qmp = FakeQmp({"disk1-dev"}, {"disk1-file", "disk1-sink", "disk1", "disk1-local"})
    assert await unplug_disk(qmp, 1, timeout_s=1) is True  # type: ignore[arg-type]
    assert [a["node-name"] for c, a in qmp.sent if c == "blockdev-del"] == \
        ["disk1", "disk1-local", "disk1-sink", "disk1-file"]
