"""Which disk template holds an instance's disks on this node: files, logical volumes in the node's volume
group, or DRBD resources over logical volumes, by the template its record names (orders that lack one
predate LVM: files)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from storage.base import StorageError
from storage.drbd import DrbdDisk, DrbdDisks, DrbdNode
from storage.filedisk import FileTemplate
from storage.lvm import PlainTemplate

from hostagent import model


class NodeDisks:
    """The node's file storage and, when its agent.toml names one, its volume group (and DRBD over it)."""

    def __init__(self, node: str, files: FileTemplate, lvm: PlainTemplate | None, drbd: DrbdNode | None = None,
                 address_of: Callable[[str], str] | None = None) -> None:
        """`address_of`: a node's replication address, from the cluster's node records (for DRBD peers)."""
        self._node = node
        self.files = files
        self.lvm = lvm
        self.drbd = drbd
        self._address_of = address_of or (lambda name: "")

    def of(self, template: str | None) -> FileTemplate | PlainTemplate | DrbdDisks:
        """The template for disks of `template` (a record's or an order's disk_template); for drbd, one
        that can remove disks but not make them (that takes the record: `for_instance`)."""
        if template not in model.ON_LVM:
            return self.files
        lvm = self.volumes(str(template))
        return DrbdDisks(self._need_drbd(), self._node, []) if template == "drbd" else lvm

    def volumes(self, template: str = "plain") -> PlainTemplate:
        """The node's volume group; StorageError saying what to set when it has none."""
        if self.lvm is None:
            raise StorageError(f"node '{self._node}' has no LVM volume group: set [storage] volume_group in its "
                               f"agent.toml ({template} disks are logical volumes)")
        return self.lvm

    def _need_drbd(self) -> DrbdNode:
        if self.drbd is None:
            raise StorageError(f"node '{self._node}' has no LVM volume group for DRBD: set [storage] volume_group "
                               "in its agent.toml")
        return self.drbd

    def for_instance(self, inst: Mapping[str, Any]) -> FileTemplate | PlainTemplate | DrbdDisks:
        """The template of this instance's disks here; a drbd instance's with its resources."""
        if inst.get("disk_template") != "drbd":
            return self.of(inst.get("disk_template"))
        return DrbdDisks(self._need_drbd(), self._node, self.drbd_disks(inst))

    def drbd_disks(self, inst: Mapping[str, Any]) -> list[DrbdDisk]:
        """The instance's DRBD resources as this node holds them (it is its primary or its secondary)."""
        primary, secondary = inst["primary_node"], inst.get("secondary_node") or ""
        if self._node not in (primary, secondary):
            raise StorageError(f"node '{self._node}' holds no copy of instance '{inst['name']}' "
                               f"(its nodes: {primary}, {secondary or 'none'})")
        peer = secondary if self._node == primary else primary
        slots = {int(s["index"]): s for s in inst.get("drbd") or []}
        disks = []
        for d in inst["disks"]:
            slot = slots.get(int(d["index"]))
            if slot is None:
                raise StorageError(f"instance '{inst['name']}' has no DRBD minor and port for disk {d['index']}")
            disks.append(DrbdDisk(inst["name"], int(d["index"]), int(d["size_mib"]), int(slot["minor"]),
                                  int(slot["port"]), str(slot["secret"]), self._node,
                                  self._address_of(self._node), peer, self._address_of(peer),
                                  int(slot.get("meta_mib") or 4)))
        return disks

    def for_order(self, args: Mapping[str, Any]) -> FileTemplate | PlainTemplate | DrbdDisks:
        """The template of an order about an instance: its `instance` record's, else its `disk_template`."""
        inst = args.get("instance")
        if isinstance(inst, Mapping):
            return self.for_instance(inst)
        return self.of(args.get("disk_template"))

    def protocol(self, template: str | None) -> str:
        """QEMU's block driver under the format: a logical volume or DRBD device is a block device."""
        return "host_device" if template in model.ON_LVM else "file"
