"""NICs at `instance add` and `instance modify --net` (hostagent.master.decide.nics): networks, pools, MACs, VLANs."""

import random

import pytest

from hostagent.master.decide import networks, nics
from hostagent.errors import BadRequest, Conflict

LAN = networks.new_network({"name": "lan", "subnet": "10.0.0.0/29", "gateway": "10.0.0.1",
                            "mac_prefix": "aa:00:00", "bridge": "br0", "vlan": 10}, now=0)
DMZ = networks.new_network({"name": "dmz", "subnet": "192.0.2.0/30"}, now=0)
NETS = {"lan": LAN, "dmz": DMZ}


def build(specs, taken=None):
    return nics.build(specs, NETS, taken or nics.Taken(), random.Random(1))


def test_a_nic_on_a_network_takes_its_bridge_vlan_mac_prefix_and_a_pool_address():
    [nic] = build([{"network": "lan", "ip": "pool"}])
    assert (nic["mode"], nic["bridge"], nic["vlan"], nic["ip"]) == ("bridged", "br0", 10, "10.0.0.2")
    assert nic["mac"].startswith("aa:00:00:")


def test_two_nics_of_one_request_get_different_addresses():
    first, second = build([{"network": "lan", "ip": "pool"}, {"network": "lan", "ip": "pool"}])
    assert (first["ip"], second["ip"]) == ("10.0.0.2", "10.0.0.3")


def test_what_others_hold_is_a_conflict_and_other_mistakes_a_bad_request():
    taken = nics.Taken(macs={"52:54:00:00:00:01"}, ips={"lan": {"10.0.0.2": "instance 'web1' nic 0"}})
    with pytest.raises(Conflict, match="MAC address 52:54:00:00:00:01 is already used"):
        build([{"mac": "52:54:00:00:00:01"}], taken)
    with pytest.raises(Conflict, match="ip 10.0.0.2 of network 'lan' is already used by instance 'web1' nic 0"):
        build([{"network": "lan", "ip": "10.0.0.2"}], taken)
    with pytest.raises(BadRequest) as err:
        build([{"network": "wan", "ip": "pool"}, {"ip": "10.0.0.5"}, {"mode": "user", "vlan": 5}])
    words = str(err.value)
    assert "nic 0: no network named 'wan' (networks: dmz, lan" in words
    assert "nic 1: ip=10.0.0.5 needs a network" in words
    assert "nic 2: a VLAN tag needs a bridged NIC" in words


def test_an_exhausted_pool_is_refused_with_the_subnet_size():
    with pytest.raises(Conflict, match=r"'dmz' \(192.0.2.0/30\) has no free address: all 2 addresses"):
        build([{"network": "dmz", "ip": "pool"}] * 3)


def test_modify_adds_removes_and_changes_nics_in_order_with_a_log_line_each():
    current = build([{"mode": "user"}, {"network": "lan", "ip": "10.0.0.5"}])
    new, lines, pinned = nics.changed(current, [
        {"action": "add", "network": "dmz", "ip": "pool", "mode": "bridged", "bridge": "br1"},
        {"action": "remove", "index": 0},
        {"action": "modify", "index": 0, "ip": "10.0.0.6"},
    ], NETS, nics.Taken(), random.Random(2))
    assert [(n["network"], n["ip"]) for n in new] == [("lan", "10.0.0.6"), ("dmz", "192.0.2.1")]
    assert lines[0].startswith("nic 2 added: bridged on br1, network 'dmz' ip 192.0.2.1")
    assert lines[1].startswith("nic 0 removed (was user-mode")
    assert "ip 10.0.0.5" in lines[2] and lines[2].count("->") == 1
    assert pinned[0]["mac"] == new[1]["mac"] and pinned[0]["ip"] == "192.0.2.1"


def test_modify_keeps_the_nics_own_address_and_moves_it_to_the_new_networks_pool():
    current = build([{"network": "lan", "ip": "10.0.0.5"}])
    same, _, _ = nics.changed(current, [{"action": "modify", "index": 0, "ip": "10.0.0.5"}], NETS,
                              nics.Taken(), random.Random(3))
    assert same[0]["ip"] == "10.0.0.5"
    moved, _, _ = nics.changed(current, [{"action": "modify", "index": 0, "network": "dmz", "bridge": "br1"}],
                               NETS, nics.Taken(), random.Random(3))
    assert (moved[0]["network"], moved[0]["ip"], moved[0]["vlan"]) == ("dmz", "192.0.2.1", None)


def test_modify_refuses_a_nic_that_is_not_there():
    with pytest.raises(BadRequest, match=r"remove: there is no nic 3 \(the instance has 1 NIC: 0-0\)"):
        nics.changed(build([{}]), [{"action": "remove", "index": 3}], NETS, nics.Taken(), random.Random(1))


def test_taken_by_others_leaves_out_the_instance_itself_and_counts_running_jobs():
    records = [{"name": "a", "nics": [{"mac": "m1", "network": "lan", "ip": "10.0.0.2"}]},
               {"name": "b", "nics": [{"mac": "m2", "network": "lan", "ip": "10.0.0.3"}]}]
    taken = nics.taken_by_others(records, "a", {"lan": {"10.0.0.4": "job 7 (still running)"}})
    assert taken.macs == {"m2"}
    assert taken.ips == {"lan": {"10.0.0.3": "instance 'b' nic 0", "10.0.0.4": "job 7 (still running)"}}


def test_modify_counts_the_instances_other_nics_and_frees_what_a_removed_nic_held():
    current = build([{"network": "lan", "ip": "10.0.0.5"}, {"network": "lan", "ip": "10.0.0.6"}])
    with pytest.raises(Conflict, match="ip 10.0.0.6 of network 'lan' is already used by nic 1 of this instance"):
        nics.changed(current, [{"action": "modify", "index": 0, "ip": "10.0.0.6"}], NETS, nics.Taken(),
                     random.Random(1))
    new, _, _ = nics.changed(current, [{"action": "remove", "index": 1},
                                       {"action": "modify", "index": 0, "ip": "10.0.0.6"}], NETS, nics.Taken(),
                             random.Random(1))
    assert [n["ip"] for n in new] == ["10.0.0.6"]


def test_a_running_guest_gains_nics_at_the_end_and_loses_its_last() -> None:
    add, last = {"action": "add"}, {"action": "remove", "index": 1}
    assert nics.live_plan("web", 2, [add], 3) == nics.LivePlan(unplug=(), plug=(2,))
    assert nics.live_plan("web", 2, [last], 1) == nics.LivePlan(unplug=(1,), plug=())
    assert nics.live_plan("web", 2, [last, add], 2) == nics.LivePlan(unplug=(1,), plug=(1,))
    assert nics.live_plan("web", 1, [add, {"action": "remove", "index": 1}], 1) == nics.LivePlan((), ())
    assert nics.live_plan("web", 2, [last, {"action": "remove", "index": 0}], 0) == nics.LivePlan((1, 0), ())


@pytest.mark.parametrize("change, words", [
    ({"action": "remove", "index": 0}, "nic 0 is removed while later ones stay"),
    ({"action": "modify", "index": 1, "ip": "10.0.0.9"}, "nic 1 is changed"),
])
def test_a_change_that_renumbers_or_rewires_a_running_guest_s_nic_waits_for_a_stop(change, words) -> None:
    with pytest.raises(Conflict, match=words) as err:
        nics.live_plan("web", 2, [change], 2)
    assert "corral instance stop web" in str(err.value)


def test_a_nic_on_a_network_cannot_step_onto_another_bridge_or_vlan_nor_keep_one_when_moved() -> None:
    with pytest.raises(BadRequest) as err:
        build([{"network": "lan", "bridge": "mgmt0"}, {"network": "lan", "vlan": 1}])
    words = str(err.value)
    assert "nic 0: network 'lan' puts its NICs on bridge br0" in words and "nic 1: network 'lan' puts its NICs " \
        "on vlan 10" in words
    assert build([{"network": "lan", "bridge": "br0", "vlan": 10}])[0]["bridge"] == "br0"  # the same: fine
    current = build([{"network": "lan", "ip": "pool"}])
    with pytest.raises(BadRequest, match="'dmz' sets no bridge and the NIC would stay on bridge br0 outside"):
        nics.changed(current, [{"action": "modify", "index": 0, "network": "dmz"}], NETS, nics.Taken(),
                     random.Random(3))


@pytest.mark.parametrize("mac", ["00:00:00:00:00:00", "fe:54:00:5c:35:55"])
def test_macs_the_host_side_uses_or_none_at_all_are_refused(mac) -> None:
    with pytest.raises(BadRequest, match="is not for a guest"):
        build([{"mac": mac}])


def test_a_mac_given_twice_says_whose_it_is() -> None:
    with pytest.raises(Conflict, match="nic 1: MAC address 52:54:00:00:00:07 is already used by another NIC of "
                                       "this instance"):
        build([{"mac": "52:54:00:00:00:07"}, {"mac": "52:54:00:00:00:07"}])
    with pytest.raises(Conflict, match="already used by another instance's NIC"):
        build([{"mac": "52:54:00:00:00:07"}], nics.Taken(macs={"52:54:00:00:00:07"}))
