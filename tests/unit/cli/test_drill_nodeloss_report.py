"""How `corral drill node-loss` judges what it saw (cli.drill_nodeloss.Watch): fed polls, no cluster."""

from cli.drill_nodeloss import SETTLE_S, Watch


def node(lease: str = "held", report_age_s: float = 0.5, status: str = "online") -> dict:
    return {"n3": {"lease": lease, "report_age_s": report_age_s, "status": status}}


def inst(where: str, pid: int, status: str = "running") -> dict:
    return {"primary_node": where, "pid": pid, "status": status}


def kill_watch() -> Watch:
    return Watch("n3", "kill", 60.0, moving=["db1"], others=["web3"])


def test_a_power_cut_that_stays_down_for_its_duration_passes():
    w = kill_watch()
    w.see(0.1, node(), {"db1": inst("n3", 10), "web3": inst("n3", 11)}, {"db1", "web3"}, True, None)
    w.see(1.1, node(), {"db1": inst("n3", 10), "web3": inst("n3", 11)}, None, True, None)
    w.see(21.0, node("expired"), {"db1": inst("n3", 10), "web3": inst("n3", 11, "unknown")}, None, True, 0.0)
    w.see(25.0, node("expired"), {"db1": inst("n2", 20), "web3": inst("n3", 11, "unknown")}, None, True, 4.0)
    w.see(61.5, node("expired"), {"db1": inst("n2", 20), "web3": inst("n3", 11, "unknown")}, set(), True, 40.5)
    w.see(66.0, node("held", 0.4), {"db1": inst("n2", 20), "web3": inst("n3", 30)}, {"web3"}, True, 45.0)
    assert not w.settled(66.0)
    assert w.settled(66.0 + SETTLE_S)
    assert (w.went_down_s, w.lease_expired_s, w.answered_again_s, w.rejoined_s) == (1.1, 21.0, 61.5, 66.0)
    assert w.recovered == {"db1": ("n2", 25.0, 20)}
    assert (w.others_stopped_s, w.others_running_s) == ({"web3": 1.1}, {"web3": 66.0})
    assert w.failures({"db1": 1}) == []


def test_a_node_restarted_at_once_by_its_supervisor_fails_the_drill_and_says_so():
    """What the kill drill saw on the demo before the hold-down: back in a second, lease never lost."""
    w = kill_watch()
    w.see(0.1, node(), {"db1": inst("n3", 10), "web3": inst("n3", 11)}, {"db1", "web3"}, True, None)
    w.see(1.1, node(), {"db1": inst("n3", 10), "web3": inst("n3", 11)}, None, True, None)
    w.see(2.2, node(), {"db1": inst("n3", 40), "web3": inst("n3", 41)}, {"db1", "web3"}, True, None)
    problems = w.failures({})
    assert "the lease of 'n3' never expired" in problems
    assert "not running elsewhere: db1" in problems
    assert any("came back after 2.2 s, before its 60 s were over" in p and "hold-down" in p for p in problems)


def test_a_node_that_never_went_down_was_not_powered_off():
    w = kill_watch()
    w.see(0.1, node(), {"db1": inst("n3", 10)}, {"db1"}, True, None)
    assert "'n3' never stopped answering: it was not powered off" in w.failures({})


def test_an_instance_started_again_after_it_recovered_did_not_recover_exactly_once():
    w = kill_watch()
    w.see(1.0, node(), {"db1": inst("n3", 10)}, None, True, None)
    w.see(21.0, node("expired"), {"db1": inst("n2", 20)}, None, True, 0.0)
    w.see(30.0, node("expired"), {"db1": inst("n2", 21)}, None, True, 9.0)
    w.see(31.0, node("expired"), {"db1": inst("n2", 21)}, None, True, 10.0)
    problems = w.failures({"db1": 2})
    assert "'db1' did not stay where it recovered: running on n2 (pid 21) after 30.0 s" in problems
    assert "'db1' failed over 2 times, not once" in problems


def test_running_elsewhere_before_the_lease_expired_or_on_both_nodes_fails():
    w = kill_watch()
    w.see(1.0, node(), {"db1": inst("n3", 10)}, None, True, None)
    w.see(5.0, node(), {"db1": inst("n2", 20)}, None, True, None)
    w.see(62.0, node("expired"), {"db1": inst("n2", 20)}, {"db1"}, True, 1.0)
    problems = w.failures({"db1": 1})
    assert "ran elsewhere before the lease of 'n3' expired: db1" in problems
    assert "ran on two nodes at once: db1" in problems


def test_an_instance_without_auto_failover_that_does_not_run_again_on_its_node_fails():
    w = kill_watch()
    w.see(1.0, node(), {"web3": inst("n3", 11)}, None, True, None)
    w.see(62.0, node("held"), {"web3": inst("n3", 11, "failed")}, set(), True, 40.0)
    assert "its instances without auto-failover do not run on it again: web3" in w.failures({})
    assert not w.settled(62.0 + SETTLE_S)


def test_an_isolated_node_keeps_its_other_instances_and_the_report_says_so():
    w = Watch("n3", "isolate", 30.0, moving=["db1"], others=["web3"])
    w.see(0.2, node(), {"db1": inst("n3", 10), "web3": inst("n3", 11)}, {"db1", "web3"}, True, None)
    w.see(13.0, node("expired"), {"db1": inst("n3", 10)}, {"web3"}, True, 0.0)
    w.see(15.0, node("expired"), {"db1": inst("n2", 20)}, {"web3"}, True, 2.0)
    w.see(31.0, node("held", 0.3), {"db1": inst("n2", 20), "web3": inst("n3", 11)}, {"web3"}, True, 18.0)
    assert w.others_stopped_s == {} and w.went_down_s is None
    assert w.failures({"db1": 1}) == []
    assert w.settled(31.0 + SETTLE_S)


def test_a_node_that_stays_away_is_reported_as_not_back():
    w = kill_watch()
    w.see(1.0, node(), {"db1": inst("n3", 10)}, None, True, None)
    w.see(21.0, node("expired"), {"db1": inst("n2", 20)}, None, True, 0.0)
    assert "'n3' did not answer again (is its agent supervised?)" in w.failures({"db1": 1})
    w.see(70.0, node("expired"), {"db1": inst("n2", 20)}, set(), True, 49.0)
    assert "'n3' did not come back (lease and reports)" in w.failures({"db1": 1})
