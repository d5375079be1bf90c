"""The node-VM test bed (tests/integration/nodevm.py): real LVM and DRBD in QEMU guests running Debian's kernel,
which has the modules this host's kernel lacks (real agents in node VMs: test_nodevm_plain.py), and a node VM that
is powered off and booted again with what a real node keeps. Each test boots its own VMs (10-20 s)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from nodevm import STATE, NodeVM, NodeVMs

from storage.drbdconf import DrbdPeer, DrbdResource, module_version, random_secret, render_resource

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


@pytest.fixture
def two_vms(tmp_path: Path) -> Iterator[NodeVMs]:
    vms = NodeVMs(tmp_path, ["n1", "n2"])
    try:
        vms.start()
        yield vms
    finally:
        vms.stop()


def drbd_state(vm: NodeVM, minor: int) -> dict[str, str]:
    """cs (connection), ro (roles), ds (disk states) and oos (KiB out of sync) of a minor, from /proc/drbd."""
    text = vm.ok("cat /proc/drbd")
    block = re.search(rf"^ *{minor}: (.*?)(?=^ *\d+: |\Z)", text, re.MULTILINE | re.DOTALL)
    assert block, f"minor {minor} not in /proc/drbd on {vm.name}: {text}"
    return dict(re.findall(r"\b(cs|ro|ds|oos):(\S+)", block[1]))


def wait_drbd(vm: NodeVM, minor: int, want: dict[str, str], within_s: float) -> dict[str, str]:
    state: dict[str, str] = {}
    for _ in range(int(within_s * 2)):
        state = drbd_state(vm, minor)
        if all(state.get(k) == v for k, v in want.items()):
            return state
        time.sleep(0.5)
    raise AssertionError(f"DRBD minor {minor} on {vm.name} never reached {want} in {within_s:.0f} s: {state}")


def test_lvm_and_a_drbd_84_resource_written_by_corral_replicate_and_resync_only_what_changed(two_vms):
    n1, n2 = two_vms["n1"], two_vms["n2"]
    version = module_version(n1.ok("cat /proc/drbd"))
    assert version == "8.4", "Debian 12's kernel carries DRBD 8.4: the 8.4 dialect is the one to prove here"
    peers = []
    for i, vm in enumerate((n1, n2)):
        vm.ok("pvcreate -q /dev/vda && vgcreate -q vg0 /dev/vda && lvcreate -q -L 16M -n web1-disk0 vg0 "
              "&& lvcreate -q -L 128M -n web1-disk0-meta vg0")
        assert "-wi-a-" in vm.ok("lvs --noheadings -o lv_attr vg0/web1-disk0")  # active: a real device
        peers.append(DrbdPeer(vm.name, i, vm.address, 11000, "/dev/vg0/web1-disk0", "/dev/vg0/web1-disk0-meta"))
    res = DrbdResource("corral-web1-0", 0, random_secret(), (peers[0], peers[1]))
    for vm in (n1, n2):
        vm.ok(f"cat > /etc/drbd.d/{res.name}.res <<'EOF'\n{render_resource(res, version)}EOF")
        vm.ok(f"drbdadm create-md --force {res.name} && drbdadm up {res.name}")
        # Quicker than DRBD's defaults (the file, as Corral wrote it, sets none), at run time: a lost peer noticed
        # within about 1.5 s, not 10.5 (ping-int), and a returned one connected within 1 s, not 10 (connect-int)
        vm.ok(f"drbdadm net-options --ping-int=1 --connect-int=1 {res.name}")
    n1.ok(f"drbdadm primary --force {res.name}")
    wait_drbd(n1, 0, {"cs": "Connected", "ds": "UpToDate/UpToDate"}, 60)

    n1.ok("dd if=/dev/urandom of=/tmp/pattern bs=1M count=4 2>/dev/null && "
          "dd if=/tmp/pattern of=/dev/drbd0 bs=1M oflag=direct 2>/dev/null")
    two_vms.cut("n2")  # the secondary's cable pulled: the primary writes on alone and counts what the peer misses
    wait_drbd(n1, 0, {"ds": "UpToDate/DUnknown"}, 60)
    n1.ok("dd if=/dev/urandom of=/tmp/later bs=1M count=1 2>/dev/null && "
          "dd if=/tmp/later of=/dev/drbd0 bs=1M seek=8 oflag=direct 2>/dev/null")
    assert drbd_state(n1, 0)["oos"] == "1024", "1 MiB written while apart must be exactly what is out of sync"
    two_vms.join("n2")
    wait_drbd(n1, 0, {"cs": "Connected", "ds": "UpToDate/UpToDate", "oos": "0"}, 90)

    n1.ok(f"drbdadm secondary {res.name}")
    n2.ok(f"drbdadm primary {res.name}")
    want = n1.ok("cat /tmp/pattern | md5sum").split()[0], n1.ok("cat /tmp/later | md5sum").split()[0]
    got = (n2.ok("dd if=/dev/drbd0 bs=1M count=4 iflag=direct 2>/dev/null | md5sum").split()[0],
           n2.ok("dd if=/dev/drbd0 bs=1M skip=8 count=1 iflag=direct 2>/dev/null | md5sum").split()[0])
    assert got == want, "the secondary's copy differs from what the primary wrote"

    n2.power_off()  # the primary's node dies (its QEMU killed): n1 sees its peer gone, its own copy kept
    state = wait_drbd(n1, 0, {"cs": "WFConnection", "ro": "Secondary/Unknown"}, 60)
    assert state["ds"].startswith("UpToDate/"), state


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
