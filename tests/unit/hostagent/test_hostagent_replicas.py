"""hostagent.master.decide.replicas: when the master may record a copy in sync, and when a failover may trust it."""

from hostagent.master.decide.replicas import judge, new_copy, outdated, trusted, with_trust


def disk(status: str, gen: int, index: int = 0) -> dict[str, object]:
    return {"index": index, "status": status, "gen": gen}


def test_in_sync_is_recorded_only_when_every_disk_joined_under_the_current_generation():
    record = {"name": "db1", "gen": 3, "in_sync": False}
    assert judge(record, [disk("in_sync", 3), disk("in_sync", 3, 1)], 10.0, 11.0)["in_sync"] is True
    assert judge(record, [disk("in_sync", 3), disk("syncing", 3, 1)], 10.0, 11.0) is None
    assert judge(record, [disk("in_sync", 2)], 10.0, 11.0) is None, "a report from an older copy"
    assert judge(record, [], 10.0, 11.0) is None
    written = judge(record, [disk("in_sync", 3)], 10.0, 11.0)
    assert written["judged_from"] == {"report_time": 10.0, "gen": 3}


def test_anything_but_joined_clears_in_sync_and_ends_the_generation():
    record = {"name": "db1", "gen": 3, "in_sync": True}
    for status in ("degraded", "stalled", "blocked", "syncing", "converged", "failed"):
        new = judge(record, [disk(status, 3)], 10.0, 11.0)
        assert new is not None and new["in_sync"] is False and new["gen"] == 4, status
    assert judge(record, [disk("in_sync", 3)], 10.0, 11.0) is None


def test_a_report_made_before_an_outdate_never_revives_the_copy():
    before = {"name": "db1", "gen": 3, "in_sync": True}
    after = outdated(before, "the secondary's copy did not take a write", 20.0)
    assert after["in_sync"] is False and after["since"] == 20.0
    assert judge(after, [disk("in_sync", 3)], 19.0, 21.0) is None


def test_a_new_copy_gets_its_own_generation_and_keeps_when_the_copy_went_out_of_date():
    stale = outdated({"gen": 1, "in_sync": True}, "lost", 20.0)
    fresh = new_copy(stale, 30.0)
    assert fresh["gen"] == stale["gen"] + 1 and fresh["in_sync"] is False and fresh["since"] == 20.0
    assert new_copy({"gen": 5, "in_sync": True}, 30.0)["since"] == 30.0


def test_failover_trusts_the_record_only_if_the_primary_s_last_report_does_not_contradict_it():
    record = {"gen": 4, "in_sync": True}
    report = {"mirrors": {"db1": [disk("in_sync", 4)]}}
    assert trusted(record, report, "db1") == (True, "")
    assert trusted(record, {"mirrors": {"db1": [disk("blocked", 4)]}}, "db1")[0], "held writes are not done"
    assert trusted(record, None, "db1")[0], "a stopped instance's copy stays whole"
    ok, why = trusted(record, {"mirrors": {"db1": [disk("degraded", 4)]}}, "db1")
    assert not ok and "degraded" in why
    assert not trusted(record, {"mirrors": {"db1": [disk("in_sync", 3)]}}, "db1")[0]
    assert not trusted({"gen": 4, "in_sync": False, "why": "lost"}, report, "db1")[0]
    assert not trusted(None, report, "db1")[0]


def test_decisions_see_the_trust_as_replica_in_sync_whatever_the_instance_record_says():
    inst = {"name": "db1", "primary_node": "n1", "replica_in_sync": True}
    assert with_trust([inst], {}, {})[0]["replica_in_sync"] is False
    assert with_trust([inst], {"db1": {"gen": 1, "in_sync": True}}, {})[0]["replica_in_sync"] is True


def test_a_late_request_for_an_older_generation_does_not_end_the_new_copy_s():
    from hostagent.master.decide.replicas import already_outdated
    record = {"gen": 62, "in_sync": False}
    assert already_outdated(record, 61) is True  # the primary retried after the master moved on
    assert already_outdated(record, 62) is False  # the copy in use now: outdate it
    assert already_outdated(record, None) is False and already_outdated(record, True) is False
