"""The node-VM test bed (tests/integration/nodevm.py): a node VM that is powered off and booted again keeps what a
real node keeps. Real agents run LVM and DRBD in node VMs in test_nodevm_plain.py and test_nodevm_drbd.py."""

from __future__ import annotations

import pytest
from nodevm import STATE, NodeVMs

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


def test_a_node_vm_booted_again_keeps_its_state_directory_and_its_logical_volumes_and_nothing_else(tmp_path):
    vms = NodeVMs(tmp_path, ["n1"], state_disk=True)
    n1 = vms["n1"]
    try:
        vms.start()
        assert n1.ok(f"findmnt -n -o SOURCE,FSTYPE {STATE}").split() == ["/dev/vdb", "ext4"], "the data disk is vda"
        n1.ok("pvcreate -q /dev/vda && vgcreate -q vg0 /dev/vda && lvcreate -q -L 8M -n kept vg0 && "
              "dd if=/dev/urandom of=/dev/vg0/kept bs=1M count=8 oflag=direct 2>/dev/null")
        written = n1.ok("md5sum </dev/vg0/kept")
        n1.ok(f"echo identity-of-n1 >{STATE}/identity && touch {STATE}/run/agent.pid /tmp/scratch && sync")

        n1.power_off()
        n1.boot_again()
        assert n1.ok(f"cat {STATE}/identity") == "identity-of-n1\n"
        assert n1.ok("lvs --noheadings -o lv_attr vg0/kept").strip()[4] == "a", "the volume group is active again"
        assert n1.ok("md5sum </dev/vg0/kept") == written
        assert n1.run(f"ls {STATE}/run/agent.pid /tmp/scratch").out == "", "what a boot starts afresh came back"
    finally:
        vms.stop()
