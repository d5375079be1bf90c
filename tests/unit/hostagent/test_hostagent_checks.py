import random

import pytest

from hostagent.master.decide.checks import ClusterView, check_add
from hostagent.master.decide.nics import new_mac
from hostagent.errors import BadRequest, Conflict
from hostagent.master.jobs import lock_keys

NODE = {"name": "n1", "address": "127.0.0.1"}
REPORT = {"node": "n1", "time": 0.0, "memory_total_mib": 4096, "memory_free_mib": 3000, "disk_free_mib": 100_000,
          "os": {"img": "image"}}


def view(**changes):
    base = dict(cluster_hv={"accel": "tcg"}, nodes={"n1": NODE}, reports={"n1": REPORT},
                instances=set(), used_macs=set())
    base.update(changes)
    return ClusterView(**base)


def test_a_valid_request_becomes_an_instance_record():
    inst = check_add({"name": "web1", "os": "img", "memory": "1G", "disks": [{"size": "2G", "format": "qcow2"}]},
                     view(), now=10.0, rng=random.Random(1))
    assert (inst.name, inst.primary_node, inst.memory_mib, inst.admin_state) == ("web1", "n1", 1024, "down")
    assert [(d.index, d.size_mib, d.format) for d in inst.disks] == [(0, 2048, "qcow2")]
    assert inst.nics[0].mode == "user" and inst.nics[0].mac.startswith("52:54:00:")


def test_every_problem_is_reported_at_once():
    with pytest.raises(BadRequest) as err:
        check_add({"name": "Web_1", "os": "nosuch", "memory": "lots", "vcpus": 0,
                   "disks": [{"size": "12Q", "format": "vmdk"}], "nics": [{"mode": "bridged"}],
                   "hvparams": {"accel": "xen"}}, view(), now=0)
    text = str(err.value)
    for part in ("instance name 'Web_1' is not valid", "memory: 'lots' is not a size",
                 "vcpus: 0 is not a number", "'12Q' is not a size", "format 'vmdk' is not one of raw, qcow2",
                 "mode bridged needs a bridge", "'xen'", "OS 'nosuch' is not available on node 'n1' (available: img"):
        assert part in text


def test_duplicate_name_is_a_conflict():
    with pytest.raises(Conflict, match="an instance named 'web1' already exists"):
        check_add({"name": "web1", "os": "img"}, view(instances={"web1"}), now=0)


def test_more_memory_than_the_node_has_is_refused():
    with pytest.raises(BadRequest, match=r"n1: only 4G memory free \(4G total"):
        check_add({"name": "big", "os": "img", "memory": "8G"}, view(), now=0)


def test_unknown_node_lists_the_nodes():
    with pytest.raises(BadRequest, match=r"node 'n9' is not in the cluster \(nodes: n1\)"):
        check_add({"name": "a", "os": "img", "node": "n9"}, view(), now=0)


def test_drained_nodes_take_no_new_instances():
    drained = {"n1": {**NODE, "drained": True}}
    with pytest.raises(BadRequest, match=r"no node can take instance 'a' .*n1: drained"):
        check_add({"name": "a", "os": "img"}, view(nodes=drained), now=0)


def test_placement_spreads_instances_and_a_mirror_gets_a_secondary():
    nodes = {"n1": NODE, "n2": {**NODE, "name": "n2"}}
    reports = {"n1": REPORT, "n2": {**REPORT, "node": "n2"}}
    busy = {"name": "old", "primary_node": "n1", "secondary_node": None, "memory_mib": 512, "admin_state": "up",
            "disks": [{"size_mib": 1024}], "disk_template": "file"}
    plain = check_add({"name": "a", "os": "img"}, view(nodes=nodes, reports=reports, records=(busy,)), now=0)
    assert (plain.primary_node, plain.secondary_node, plain.port_base) == ("n2", None, 0)
    mirrored = check_add({"name": "b", "os": "img", "disk_template": "mirror"},
                         view(nodes=nodes, reports=reports, records=(busy,)), now=0)
    assert (mirrored.primary_node, mirrored.secondary_node, mirrored.port_base) == ("n2", "n1", 11000)


def test_manual_placement_of_a_mirror_needs_two_distinct_nodes():
    nodes = {"n1": NODE, "n2": {**NODE, "name": "n2"}}
    reports = {"n1": REPORT, "n2": {**REPORT, "node": "n2"}}
    with pytest.raises(BadRequest, match="n1:n1"):
        check_add({"name": "b", "os": "img", "disk_template": "mirror", "node": "n1:n1"},
                  view(nodes=nodes, reports=reports), now=0)


def test_mac_addresses_are_unique_and_validated():
    with pytest.raises(Conflict, match="MAC address 52:54:00:00:00:01 is already used"):
        check_add({"name": "a", "os": "img", "nics": [{"mac": "52:54:00:00:00:01"}]},
                  view(used_macs={"52:54:00:00:00:01"}), now=0)
    with pytest.raises(BadRequest, match="'01:00:5e:00:00:01' is not a unicast MAC address"):
        check_add({"name": "a", "os": "img", "nics": [{"mac": "01:00:5E:00:00:01"}]}, view(), now=0)
    two = check_add({"name": "a", "os": "img", "nics": [{}, {}]}, view(), now=0, rng=random.Random(7))
    assert len({n.mac for n in two.nics}) == 2


def test_new_mac_avoids_used_addresses():
    rng = random.Random(3)
    first = new_mac(set(), random.Random(3))
    assert new_mac({first}, rng) != first


def test_jobs_lock_their_instance_and_cluster_jobs_the_cluster():
    assert lock_keys({"op": "instance.add", "args": {"instance": {"name": "a"}}}) == ["instance/a"]
    assert lock_keys({"op": "instance.stop", "args": {"name": "a"}}) == ["instance/a"]
    assert lock_keys({"op": "cluster.init", "args": {"name": "c1"}}) == ["cluster"]


def test_priority_and_after_are_checked_and_kept():
    inst = check_add({"name": "app1", "os": "img", "priority": "critical", "after": ["db1"]},
                     view(instances={"db1"}), now=0)
    assert (inst.priority, inst.after) == ("critical", ["db1"])
    with pytest.raises(BadRequest) as err:
        check_add({"name": "app1", "os": "img", "priority": "urgent", "after": ["app1"]}, view(), now=0)
    assert "priority 'urgent' is not one of critical, high, normal, low" in str(err.value)
    assert "instance 'app1' cannot start after itself" in str(err.value)


def test_names_with_a_trailing_newline_are_refused():
    """`$` matches before a final newline; the name patterns end with \\Z."""
    from hostagent.master.decide.checks import NAME_RE
    from hostagent.master.decide.nics import MAC_RE
    from hostagent.api.users import USER_RE
    from kvm.cmdline import check_instance_name
    assert NAME_RE.match("web1") and not NAME_RE.match("web1\n")
    assert not MAC_RE.match("52:54:00:00:00:01\n")
    assert not USER_RE.match("alice\n")
    assert check_instance_name("web1\n")


def test_disks_and_nics_are_capped_and_bridge_names_must_be_interface_names():
    with pytest.raises(BadRequest) as err:
        check_add({"name": "many", "os": "img", "disks": [{"size": "1M"}] * 1000,
                   "nics": [{"mode": "user"}] * 9}, view(), now=0)
    assert "at most 16 disks, not 1000" in str(err.value) and "at most 8 network cards, not 9" in str(err.value)
    with pytest.raises(BadRequest, match=r"bridge 'br0;id' is not an interface name"):
        check_add({"name": "b1", "os": "img", "nics": [{"mode": "bridged", "bridge": "br0;id"}]}, view(), now=0)


def test_node_tls_offers_only_aead_suites_for_tls_1_2(tmp_path):
    from hostagent import pki
    paths = pki.PkiPaths(str(tmp_path))
    pki.create_ca(paths, "c1")
    pki.issue_node_cert(paths, "n1", "127.0.0.1")
    for ctx in (pki.server_context(paths), pki.client_context(paths)):
        tls12 = [c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"]
        assert tls12 and all("GCM" in name or "CHACHA20" in name for name in tls12), tls12


SCRIPT_REPORT = {**REPORT, "os": {"img": "image", "deb": "script"}, "kernel_dirs": ["/boot"],
                 "os_details": {"deb": {"variants": ["bookworm", "trixie"], "parameters": ["filesystem", "ssh-key"]}}}


def refused(req, **changes):
    with pytest.raises(BadRequest) as err:
        check_add({"name": "a", **req}, view(reports={"n1": SCRIPT_REPORT}, **changes), now=0)
    return str(err.value)


@pytest.mark.parametrize("os_name,words", [
    ("deb+../../etc", "os: variant '../../etc' is not a variant name"),
    ("deb+a/b", "os: variant 'a/b' is not a variant name"),
    ("deb+bookworm\n", "is not a variant name"),
    ("deb+sid", "os: OS 'deb' on node 'n1' has no variant 'sid' (its variants.list offers: bookworm, trixie)"),
    ("img+x", "os: 'img' is an image, which has no variants; give --os img"),
])
def test_os_variants_are_names_the_os_lists(os_name, words):
    assert words in refused({"os": os_name})


@pytest.mark.parametrize("params,words", [
    ({"filesystem": "ext4; rm -rf /"}, "osparams: filesystem: 'ext4; rm -rf /' is not accepted"),
    ({"filesystem": "ext4\nOSP_X=1"}, "is not accepted: at most 1024 letters, digits, spaces"),
    ({"filesystem": "$(reboot)"}, "no shell characters"),
    ({"filesystem": "`id`"}, "is not accepted"),
    ({"filesystem": 4}, "osparams: filesystem: 4 is not a string"),
    ({"../x": "1"}, "osparams: '../x' is not a parameter name"),
    ({"root-password": "x"}, "OS 'deb' on node 'n1' takes no parameter 'root-password' (its parameters.list "
                             "names: filesystem, ssh-key)"),
])
def test_os_parameters_are_listed_names_with_plain_values(params, words):
    assert words in refused({"os": "deb+trixie", "osparams": params})


def test_wrong_types_of_os_fields_are_named():
    assert "osparams: 'x' is not an object of NAME: VALUE" in refused({"os": "deb", "osparams": "x"})
    assert "os: ['deb'] is not an OS name" in refused({"os": ["deb"]})
    assert "hvparams: [] is not an object" in refused({"os": "deb", "hvparams": []})
    assert "osparams: 'img' is an image, which takes no OS parameters" in refused(
        {"os": "img", "osparams": {"filesystem": "ext4"}})


def test_a_listed_variant_and_plain_parameters_pass():
    inst = check_add({"name": "a", "os": "deb+trixie",
                      "osparams": {"filesystem": "ext4", "ssh-key": "ssh-ed25519 AAAA+/x= me@host.example"}},
                     view(reports={"n1": SCRIPT_REPORT}), now=0)
    assert (inst.os, inst.osparams["filesystem"]) == ("deb+trixie", "ext4")


def test_a_kernel_outside_the_nodes_kernel_directories_is_refused_at_submit():
    words = refused({"os": "img", "hvparams": {"kernel_path": "/boot/vmlinuz", "initrd_path": "/etc/shadow"}})
    assert "hypervisor parameter 'initrd_path': '/etc/shadow' is not a file in the kernel directories " \
           "on node 'n1' (/boot)" in words
    assert "'kernel_path'" not in words  # /boot/vmlinuz is fine
    assert "'/etc/shadow'" in refused({"os": "img"}, cluster_hv={"accel": "tcg", "kernel_path": "/etc/shadow"})


def with_vg(report, free_mib):
    return {**report, "lvm": {"vg": "vg0", "size_mib": 4096, "free_mib": free_mib}}


def test_a_plain_instance_goes_to_a_node_with_room_in_its_volume_group():
    nodes = {"n1": NODE, "n2": {**NODE, "name": "n2"}}
    reports = {"n1": REPORT, "n2": with_vg({**REPORT, "node": "n2"}, 2048)}
    inst = check_add({"name": "db1", "os": "img", "disk_template": "plain", "disks": [{"size": "1G"}]},
                     view(nodes=nodes, reports=reports), now=0)
    assert (inst.disk_template, inst.primary_node, inst.port_base) == ("plain", "n2", 0)


def test_plain_on_a_node_without_a_volume_group_is_refused_saying_what_to_set():
    with pytest.raises(BadRequest, match=r"n1: has no LVM volume group: set \[storage\] volume_group in its "
                                         r"agent.toml"):
        check_add({"name": "db1", "os": "img", "disk_template": "plain", "node": "n1"}, view(), now=0)


def test_plain_disks_larger_than_the_free_space_of_the_volume_group_are_refused():
    reports = {"n1": with_vg(REPORT, 200)}
    with pytest.raises(BadRequest, match=r"n1: has 200M free in volume group vg0, the disks need 512M"):
        check_add({"name": "db1", "os": "img", "disk_template": "plain", "node": "n1",
                   "disks": [{"size": "256M"}, {"size": "256M"}]}, view(reports=reports), now=0)


def test_a_volume_group_the_node_cannot_read_is_refused_with_its_reason():
    reports = {"n1": {**REPORT, "lvm": {"vg": "vg0", "error": "volume group 'vg0' cannot be used: LVM does not "
                                                              "find it on this node"}}}
    with pytest.raises(BadRequest, match=r"n1: volume group 'vg0' cannot be used"):
        check_add({"name": "db1", "os": "img", "disk_template": "plain"}, view(reports=reports), now=0)


def test_a_plain_disk_is_raw_only():
    with pytest.raises(BadRequest, match=r"disk 0: a plain disk is a logical volume, which holds raw data only, "
                                         r"not qcow2"):
        check_add({"name": "db1", "os": "img", "disk_template": "plain", "disks": [{"size": "1G", "format": "qcow2"}]},
                  view(reports={"n1": with_vg(REPORT, 4096)}), now=0)


def test_a_drbd_instance_gets_per_disk_minors_ports_and_secrets_unique_in_the_cluster():
    nodes = {n: {**NODE, "name": n} for n in ("n1", "n2")}
    reports = {n: {**with_vg({**REPORT, "node": n}, 100_000), "drbd": {"version": "8.4"}} for n in nodes}
    other = {"name": "old", "primary_node": "n1", "secondary_node": "n2", "port_base": 11000, "admin_state": "up",
             "memory_mib": 128, "disks": [{"size_mib": 64}]}
    inst = check_add({"name": "db1", "os": "img", "disk_template": "drbd", "node": "n1:n2",
                      "disks": [{"size": "1G"}, {"size": "64G"}]},
                     view(nodes=nodes, reports=reports, records=(other,)), now=0, rng=random.Random(2))
    assert inst.port_base == 11008  # the block after the other replicated instance's
    assert [(s["index"], s["minor"], s["port"], s["meta_mib"]) for s in inst.drbd] == [(0, 8, 11008, 4),
                                                                                         (1, 9, 11009, 10)]
    secrets = [s["secret"] for s in inst.drbd]
    assert len(set(secrets)) == 2 and all(len(s) == 32 and s.isalnum() for s in secrets)


def test_drbd_without_a_secondary_or_with_qcow2_is_refused_before_any_job():
    reports = {"n1": {**with_vg(REPORT, 4096), "drbd": {"version": "8.4"}}}
    with pytest.raises(BadRequest, match=r"a replicated template needs a secondary node too") as caught:
        check_add({"name": "db1", "os": "img", "disk_template": "drbd", "node": "n1",
                   "disks": [{"size": "1G", "format": "qcow2"}]}, view(reports=reports), now=0)
    assert "a drbd disk is a logical volume, which holds raw data only" in str(caught.value)


def test_an_adopted_lv_becomes_a_disk_of_its_own_size_taking_no_free_space():
    adoptable = {"ganeti-root": {"size_mib": 10240, "problem": ""}, "ganeti-swap": {"size_mib": 512, "problem": ""}}
    inst = check_add({"name": "db1", "os": "img", "disk_template": "plain", "node": "n1",
                      "disks": [{"adopt": "ganeti-root"}, {"adopt": "ganeti-swap"}]},
                     view(reports={"n1": with_vg(REPORT, 0)}, adoptable=adoptable), now=0)
    assert [(d.index, d.size_mib, d.format) for d in inst.disks] == [(0, 10240, "raw"), (1, 512, "raw")]


def test_adoption_is_refused_with_every_reason_at_once():
    adoptable = {"gone": {"size_mib": 0, "problem": "node 'n1': no logical volume 'gone' in volume group vg0"}}
    with pytest.raises(BadRequest) as err:
        check_add({"name": "db1", "os": "img", "disk_template": "file",
                   "disks": [{"adopt": "gone"}, {"adopt": "vg0/x", "size": "1G"}, {"size": "1G"}]},
                  view(reports={"n1": with_vg(REPORT, 4096)}, adoptable=adoptable), now=0)
    text = str(err.value)
    for part in ("adopt: only plain disks adopt existing logical volumes, not file (-t plain)",
                 "adopt: name the node whose volume group holds the LVs (--node NODE)",
                 "adopt: either every disk adopts an LV or none does",
                 "disk 0: node 'n1': no logical volume 'gone' in volume group vg0",
                 "disk 1: an adopted disk takes its LV's size; give adopt=vg0/x without a size",
                 "disk 1: adopt='vg0/x': give the LV's name in the node's volume group, without the group"):
        assert part in text


def test_one_lv_cannot_be_adopted_twice_nor_what_the_node_refused():
    adoptable = {"a": {"size_mib": 8, "problem": ""},
                 "busy": {"size_mib": 8, "problem": "node 'n1': LV vg0/busy is open (in use by a mounted file "
                                                    "system or a running process, lv_attr -wi-ao----)"}}
    with pytest.raises(BadRequest) as err:
        check_add({"name": "db1", "os": "img", "disk_template": "plain", "node": "n1",
                   "disks": [{"adopt": "a"}, {"adopt": "a"}, {"adopt": "busy"}]},
                  view(reports={"n1": with_vg(REPORT, 4096)}, adoptable=adoptable), now=0)
    assert "disk 1: LV 'a' is adopted by more than one disk" in str(err.value)
    assert "disk 2: node 'n1': LV vg0/busy is open" in str(err.value)


@pytest.mark.parametrize("name", ["-x", "a b", "..", "x" * 128])
def test_a_name_that_cannot_be_an_lv_is_refused_before_the_node_is_asked(name):
    with pytest.raises(BadRequest, match=r"disk 0: adopt=.*: an LV name is 1-127 letters"):
        check_add({"name": "db1", "os": "img", "disk_template": "plain", "node": "n1", "disks": [{"adopt": name}]},
                  view(reports={"n1": with_vg(REPORT, 4096)}), now=0)
