"""Networks, their address pools and instance NICs on a real one-node cluster (etcd, Serf, QEMU under TCG).

The cluster has one more OS beside the repository's: 'netenv-guest', the
corral-guest definition whose create script first writes the NIC environment
it was given to its log, so the test reads what an OS script sees. In file
order the tests read like an operator's session on the network 'lan' and the
instance 'web1' (made by fixtures), and each also passes alone. NICs here are
user-mode: this host has no bridge to spare (and its kernel no VLAN-aware
bridges).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from conftest import REPO, AgentNode, one_node_cluster, wait_for

pytestmark = pytest.mark.integration
BOOT_TIMEOUT_S = 90
ADD = ("instance", "add", "--os", "netenv-guest", "--memory", "128M", "--disk", "64M", "--no-start")


@pytest.fixture(scope="module")
def node(tmp_path_factory, guest_dir):
    root = tmp_path_factory.mktemp("networks")
    os_dir = root / "os" / "netenv-guest"
    shutil.copytree(REPO / "packaging" / "os" / "corral-guest", os_dir)
    (os_dir / "create").write_text("#!/bin/sh\nenv | grep '^NIC_' | sort\n"
                                   f"exec {REPO}/packaging/os/corral-guest/create\n")
    agent = AgentNode(root / "n1")
    agent.config.write_text(agent.config.read_text().replace(
        'os_search_paths = [', f'os_search_paths = ["{root / "os"}", '))
    with one_node_cluster(agent, guest_dir, "nets"):
        yield agent


@pytest.fixture(scope="module")
def lan(node) -> str:
    """The network the tests use; what `network add` said."""
    return node.ok("network", "add", "lan", "--subnet", "10.10.0.0/29", "--gateway", "10.10.0.1",
                   "--mac-prefix", "aa:00:00", "--tag", "site:lab")


@pytest.fixture(scope="module")
def web1(node, lan) -> str:
    """A stopped instance with an address from lan's pool (nic 0) and a user-mode NIC (nic 1)."""
    node.ok(*ADD[:2], "web1", *ADD[2:], "--net", "network=lan,ip=pool", "--net", "mode=user")
    return "web1"


def refused(node: AgentNode, *args: str) -> str:
    """The error of a command that must fail: non-zero exit, the message on stderr."""
    result = node.corral(*args)
    assert result.returncode != 0, f"corral {' '.join(args)} succeeded:\n{result.stdout}"
    return result.stderr


def os_env(node: AgentNode, instance: str) -> dict[str, str]:
    [log] = list((node.root / "log" / "os").glob(f"add-netenv-guest-{instance}-*.log"))
    return dict(line.split("=", 1) for line in log.read_text().splitlines() if re.match(r"NIC_\w+=", line))


def test_a_network_is_added_listed_and_shown(node, lan):
    assert "network 'lan' added: 10.10.0.0/29, 5 addresses to hand out" in lan
    [row] = node.json("network", "list")
    assert (row["name"], row["subnet"], row["free_count"], row["used_count"]) == ("lan", "10.10.0.0/29", 5, 0)
    info = node.ok("network", "info", "lan")
    assert "10.10.0.0 (network), 10.10.0.7 (broadcast), 10.10.0.1 (gateway)" in info
    assert "free:         10.10.0.2-10.10.0.6" in info


@pytest.mark.parametrize("args, words", [
    (("--subnet", "10.10.0.5/29"), "has host bits set; the network is 10.10.0.0/29"),
    (("--subnet", "fd00::/64"), "IPv6; Corral's networks are IPv4 only"),
    (("--subnet", "10.20.0.0/24", "--gateway", "10.30.0.1"), "gateway 10.30.0.1 is not a host address"),
])
def test_a_bad_network_is_refused(node, lan, args, words):
    assert words in refused(node, "network", "add", "wan", *args)
    assert [n["name"] for n in node.json("network", "list")] == ["lan"]


def test_an_address_from_the_pool_reaches_the_os_scripts_environment(node, web1):
    env = os_env(node, "web1")
    assert (env["NIC_0_IP"], env["NIC_0_NETWORK_NAME"], env["NIC_0_NETWORK_SUBNET"]) == \
        ("10.10.0.2", "lan", "10.10.0.0/29")
    assert (env["NIC_0_NETWORK_GATEWAY"], env["NIC_0_NETWORK_TAGS"], env["NIC_0_NETWORK_MAC_PREFIX"]) == \
        ("10.10.0.1", "site:lab", "aa:00:00")
    assert env["NIC_0_MAC"].startswith("aa:00:00:") and env["NIC_0_MODE"] == "user"
    assert env["NIC_COUNT"] == "2"
    assert "NIC_1_IP" not in env and "NIC_1_NETWORK_NAME" not in env
    [used] = node.json("network", "info", "lan")["used"]
    assert used == {"ip": "10.10.0.2", "by": "instance 'web1' nic 0"}


def test_bad_nics_are_refused_at_add_and_nothing_is_made(node, web1):
    mac = node.json("instance", "info", "web1")["nics"][0]["mac"]
    for net, words in (("network=lan,ip=10.10.1.3", "ip 10.10.1.3 is outside network 'lan' (10.10.0.0/29"),
                       ("network=lan,ip=10.10.0.2", "ip 10.10.0.2 of network 'lan' is already used by "
                                                    "instance 'web1' nic 0"),
                       ("network=lan,ip=10.10.0.1", "ip 10.10.0.1 is the gateway address of network 'lan'"),
                       (f"mac={mac}", f"MAC address {mac} is already used"),
                       ("network=wan,ip=pool", "no network named 'wan' (networks: lan"),
                       ("ip=10.10.0.3", "needs a network")):
        assert words in refused(node, *ADD[:2], "web2", *ADD[2:], "--net", net), net
    assert [i["name"] for i in node.json("instance", "list")] == ["web1"]
    assert node.json("network", "info", "lan")["used_count"] == 1


def test_a_network_in_use_is_not_removed(node, web1):
    assert "network 'lan' is used by the NICs of instance(s) web1" in refused(node, "network", "remove", "lan")
    assert [n["name"] for n in node.json("network", "list")] == ["lan"]


def test_nics_of_a_stopped_instance_change_in_one_job_and_the_guest_boots_with_them(node, web1):
    out = node.ok("instance", "modify", "web1", "--net", "add:network=lan,ip=10.10.0.5", "--net", "1:remove",
                  "--net", "0:modify,ip=10.10.0.3")
    assert "nic 2 added: user-mode, network 'lan' ip 10.10.0.5" in out
    assert "nic 1 removed (was user-mode" in out
    assert "nic 0: user-mode, network 'lan' ip 10.10.0.2" in out and "ip 10.10.0.3" in out
    nics = node.json("instance", "info", "web1")["nics"]
    assert [(n["network"], n["ip"]) for n in nics] == [("lan", "10.10.0.3"), ("lan", "10.10.0.5")]
    used = {u["ip"]: u["by"] for u in node.json("network", "info", "lan")["used"]}
    assert used == {"10.10.0.3": "instance 'web1' nic 0", "10.10.0.5": "instance 'web1' nic 1"}
    assert "network lan ip 10.10.0.5" in node.ok("instance", "info", "web1")
    node.ok("instance", "start", "web1")
    wait_for(lambda: "CORRAL-GUEST-BOOTED count=1" in node.console_log("web1"), BOOT_TIMEOUT_S, "web1 to boot")
    pid = node.json("instance", "info", "web1")["pid"]
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode()
    assert all(f"mac={n['mac']}" in cmdline for n in nics) and cmdline.count("-netdev") == 2


def test_bad_nic_changes_are_refused_and_nothing_changes(node, lan):
    """On an instance of its own with two addresses of lan (.4 and .6: free whatever web1 holds)."""
    node.ok(*ADD[:2], "web2", *ADD[2:], "--net", "network=lan,ip=10.10.0.4", "--net", "network=lan,ip=10.10.0.6")
    try:
        node.ok("instance", "start", "web2")
        before = node.json("instance", "info", "web2")["nics"]
        assert "instance 'web2' is running" in refused(node, "instance", "modify", "web2", "--net", "0:remove")
        node.ok("instance", "stop", "web2", "--force")  # its guest need not boot for this
        for change, words in (("0:modify,ip=10.10.0.6", "ip 10.10.0.6 of network 'lan' is already used by nic 1 "
                                                        "of this instance"),
                              ("0:modify,ip=10.10.0.7", "ip 10.10.0.7 is the broadcast address"),
                              ("add:network=lan,ip=10.10.9.9", "is outside network 'lan'"),
                              (f"add:mac={before[1]['mac']}", "is already used"),
                              ("5:remove", "there is no nic 5"),
                              ("1:bogus", "give add:KEY=VALUE")):
            assert words in refused(node, "instance", "modify", "web2", "--net", change), change
        assert node.json("instance", "info", "web2")["nics"] == before
    finally:
        node.corral("instance", "remove", "web2")


def test_removing_the_instance_releases_its_addresses_and_then_the_network_goes(node, web1):
    verify = node.corral("cluster", "verify").stdout  # every NIC's address is recorded, every record has its NIC
    assert "address" not in verify and "network" not in verify, verify
    node.ok("instance", "remove", "web1")
    assert node.json("network", "info", "lan")["used"] == []
    node.ok("network", "remove", "lan")
    assert node.json("network", "list") == []
