"""hostagent.node.disks: which template holds an instance's disks on this node."""

import pytest

from storage.base import StorageError
from storage.filedisk import FileTemplate
from storage.lvm import PlainTemplate

from hostagent.node.disks import NodeDisks


def test_files_hold_file_and_mirror_disks_and_orders_that_name_no_template(tmp_path):
    files, lvm = FileTemplate(str(tmp_path)), PlainTemplate("vg0")
    disks = NodeDisks("n1", files, lvm)
    assert [disks.of(t) for t in ("file", "mirror", None)] == [files, files, files]
    assert disks.for_order({"name": "web1", "index": 0}) is files
    assert disks.protocol("mirror") == "file"


def test_plain_disks_are_the_volume_groups_whether_an_order_carries_the_record_or_the_template(tmp_path):
    lvm = PlainTemplate("vg0")
    disks = NodeDisks("n1", FileTemplate(str(tmp_path)), lvm)
    assert disks.for_order({"instance": {"name": "db1", "disk_template": "plain"}}) is lvm
    assert disks.for_order({"name": "db1", "disk_template": "plain"}) is lvm
    assert disks.protocol("plain") == "host_device"


def test_plain_on_a_node_without_a_volume_group_says_what_to_set(tmp_path):
    disks = NodeDisks("n2", FileTemplate(str(tmp_path)), None)
    with pytest.raises(StorageError, match=r"node 'n2' has no LVM volume group: set \[storage\] volume_group"):
        disks.of("plain")
