"""A running instance changed through Corral, read back from the guest itself (the test guest's boot line and,
with corral.watch=1, its lines as disks come and go): a disk hot-added and hot-removed, memory and vCPUs
changed pending and applied by a reboot."""

import re

import pytest

from conftest import AgentNode, one_node_cluster, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]
BOOTED = re.compile(r"CORRAL-GUEST-BOOTED count=(\d+) mem=(\d+)M cpus=(\d+) disks=(\S*) nics=(\S*)")


@pytest.fixture(scope="module")
def watched(tmp_path_factory, guest_dir):
    """A one-node cluster whose guests report disks and NICs as they come and go."""
    with one_node_cluster(AgentNode(tmp_path_factory.mktemp("hotplug")), guest_dir, "hp", "quiet corral.watch=1",
                          "--restart-backoff", "0.5") as node:
        yield node


def boot(node: AgentNode, name: str, count: int) -> tuple[int, int, str, str]:
    """(memory MiB, vCPUs, disks, NICs) the guest printed at its boot number `count`."""
    def seen():
        return next((m for m in BOOTED.finditer(node.console_log(name)) if int(m.group(1)) == count), None)
    found = wait_for(seen, 120, f"'{name}' to boot a {count}. time (console: {node.console_log(name)[-800:]})")
    return int(found.group(2)), int(found.group(3)), found.group(4), found.group(5)


def printed(node: AgentNode, name: str, line: str, times: int = 1) -> None:
    wait_for(lambda: node.console_log(name).count(line) >= times, 60,
             f"'{name}' to print {line!r} {times}x (console: {node.console_log(name)[-800:]})")


def test_a_disk_is_hot_added_and_hot_removed_and_the_next_boot_has_what_the_config_has(watched):
    node = watched
    node.ok("instance", "add", "hot1", "--os", "busybox-guest", "--memory", "256M", "--vcpus", "1", "--disk", "64M")
    files = node.root / "state" / "file-storage" / "hot1"
    try:
        mac = node.json("instance", "info", "hot1")["nics"][0]["mac"]
        assert boot(node, "hot1", 1) == (256, 1, "vda", mac)
        printed(node, "hot1", "CORRAL-GUEST-WATCHING")

        out = node.ok("instance", "add-disk", "hot1", "32M")
        assert "hot-plugged: the guest sees it now" in out
        printed(node, "hot1", "CORRAL-GUEST-DISK-ADDED vdb")
        assert [d["index"] for d in node.json("instance", "info", "hot1")["disks"]] == [0, 1]

        node.ok("instance", "remove-disk", "hot1", "1", "--destroy-data")
        printed(node, "hot1", "CORRAL-GUEST-DISK-REMOVED vdb")
        assert [d["index"] for d in node.json("instance", "info", "hot1")["disks"]] == [0]
        assert not (files / "disk1.raw").exists()

        node.ok("instance", "add-disk", "hot1", "16M,format=qcow2")
        printed(node, "hot1", "CORRAL-GUEST-DISK-ADDED vdb", times=2)
        node.ok("instance", "reboot", "hot1")
        assert boot(node, "hot1", 2) == (256, 1, "vda,vdb", mac)  # the config's disks, in the same order
        assert node.instance("hot1")["status"] == "running"
    finally:
        node.corral("instance", "remove", "hot1")


def test_memory_and_vcpus_changed_while_running_reach_the_guest_at_its_reboot(watched):
    node = watched
    node.ok("instance", "add", "mem1", "--os", "busybox-guest", "--memory", "256M", "--vcpus", "1", "--disk", "64M")
    try:
        assert boot(node, "mem1", 1)[:2] == (256, 1)
        node.ok("instance", "modify", "mem1", "--memory", "512M", "--vcpus", "2")
        assert node.json("instance", "info", "mem1")["pending"] == {"memory_mib": 512, "vcpus": 2}
        node.ok("instance", "reboot", "mem1")
        assert boot(node, "mem1", 2)[:2] == (512, 2)
        assert not node.json("instance", "info", "mem1").get("pending")
    finally:
        node.corral("instance", "remove", "mem1")


def test_a_nic_is_hot_added_and_its_last_one_removed_and_others_wait_for_a_stop(watched):
    node = watched
    node.ok("instance", "add", "net1", "--os", "busybox-guest", "--memory", "128M", "--disk", "64M")
    try:
        first = node.json("instance", "info", "net1")["nics"][0]["mac"]
        assert boot(node, "net1", 1)[3] == first
        printed(node, "net1", "CORRAL-GUEST-WATCHING")

        out = node.ok("instance", "modify", "net1", "--net", "add:mode=user")
        assert "nic 1 of 'net1' hot-plugged into the running guest on node 'n1'" in out
        second = node.json("instance", "info", "net1")["nics"][1]["mac"]
        printed(node, "net1", f"CORRAL-GUEST-NIC-ADDED {second}")

        before = node.json("instance", "info", "net1")["nics"]
        for change, words in (("0:remove", "nic 0 is removed while later ones stay"),
                              ("1:modify,mac=52:54:00:aa:bb:cc", "nic 1 is changed")):
            result = node.corral("instance", "modify", "net1", "--net", change)
            assert result.returncode != 0 and words in result.stderr and "corral instance stop net1" in result.stderr
        assert node.json("instance", "info", "net1")["nics"] == before

        out = node.ok("instance", "modify", "net1", "--net", "1:remove")
        assert "nic 1 of 'net1' unplugged from the running guest" in out
        printed(node, "net1", f"CORRAL-GUEST-NIC-REMOVED {second}")
        assert [n["mac"] for n in node.json("instance", "info", "net1")["nics"]] == [first]

        # The NIC the instance started with sits on q35's root bus, which has no hot-plug: refused, nothing changed.
        cold = node.corral("instance", "modify", "net1", "--net", "0:remove")
        assert cold.returncode != 0 and "stop the instance to remove it" in cold.stderr + cold.stdout, cold
        assert [n["mac"] for n in node.json("instance", "info", "net1")["nics"]] == [first]

        node.ok("instance", "modify", "net1", "--net", "add:mode=user")
        third = node.json("instance", "info", "net1")["nics"][1]["mac"]
        printed(node, "net1", f"CORRAL-GUEST-NIC-ADDED {third}")
        node.ok("instance", "reboot", "net1")
        assert boot(node, "net1", 2)[3] == f"{first},{third}"  # the config's NICs, in its order
    finally:
        node.corral("instance", "remove", "net1")
