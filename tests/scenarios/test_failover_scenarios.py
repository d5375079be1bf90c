"""Node losses replayed against the master's real failover decisions and the nodes' real fencing rules.

Each scenario is an outage from DESIGN.md or a rule of issue 5, run in the
simulator of fencing_sim.py (which checks the invariants after every tick);
the property test at the end throws random sequences of failures at it.
"""

from __future__ import annotations

import random

import pytest
from fencing_sim import TTL, Sim, mirrored

from hostagent.master.decide import failovers
from hostagent.node.selffence import FENCE_MARGIN_S


def inst_of(name: str, memory: int) -> dict:
    return mirrored(name, "n1", "n2", memory_mib=memory)


def three_nodes(**cluster) -> Sim:
    return Sim.build(3, [mirrored("db1", "n1", "n2", priority="critical"), mirrored("web1", "n1", "n3"),
                         mirrored("web2", "n2", "n3"),
                         {**mirrored("batch", "n1", "n2"), "auto_failover": None},
                         {"name": "tmp", "primary_node": "n1", "disk_template": "file", "admin_state": "up",
                          "memory_mib": 512}], **cluster)


def test_a_killed_node_s_auto_failover_instances_run_on_their_secondaries_once_its_lease_expired():
    sim = three_nodes()
    sim.run(5)
    sim.set("n1", "killed")
    sim.run(TTL - 1)
    assert not sim.moves, "nothing may move before the lease has expired"
    sim.run(3)
    assert sim.runs_on("db1") == {"n2"} and sim.runs_on("web1") == {"n3"}
    assert [m[1] for m in sim.moves] == ["db1", "web1"], "critical first"
    assert sim.runs_on("batch") == set() and sim.runs_on("tmp") == set()
    said = "\n".join(sim.transcript)
    assert "stays-down batch" in said and "stays-down tmp" in said


def test_the_cluster_default_turns_auto_failover_on_for_instances_without_their_own_setting():
    sim = three_nodes(auto_failover=True)
    sim.run(5)
    sim.set("n1", "killed")
    sim.run(TTL + 3)
    assert sim.runs_on("batch") == {"n2"}


def test_a_partitioned_node_stops_its_instances_itself_before_they_start_elsewhere():
    sim = three_nodes()
    sim.run(5)
    sim.set("n1", "partitioned")
    sim.run(TTL - FENCE_MARGIN_S)
    assert sim.runs_on("db1") == set(), "fenced before the lease can expire"
    assert sim.runs_on("tmp") == {"n1"}, "instances that do not fail over keep running"
    sim.run(8)
    assert sim.runs_on("db1") == {"n2"}
    sim.set("n1", "ok")
    sim.run(5)
    assert sim.runs_on("db1") == {"n2"}, "the node back does not run it again"
    assert "node-back n1" in "\n".join(sim.transcript)


def test_a_frozen_agent_is_covered_by_the_fence_keeper_and_does_not_restart_its_instances_when_it_wakes():
    sim = three_nodes()
    sim.run(5)
    sim.set("n1", "agent-frozen")
    sim.run(TTL + 3)
    assert "n1 fenced db1 (keeper)" in "\n".join(sim.transcript)
    assert sim.runs_on("db1") == {"n2"}
    sim.set("n1", "ok")
    sim.run(10)
    assert sim.runs_on("db1") == {"n2"} and sim.runs_on("web1") == {"n3"}


def test_a_whole_frozen_node_s_qemu_is_stopped_as_it_resumes_after_its_instances_moved():
    sim = three_nodes()
    sim.run(5)
    sim.set("n1", "frozen")
    sim.run(TTL + 3)
    assert sim.runs_on("db1") == {"n2"}
    assert "n1" in sim.qemus["db1"], "the frozen QEMU is still there"
    sim.set("n1", "ok")
    assert sim.runs_on("db1") == {"n2"} and "n1" not in sim.qemus["db1"]


def test_two_of_three_nodes_lost_at_once_raise_the_alert_and_move_nothing():
    """The competing system's outage: two healthy hosts declared dead, every VM moved to the third."""
    sim = three_nodes()
    sim.run(5)
    sim.set("n1", "partitioned")
    sim.set("n2", "partitioned")
    sim.run(TTL + 10)
    assert not sim.moves
    assert sim.cluster["alert"]["nodes"] == ["n1", "n2"]
    assert "network failure" in sim.cluster["alert"]["reason"]
    said = "\n".join(sim.transcript)
    assert "alert n1,n2" in said and "refuse web2" not in said.split("alert")[0]


def test_a_node_cut_off_while_fencing_is_disarmed_keeps_its_instances_and_nothing_fails_over():
    sim = three_nodes()
    sim.run(3)
    sim.operator(fencing="disarmed")
    sim.run(3)
    sim.set("n1", "partitioned")
    sim.run(TTL + 10)
    assert sim.runs_on("db1") == {"n1"} and not sim.moves
    assert "refuse db1" in "\n".join(sim.transcript)


def test_arming_while_a_node_is_cut_off_does_not_fail_over_what_that_node_does_not_fence():
    sim = three_nodes()
    sim.run(3)
    sim.operator(fencing="disarmed")
    sim.run(4)
    sim.set("n1", "partitioned")
    sim.run(2)
    sim.operator(fencing="armed")  # n1 never hears of it: it does not fence, so nothing may move
    sim.run(TTL + 10)
    assert sim.runs_on("db1") == {"n1"} and not sim.moves


def test_an_instance_whose_copy_is_not_in_sync_stays_down_with_the_reason():
    sim = three_nodes()
    next(i for i in sim.instances if i["name"] == "web1")["replica_in_sync"] = False
    sim.run(5)
    sim.set("n1", "killed")
    sim.run(TTL + 5)
    assert sim.runs_on("web1") == set()
    assert sim.transcript.count("t=25 refuse web1") + sum("refuse web1" in t for t in sim.transcript) >= 1
    assert sum("refuse web1" in t for t in sim.transcript) == 1, "the reason is recorded once, not every pass"


def test_when_memory_is_short_the_higher_priority_instance_gets_it():
    sim = Sim.build(3, [mirrored("low", "n1", "n2", priority="low", memory_mib=3000),
                        mirrored("crit", "n1", "n2", priority="critical", memory_mib=3000)])
    sim.nodes["n2"].memory_free = 4000
    sim.run(5)
    sim.set("n1", "killed")
    sim.run(TTL + 5)
    assert sim.runs_on("crit") == {"n2"} and sim.runs_on("low") == set()
    assert any("refuse low" in t for t in sim.transcript)


def test_a_failover_that_does_not_fit_is_named_as_short():
    view = failovers.View(({"name": "n1"}, {"name": "n2"}), frozenset({"n2"}),
                          {"n1": {"node": "n1", "time": 0, "fencing": {"armed": True, "since": None,
                                                                      "guarded": ["big"]}},
                           "n2": {"node": "n2", "time": 0, "memory_free_mib": 1000, "instances": {}}},
                          ({**inst_of("big", 4000)},), {"fencing": "armed"}, frozenset({"n2"}), master_since=-100)
    decision = failovers.decide(view, failovers.State(), 0.0)
    assert decision.failovers == [] and decision.short == ["big"]


def test_right_after_taking_office_a_master_waits_before_calling_nodes_lost():
    """After a whole-cluster power loss the agents need a moment to take their leases again."""
    view = failovers.View(({"name": "n1"}, {"name": "n2"}, {"name": "n3"}), frozenset({"n3"}),
                          {n: {"node": n, "time": 0} for n in ("n1", "n2", "n3")}, (), {"fencing": "armed"},
                          frozenset({"n3"}), master_since=100.0)
    early = failovers.decide(view, failovers.State(), 110.0)
    assert early.state.lost == {} and early.alert is None
    late = failovers.decide(view, failovers.State(), 140.0)
    assert set(late.state.lost) == {"n1", "n2"} and late.alert is not None


def test_max_lost_nodes_lets_a_bigger_cluster_fail_over_two_nodes_at_once():
    sim = Sim.build(6, [mirrored("a", "n1", "n3"), mirrored("b", "n2", "n4")])
    sim.run(5)
    sim.set("n1", "killed")
    sim.set("n2", "killed")
    sim.run(TTL + 5)
    assert sim.runs_on("a") == {"n3"} and sim.runs_on("b") == {"n4"}, "6 nodes: a third may be lost"
    assert "alert" not in sim.cluster


def test_failback_only_on_request_by_default():
    sim = three_nodes()
    sim.run(5)
    sim.set("n1", "killed")
    sim.run(TTL + 3)
    sim.set("n1", "ok")
    sim.run(120)
    assert sim.runs_on("db1") == {"n2"}
    assert next(i for i in sim.instances if i["name"] == "db1")["home_node"] == "n1"
    assert sim.runs_on("tmp") == {"n1"} and sim.runs_on("batch") == {"n1"}, \
        "instances that stayed down with their node run again once it is back"


def test_failback_waits_for_the_node_to_be_back_long_enough_and_the_copy_to_be_in_sync():
    sim = three_nodes(failback_after_s=60)
    sim.run(5)
    sim.set("n1", "killed")
    sim.run(TTL + 3)
    assert sim.runs_on("db1") == {"n2"}
    sim.set("n1", "ok")
    sim.run(50)
    assert sim.runs_on("db1") == {"n2"}, "not before the node has been back for 60 s"
    sim.run(20)
    assert sim.runs_on("db1") == {"n1"} and sim.runs_on("web1") == {"n1"}
    assert any("fail-back db1 to n1" in t for t in sim.transcript)
    db1 = next(i for i in sim.instances if i["name"] == "db1")
    assert (db1["primary_node"], db1["secondary_node"], db1["home_node"]) == ("n1", "n2", None)


def test_a_node_that_fails_again_before_the_failback_time_gets_nothing_back():
    sim = three_nodes(failback_after_s=60)
    sim.run(5)
    sim.set("n1", "killed")
    sim.run(TTL + 3)
    sim.set("n1", "ok")
    sim.run(40)
    sim.set("n1", "killed")
    sim.run(30)
    sim.set("n1", "ok")
    sim.run(40)
    assert sim.runs_on("db1") == {"n2"}, "the clock starts again when the node comes back again"


@pytest.mark.parametrize("seed", range(60))
def test_random_failures_never_run_an_instance_twice_nor_move_anything_under_alert_or_disarm(seed: int):
    rng = random.Random(seed)
    nodes = rng.choice([3, 4, 5])
    names = [f"n{i}" for i in range(1, nodes + 1)]
    instances = []
    for i in range(8):
        primary, secondary = rng.sample(names, 2)
        instances.append(mirrored(f"vm{i}", primary, secondary, auto_failover=rng.choice([True, True, None, False]),
                                  priority=rng.choice(["critical", "normal", "low"]),
                                  replica_in_sync=rng.random() > 0.1))
    sim = Sim.build(nodes, instances, auto_failover=rng.random() > 0.5,
                    failback_after_s=rng.choice([None, 10, 60]))
    for _ in range(12):
        sim.run(rng.randint(1, 30))
        what = rng.random()
        if what < 0.15:
            sim.operator(fencing=rng.choice(["armed", "disarmed"]))
        else:
            sim.set(rng.choice(names), rng.choice(["killed", "partitioned", "agent-frozen", "frozen", "ok", "ok"]))
    for name in names:
        sim.set(name, "ok")
    sim.run(TTL * 2)
    # the invariants are checked on every tick by the simulator; at the end every node is back
    for inst in sim.instances:
        assert len(sim.runs_on(inst["name"])) <= 1
