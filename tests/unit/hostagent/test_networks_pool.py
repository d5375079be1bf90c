"""Networks and their IPv4 pools (hostagent.master.decide.networks): what is refused, what is handed out."""

import pytest

from hostagent.master.decide import networks
from hostagent.errors import BadRequest, Conflict

LAN = networks.new_network({"name": "lan", "subnet": "10.0.0.0/29", "gateway": "10.0.0.1",
                            "mac_prefix": "aa:00:00", "bridge": "br0", "vlan": 10, "tags": ["site:a"]}, now=1.0)


def test_a_network_keeps_what_it_was_given():
    assert (LAN["subnet"], LAN["gateway"], LAN["mac_prefix"], LAN["vlan"], LAN["bridge"], LAN["tags"]) == \
        ("10.0.0.0/29", "10.0.0.1", "aa:00:00", 10, "br0", ["site:a"])


@pytest.mark.parametrize("req, words", [
    ({"subnet": "10.0.0.5/24"}, "has host bits set; the network is 10.0.0.0/24"),
    ({"subnet": "10.0.0.0/255.255.255.0"}, "write it in CIDR notation, 10.0.0.0/24"),
    ({"subnet": "10.0.0.0/24", "bridge": ".."}, "bridge '..' is not an interface name"),
    ({"subnet": "2001:db8::/64"}, "IPv6; Corral's networks are IPv4 only"),
    ({"subnet": "ten"}, "is not an IPv4 network in CIDR notation"),
    ({"subnet": "10.0.0.0/31"}, "prefix length from /16 to /30"),
    ({"subnet": "10.0.0.0/8"}, "prefix length from /16 to /30"),
    ({"subnet": "10.0.0.0/24", "gateway": "10.0.1.1"}, "gateway 10.0.1.1 is not a host address of 10.0.0.0/24"),
    ({"subnet": "10.0.0.0/24", "gateway": "10.0.0.255"}, "is not a host address"),
    ({"subnet": "10.0.0.0/24", "mac_prefix": "01:00:5e"}, "is not three octets of a unicast MAC"),
    ({"subnet": "10.0.0.0/24", "vlan": 4095, "bridge": "br0"}, "vlan 4095 is not a VLAN id (1-4094)"),
    ({"subnet": "10.0.0.0/24", "vlan": 5}, "give the network's bridge too"),
    ({"subnet": "10.0.0.0/24", "tags": ["no spaces"]}, "is not a tag"),
])
def test_bad_networks_are_refused_saying_what_is_accepted(req, words):
    with pytest.raises(BadRequest, match=words.replace("(", r"\(").replace(")", r"\)")):
        networks.new_network({"name": "lan", **req}, now=0)


def test_the_pool_hands_out_the_lowest_free_address_never_network_broadcast_or_gateway():
    assert networks.allocate(LAN, {}) == "10.0.0.2"
    assert networks.allocate(LAN, {"10.0.0.2": "x"}) == "10.0.0.3"
    assert networks.pool_size(LAN) == 5
    assert networks.free_ranges(LAN, {"10.0.0.4": "x"}) == ["10.0.0.2-10.0.0.3", "10.0.0.5-10.0.0.6"]


def test_an_exhausted_pool_says_so_with_its_size():
    used = {f"10.0.0.{i}": "x" for i in range(2, 7)}
    with pytest.raises(Conflict, match=r"network 'lan' \(10.0.0.0/29\) has no free address: all 5 addresses"):
        networks.allocate(LAN, used)


@pytest.mark.parametrize("ip, error, words", [
    ("10.0.1.2", BadRequest, "ip 10.0.1.2 is outside network 'lan' (10.0.0.0/29: 10.0.0.1 - 10.0.0.6)"),
    ("10.0.0.1", BadRequest, "ip 10.0.0.1 is the gateway address of network 'lan'"),
    ("10.0.0.0", BadRequest, "ip 10.0.0.0 is the network address"),
    ("10.0.0.7", BadRequest, "ip 10.0.0.7 is the broadcast address"),
    ("10.0.0.3", Conflict, "ip 10.0.0.3 of network 'lan' is already used by instance 'web1' nic 0"),
    ("ten", BadRequest, "ip 'ten' is not an IPv4 address (or 'pool'"),
])
def test_an_address_asked_for_is_checked(ip, error, words):
    with pytest.raises(error) as exc:
        networks.checked_address(LAN, ip, {"10.0.0.3": "instance 'web1' nic 0"})
    assert words in str(exc.value)


def test_info_names_the_nic_holding_each_address():
    instances = [{"name": "web1", "nics": [{"network": "lan", "ip": "10.0.0.3", "mac": "m"}]},
                 {"name": "web2", "nics": [{"network": "other", "ip": "10.0.0.2", "mac": "n"}]}]
    shown = networks.summary(LAN, networks.holders("lan", instances))
    assert shown["used"] == [{"ip": "10.0.0.3", "by": "instance 'web1' nic 0"}]
    assert (shown["used_count"], shown["free_count"]) == (1, 4)
    assert networks.users("lan", instances) == ["web1"]


def test_a_big_pool_is_searched_and_listed_by_what_is_taken_not_address_by_address():
    big = networks.new_network({"name": "big", "subnet": "10.128.0.0/16", "gateway": "10.128.0.1"}, now=0)
    used = {f"10.128.{i // 256}.{i % 256}": "x" for i in range(2, 3000)}
    assert networks.allocate(big, used) == "10.128.11.184"
    assert networks.free_ranges(big, used) == ["10.128.11.184-10.128.255.254"]
    assert networks.summary(big, used)["free_count"] == 65533 - 2998


def test_a_subnet_that_shares_addresses_with_another_network_is_named():
    assert networks.overlapping("10.0.0.0/28", [LAN]) == ["'lan' (10.0.0.0/29)"]
    assert networks.overlapping("10.0.0.8/29", [LAN]) == []


def test_a_mac_prefix_the_host_s_taps_use_is_refused():
    with pytest.raises(BadRequest, match="not fe"):
        networks.new_network({"name": "x", "subnet": "10.0.0.0/24", "mac_prefix": "fe:00:00"}, now=0)


def test_verify_names_a_nic_on_a_gone_network_an_unrecorded_address_and_a_record_no_nic_has():
    web = {"name": "web1", "uuid": "u1", "nics": [{"network": "lan", "ip": "10.0.0.2"},
                                                  {"network": "lan", "ip": "10.0.0.3"},
                                                  {"network": "old", "ip": ""}]}
    held = {"lan/10.0.0.2": "u1", "lan/10.0.0.5": "u1", "lan/10.0.0.6": "gone"}
    found = networks.leftovers([web], ["lan"], held)
    assert [(code, inst) for code, _, inst in found] == [
        ("unrecorded-address", "web1"), ("missing-network", "web1"), ("stale-address", "web1"), ("stale-address", "")]
    words = " | ".join(message for _, message, _ in found)
    assert "nic 1 has ip 10.0.0.3 of network 'lan' with no record holding it" in words
    assert "nic 2 is on network 'old', which no longer exists" in words
    assert "ip 10.0.0.6 is held for an instance that no longer exists" in words
    assert networks.leftovers([web], ["lan", "old"], {"lan/10.0.0.2": "u1", "lan/10.0.0.3": "u1"}) == []
