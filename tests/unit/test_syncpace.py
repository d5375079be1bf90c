"""Pacing of disk copies (hostagent.master.decide.syncpace): critical first, and a node's cap shared, never exceeded."""

from __future__ import annotations

import random
from collections import defaultdict

import pytest

from hostagent.master.decide.syncpace import (
    Copy,
    ordinal,
    pace,
    queue_words,
    queued_words,
    shares,
    start_words,
)
from hostagent.views import copy_standing


def waiting(name: str, primary: str = "n1", secondary: str = "n3", priority: str = "normal") -> Copy:
    return Copy(name, primary, secondary, priority)


def running(name: str, primary: str = "n1", secondary: str = "n3", priority: str = "normal") -> Copy:
    return Copy(name, primary, secondary, priority, running=True)


def per_node(copies: list[Copy], rates: dict[str, float]) -> dict[str, float]:
    total: dict[str, float] = defaultdict(float)
    for c in copies:
        if c.instance in rates:
            for node in c.nodes:
                total[node] += rates[c.instance]
    return total


def test_a_returning_node_takes_critical_copies_first_then_by_name_two_at_a_time() -> None:
    copies = [waiting(f"web{i}") for i in range(5)] + [waiting("db2", priority="critical"),
                                                         waiting("db1", priority="critical"),
                                                         waiting("batch", priority="low"),
                                                         waiting("api", priority="high")]
    decided = pace(copies, 16.0)
    assert decided.start == ("db1", "db2")
    assert decided.rates == {"db1": 8.0, "db2": 8.0}
    assert list(decided.queued) == ["api", "web0", "web1", "web2", "web3", "web4", "batch"]
    assert decided.queued["api"] == (1, 7) and decided.queued["batch"] == (7, 7)


def test_running_copies_keep_their_slots_and_the_next_in_line_waits() -> None:
    copies = [running("web0"), running("web1"), waiting("db1", priority="critical")]
    decided = pace(copies, 16.0)
    assert decided.start == ()  # a running copy is never stopped for a waiting one
    assert decided.queued == {"db1": (1, 1)}
    assert decided.rates == {"web0": 8.0, "web1": 8.0}
    decided = pace([running("web0"), waiting("db1", priority="critical"), waiting("a0")], 16.0)
    assert decided.start == ("db1",)


def test_copies_on_other_nodes_start_alongside() -> None:
    copies = [running("a", "n1", "n3"), running("b", "n2", "n3"), waiting("c", "n1", "n2"), waiting("d", "n4", "n5")]
    decided = pace(copies, 10.0)
    assert decided.start == ("c", "d")
    assert decided.rates["d"] == 10.0  # alone on its nodes
    assert decided.rates["a"] == decided.rates["b"] == decided.rates["c"] == 5.0


def test_a_lower_priority_copy_takes_no_slot_a_waiting_critical_one_needs() -> None:
    # db1 waits for n3; web1 would take n1's last slot, which db1 needs too once n3 frees one.
    copies = [running("x", "n2", "n3"), running("y", "n4", "n3"), running("z", "n1", "n5"),
              waiting("db1", "n1", "n3", "critical"), waiting("web1", "n1", "n6")]
    decided = pace(copies, 0.0)
    assert decided.start == ()
    assert list(decided.queued) == ["db1", "web1"]
    # Of the same priority, one that can go goes.
    copies[-1] = waiting("db2", "n1", "n6", "critical")
    assert pace(copies, 0.0).start == ("db2",)


def test_without_a_cap_copies_run_at_full_speed_and_the_slots_alone_pace_them() -> None:
    decided = pace([waiting(f"vm{i}") for i in range(4)], 0.0)
    assert decided.start == ("vm0", "vm1")
    assert decided.rates == {"vm0": 0.0, "vm1": 0.0}
    assert pace([waiting(f"vm{i}") for i in range(4)], 0.0, slots_per_node=3).start == ("vm0", "vm1", "vm2")


def test_a_copy_gets_its_share_of_its_most_crowded_node_and_the_rest_goes_to_the_others() -> None:
    # n3 carries three copies: each gets a third of it; n1 carries 'a' and 'd', and 'd' gets what 'a' leaves.
    copies = [running("a", "n1", "n3"), running("b", "n2", "n3"), running("c", "n4", "n3"), running("d", "n1", "n5")]
    rates = shares(copies, 12.0)
    assert rates["a"] == rates["b"] == rates["c"] == 4.0
    assert rates["d"] == 8.0  # n1 has 12: 4 for 'a', what is left for 'd'
    assert all(total <= 12.0 + 1e-9 for total in per_node(copies, rates).values())


@pytest.mark.parametrize("seed", range(200))
def test_the_rates_through_a_node_never_add_up_to_more_than_the_cap(seed: int) -> None:
    rnd = random.Random(seed)
    nodes = [f"n{i}" for i in range(rnd.randint(2, 7))]
    copies = []
    for i in range(rnd.randint(1, 30)):
        primary, secondary = rnd.sample(nodes, 2)
        copies.append(Copy(f"vm{i}", primary, secondary, rnd.choice(["critical", "high", "normal", "low", "odd"]),
                           running=rnd.random() < 0.3))
    cap = rnd.choice([1.0, 16.0, 33.3, 100.0])
    decided = pace(copies, cap)
    active = [c for c in copies if c.running or c.instance in decided.start]
    assert set(decided.rates) == {c.instance for c in active}
    assert all(rate > 0 for rate in decided.rates.values())
    assert all(total <= cap + 1e-9 for total in per_node(copies, dict(decided.rates)).values())
    started = [c for c in copies if c.instance in decided.start]
    slots: dict[str, int] = defaultdict(int)
    for c in active:
        for node in c.nodes:
            slots[node] += 1
    # Nothing starts on a node past its slots (running copies may already fill it).
    assert all(slots[n] <= 2 for c in started for n in c.nodes)
    # Every copy that waits would not fit, or waits behind one of a higher priority.
    assert set(decided.queued) | set(decided.start) == {c.instance for c in copies if not c.running}


def test_the_log_and_the_views_say_it_in_operator_words() -> None:
    copies = [waiting(f"web{i:02}") for i in range(10)] + [waiting("db1", priority="critical"),
                                                           waiting("db2", priority="critical")]
    decided = pace(copies, 16.0)
    assert start_words(copies[10], decided, 16.0) == (
        "the disk copy of instance 'db1' (critical) from node 'n1' to node 'n3' started at 8 MiB/s (the 16 MiB/s "
        "a node allows, shared); 10 more wait their turn, 2 at a time per node, critical first")
    assert queue_words(copies, decided, 16.0) == (
        "node 'n1' has 12 disk copies to make: 2 at a time per node, critical first, at most 16 MiB/s a node in "
        "all; 10 queued, next: 'web00', 'web01', 'web02', ...")
    assert queued_words(*decided.queued["web02"]) == "queued (3rd of 10)"
    assert [ordinal(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 22, 101)] == \
        ["1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "101st"]


def test_a_copy_waiting_its_turn_says_queued_in_instance_list_and_info() -> None:
    now = 1000.0
    inst = {"name": "web02", "primary_node": "n1", "secondary_node": "n3", "disk_template": "mirror",
            "replica": {"gen": 4, "in_sync": False, "queued": [3, 10]}}
    reports = {"n1": {"time": now, "instances": {"web02": {"status": "running"}}, "mirrors": {}},
               "n3": {"time": now, "instances": {}, "mirrors": {}}}
    standing = copy_standing(inst, reports, now)
    assert standing is not None
    assert (standing["verdict"], standing["short"]) == ("queued", "queued 3/10")
    assert standing["why"].startswith("queued (3rd of 10)")
    # Once its copy is under way, the report says how far it is, whatever the record still says.
    reports["n1"]["mirrors"] = {"web02": [{"index": 0, "status": "syncing", "percent": 5.0, "gen": 5}]}
    assert (copy_standing(inst, reports, now) or {}).get("verdict") == "measuring"
