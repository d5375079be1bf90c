from hostagent.master.decide.pool import PoolChange, next_change, wanted_size

NOW = 1000.0


def node(name, candidate=False, added=0.0, **flags):
    return {"name": name, "candidate": candidate, "added": added, **flags}


def fresh(*names, age=1.0):
    return {n: {"node": n, "time": NOW - age} for n in names}


def test_pool_size_is_odd_and_bounded():
    assert [wanted_size(3, n) for n in (1, 2, 3, 4, 5)] == [1, 1, 3, 3, 3]
    assert [wanted_size(5, n) for n in (4, 5, 7)] == [3, 5, 5]
    assert wanted_size(9, 9) == 5


def test_a_third_healthy_node_gets_promoted_oldest_first():
    nodes = [node("n1", True), node("n2", added=2), node("n3", added=1)]
    assert next_change(nodes, fresh("n1", "n2", "n3"), "n1", 3, NOW) == \
        PoolChange("promote", "n3", "the pool wants 3 members, has 1")


def test_two_nodes_keep_a_single_member():
    assert next_change([node("n1", True), node("n2")], fresh("n1", "n2"), "n1", 3, NOW) is None


def test_a_dead_candidate_does_not_shrink_the_pool():
    nodes = [node("n1", True), node("n2", True), node("n3", True)]
    assert next_change(nodes, fresh("n1", "n2"), "n1", 3, NOW) is None


def test_an_unhealthy_node_is_not_promoted():
    nodes = [node("n1", True), node("n2", added=3), node("n3", added=2), node("n4", added=1)]
    change = next_change(nodes, fresh("n1", "n2", "n3") | fresh("n4", age=300), "n1", 3, NOW)
    assert change is not None and change.node == "n3"


def test_a_node_marked_not_capable_is_demoted_but_never_the_master():
    nodes = [node("n1", True, master_capable=False), node("n2", True, master_capable=False), node("n3", True)]
    assert next_change(nodes, fresh("n1", "n2", "n3"), "n1", 3, NOW) == \
        PoolChange("demote", "n2", "marked --candidate no")


def test_an_offline_node_leaves_the_pool_and_a_spare_replaces_it():
    nodes = [node("n1", True), node("n2", True, offline=True), node("n3", True), node("n4")]
    reports = fresh("n1", "n2", "n3", "n4")
    assert next_change(nodes, reports, "n1", 3, NOW).action == "demote"
    nodes[1]["candidate"] = False
    assert next_change(nodes, reports, "n1", 3, NOW) == PoolChange("promote", "n4", "the pool wants 3 members, has 2")


def test_an_odd_pool_grows_only_with_two_healthy_spares():
    nodes = [node("n1", True), node("n2", added=1), node("n3", added=2)]
    assert next_change(nodes, fresh("n1", "n2") | fresh("n3", age=300), "n1", 3, NOW) is None


def test_an_even_pool_without_a_healthy_spare_goes_back_to_odd():
    nodes = [node("n1", True), node("n2", True, added=1), node("n3", added=2)]
    change = next_change(nodes, fresh("n1", "n2") | fresh("n3", age=300), "n1", 3, NOW)
    assert change is not None and (change.action, change.node) == ("demote", "n2")
    assert next_change(nodes, fresh("n1", "n2", "n3"), "n1", 3, NOW).action == "promote"
