"""Which disk template holds an instance's disks on this node: files, or logical volumes in the node's
volume group, by the template its record names (orders that lack one predate LVM: files)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from storage.base import StorageError
from storage.filedisk import FileTemplate
from storage.lvm import PlainTemplate

from hostagent import model


class NodeDisks:
    """The node's file storage and, when its agent.toml names one, its volume group."""

    def __init__(self, node: str, files: FileTemplate, lvm: PlainTemplate | None) -> None:
        self._node = node
        self.files = files
        self.lvm = lvm

    def of(self, template: str | None) -> FileTemplate | PlainTemplate:
        """The template for disks of `template` (a record's or an order's disk_template)."""
        if template not in model.ON_LVM:
            return self.files
        if self.lvm is None:
            raise StorageError(f"node '{self._node}' has no LVM volume group: set [storage] volume_group in its "
                               f"agent.toml ({template} disks are logical volumes)")
        return self.lvm

    def for_order(self, args: Mapping[str, Any]) -> FileTemplate | PlainTemplate:
        """The template of an order about an instance: its `instance` record's, else its `disk_template`."""
        inst = args.get("instance")
        return self.of(inst.get("disk_template") if isinstance(inst, Mapping) else args.get("disk_template"))

    def protocol(self, template: str | None) -> str:
        """QEMU's block driver under the format: a logical volume is a block device (host_device)."""
        return "host_device" if template in model.ON_LVM else "file"
