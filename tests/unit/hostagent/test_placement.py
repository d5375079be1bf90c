import pytest

from hostagent.master.decide.placement import Placement, PlacementError, Request, check_manual, place

NOW = 1000.0
SMALL = Request(memory_mib=1024, disk_mib=2048, replicated=False)
MIRRORED = Request(memory_mib=1024, disk_mib=2048, replicated=True)


def cluster(*names, memory_mib=8192, disk_mib=100_000, **changes):
    """Nodes and fresh reports; `changes` maps a node to fields to override in its node record or report."""
    nodes, reports = {}, {}
    for name in names:
        nodes[name] = {"name": name, "drained": False, "offline": False}
        reports[name] = {"memory_total_mib": memory_mib, "memory_free_mib": memory_mib,
                         "disk_total_mib": disk_mib, "disk_free_mib": disk_mib, "time": NOW - 5}
        for key, value in changes.get(name, {}).items():
            (nodes if key in ("drained", "offline") else reports)[name][key] = value
    return nodes, reports


def instance(name, primary, secondary=None, memory_mib=1024, admin_state="up"):
    return {"name": name, "primary_node": primary, "secondary_node": secondary, "memory_mib": memory_mib,
            "disks": [{"size_mib": 1024}], "disk_template": "mirror" if secondary else "file",
            "admin_state": admin_state}


def place_all(req, names, count, **changes):
    """Place `count` instances one after the other, each seeing the previous ones."""
    nodes, reports = cluster(*names, **changes)
    placed = []
    for i in range(count):
        where = place(f"vm{i}", req, nodes, reports, placed, NOW)
        placed.append(instance(f"vm{i}", where.primary, where.secondary))
    return [(inst["primary_node"], inst["secondary_node"]) for inst in placed]


def test_unreplicated_instances_spread_over_empty_nodes():
    assert place_all(SMALL, ["n1", "n2", "n3"], 4) == [("n1", None), ("n2", None), ("n3", None), ("n1", None)]


def test_replicated_instances_spread_primaries_and_copies_into_a_ring():
    assert place_all(MIRRORED, ["n1", "n2", "n3"], 3) == [("n1", "n2"), ("n3", "n1"), ("n2", "n3")]


def test_secondary_always_differs_from_primary():
    for primary, secondary in place_all(MIRRORED, ["n1", "n2"], 6):
        assert secondary is not None and secondary != primary


def test_among_equally_loaded_nodes_the_one_with_most_free_memory_wins():
    nodes, reports = cluster("n1", "n2", "n3", n2={"memory_total_mib": 16384, "memory_free_mib": 16384})
    assert place("web1", SMALL, nodes, reports, [], NOW) == Placement("n2", None)


def test_choice_is_deterministic_regardless_of_input_order():
    nodes, reports = cluster("n3", "n1", "n2")
    reversed_nodes = dict(reversed(list(nodes.items())))
    assert place("web1", MIRRORED, nodes, reports, [], NOW) == Placement("n1", "n2")
    assert place("web1", MIRRORED, reversed_nodes, reports, [], NOW) == Placement("n1", "n2")


def test_never_picks_drained_offline_or_stale_nodes():
    changes = {"n1": {"drained": True}, "n2": {"offline": True}, "n3": {"time": NOW - 61}}
    nodes, reports = cluster("n1", "n2", "n3", "n4", "n5", **changes)
    del reports["n4"]
    for _ in range(3):
        assert place("web1", SMALL, nodes, reports, [], NOW).primary == "n5"
    with pytest.raises(PlacementError):
        place("web1", MIRRORED, nodes, reports, [], NOW)


def test_refusal_lists_every_nodes_shortage():
    changes = {"n1": {"memory_total_mib": 512, "memory_free_mib": 512}, "n2": {"drained": True},
               "n3": {"disk_free_mib": 1024}, "n4": {"offline": True}, "n5": {"time": NOW - 300}}
    nodes, reports = cluster("n1", "n2", "n3", "n4", "n5", "n6", **changes)
    del reports["n6"]
    with pytest.raises(PlacementError) as err:
        place("web1", SMALL, nodes, reports, [], NOW)
    assert err.value.shortages == {
        "n1": ["only 512M memory free (512M total, 0M for its running instances)"],
        "n2": ["drained"],
        "n3": ["only 1G disk free"],
        "n4": ["offline"],
        "n5": ["last report is 300 s old (limit 60 s): is its agent running?"],
        "n6": ["no report from node n6 yet"],
    }
    assert str(err.value).startswith("no node can take instance 'web1' (1G memory, 2G disk, unreplicated): "
                                     "n1: only 512M memory free")


def test_memory_promised_to_running_instances_is_not_free():
    nodes, reports = cluster("n1", memory_mib=2048)
    running = [instance("db1", "n1", memory_mib=1536)]
    with pytest.raises(PlacementError) as err:
        place("web1", SMALL, nodes, reports, running, NOW)
    assert err.value.shortages == {"n1": ["only 512M memory free (2G total, 1.5G for its running instances)"]}
    stopped = [instance("db1", "n1", memory_mib=1536, admin_state="down")]
    assert place("web1", SMALL, nodes, reports, stopped, NOW) == Placement("n1", None)


def test_node_reporting_little_free_memory_is_refused_even_if_config_has_room():
    nodes, reports = cluster("n1", n1={"memory_free_mib": 300})
    with pytest.raises(PlacementError) as err:
        place("web1", SMALL, nodes, reports, [], NOW)
    assert err.value.shortages == {"n1": ["only 300M memory free by its last report"]}


def test_secondary_without_memory_for_its_primaries_instances_is_refused_by_n_plus_1():
    nodes, reports = cluster("n1", "n2", memory_mib=4096)
    existing = [instance("db1", "n1", "n2", memory_mib=2048), instance("app1", "n2", memory_mib=2048)]
    with pytest.raises(PlacementError) as err:
        place("web1", MIRRORED, nodes, reports, existing, NOW)
    assert err.value.shortages == {
        "n1": ["fits as primary, but no other node can be its secondary"],
        "n2": ["N+1: if n1 failed, n2 would need 2G for its secondaries, has 1G",
               "N+1: if n1 failed, n2 would need 3G for its secondaries, has 2G"],
    }
    assert ("n2: N+1: if n1 failed, n2 would need 2G for its secondaries, has 1G and "
            "N+1: if n1 failed, n2 would need 3G for its secondaries, has 2G") in str(err.value)


def test_primary_placement_that_would_break_n_plus_1_for_existing_pairs_is_refused():
    nodes, reports = cluster("n1", "n2", memory_mib=4096)
    existing = [instance("db1", "n1", "n2", memory_mib=3072)]
    with pytest.raises(PlacementError) as err:
        place("web1", Request(memory_mib=2048, disk_mib=2048, replicated=False), nodes, reports, existing, NOW)
    assert err.value.shortages == {
        "n1": ["only 1G memory free (4G total, 3G for its running instances)"],
        "n2": ["N+1: if n1 failed, n2 would need 3G for its secondaries, has 2G"],
    }


def test_one_node_cluster_cannot_place_replicated_instances():
    nodes, reports = cluster("n1")
    with pytest.raises(PlacementError) as err:
        place("web1", MIRRORED, nodes, reports, [], NOW)
    assert "replicated templates need 2 usable nodes, the cluster has 1" in str(err.value)
    assert place("web1", SMALL, nodes, reports, [], NOW) == Placement("n1", None)


def test_manual_placement_is_accepted_when_it_fits():
    nodes, reports = cluster("n1", "n2", "n3")
    assert check_manual("web1", MIRRORED, "n3", "n1", nodes, reports, [], NOW) == Placement("n3", "n1")
    assert check_manual("web1", SMALL, "n2", None, nodes, reports, [], NOW) == Placement("n2", None)


def test_manual_placement_is_checked_like_automatic_placement():
    nodes, reports = cluster("n1", "n2", "n3", memory_mib=4096,
                             n1={"drained": True}, n3={"disk_free_mib": 100})
    existing = [instance("db1", "n2", "n3", memory_mib=3584)]
    with pytest.raises(PlacementError) as err:
        check_manual("web1", MIRRORED, "n1", "n3", nodes, reports, existing, NOW)
    assert err.value.shortages == {"n1": ["drained"], "n3": ["only 100M disk free"]}
    assert str(err.value).startswith("instance 'web1' cannot go to n1:n3 (1G memory, 2G disk, replicated): ")
    with pytest.raises(PlacementError) as err:
        check_manual("web1", MIRRORED, "n2", "n1", nodes, reports, existing, NOW)
    assert err.value.shortages == {"n2": ["only 512M memory free (4G total, 3.5G for its running instances)"],
                                   "n1": ["drained"]}


def test_manual_placement_names_unknown_nodes_and_same_node_twice():
    nodes, reports = cluster("n1", "n2")
    with pytest.raises(PlacementError) as err:
        check_manual("web1", MIRRORED, "n9", "n2", nodes, reports, [], NOW)
    assert err.value.shortages == {"n9": ["not in the cluster (nodes: n1, n2)"]}
    with pytest.raises(PlacementError) as err:
        check_manual("web1", MIRRORED, "n1", "n1", nodes, reports, [], NOW)
    assert err.value.shortages == {"n1": ["cannot be both primary and secondary: pick two different nodes"]}


def test_manual_replicated_placement_without_secondary_is_refused():
    nodes, reports = cluster("n1", "n2")
    with pytest.raises(PlacementError) as err:
        check_manual("web1", MIRRORED, "n1", None, nodes, reports, [], NOW)
    assert "n1: a replicated template needs a secondary node too" in str(err.value)


def test_manual_unreplicated_placement_with_secondary_is_refused():
    nodes, reports = cluster("n1", "n2")
    with pytest.raises(PlacementError) as err:
        check_manual("web1", SMALL, "n1", "n2", nodes, reports, [], NOW)
    assert err.value.shortages == {
        "n2": ["given as secondary, but an unreplicated template has none: use --node PRIMARY"]}


def test_drbd_needs_the_kernel_module_on_both_nodes_and_says_which_lacks_it():
    want = Request(memory_mib=512, disk_mib=1024, replicated=True, on_lvm=True, drbd=True)
    lvm = {"vg": "vg0", "size_mib": 10_000, "free_mib": 10_000}
    nodes, reports = cluster("n1", "n2", n1={"lvm": lvm, "drbd": {"version": "8.4"}}, n2={"lvm": lvm, "drbd": {}})
    with pytest.raises(PlacementError, match=r"n2: has no DRBD kernel module") as caught:
        check_manual("db1", want, "n1", "n2", nodes, reports, [], NOW)
    assert "n1" not in caught.value.shortages
    reports["n2"]["drbd"] = {"version": "8.4"}
    assert check_manual("db1", want, "n1", "n2", nodes, reports, [], NOW) == Placement("n1", "n2")
