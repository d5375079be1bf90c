"""Scheduled backups, decided without processes: what is due, pacing per node, what to prune, what is overdue,
and the schedule's input checks (hostagent.master.decide.backup_schedule)."""

from __future__ import annotations

import pytest

from hostagent.errors import BadRequest
from hostagent.master.cluster_settings import check_changes, stored
from hostagent.master.decide import backup_schedule as bs
from hostagent.master.decide.checks import check_modify

NOW = 1_000_000.0
DAY = 86400.0


def inst(name: str, schedule: str = "daily", node: str = "n1", **extra) -> dict:
    return {"name": name, "primary_node": node, "disk_template": "file", "admin_state": "up",
            "backup_schedule": schedule, **extra}


def backup(instance: str, created: float, node: str = "n1", directory: str = "/srv/export", bid: str = "") -> dict:
    path = f"{directory}/{instance}/{bid or int(created)}"
    return {"instance": instance, "created": created, "path": path, "node": node, "ref": f"{node}:{path}"}


def reports(*backups: dict, running: dict[str, list[str]] | None = None, nodes: tuple[str, ...] = ("n1",)) -> dict:
    out = {n: {"node": n, "instances": {i: {"pid": 1} for i in (running or {}).get(n, [])}, "backups": [],
               "export_dirs": ["/srv/export"]} for n in nodes}
    for b in backups:
        out[b["node"]]["backups"].append({k: v for k, v in b.items() if k not in ("node", "ref")})
    return out


def view(instances, reps, **kw) -> bs.View:
    alive = kw.pop("alive", frozenset(reps))
    return bs.View(tuple(instances), reps, kw.pop("cluster", {}), frozenset(alive), frozenset(kw.pop("busy", ())),
                   **kw)


# ---- the schedule as typed -----------------------------------------------------------------------------------

def test_schedules_are_named_periods_or_durations_of_at_least_twenty_seconds():
    assert [bs.parse_schedule(v) for v in ("hourly", "Daily", " weekly ", "20s", "30m", "6h", "none", "")] == \
        ["hourly", "daily", "weekly", "20s", "30m", "6h", "", ""]
    assert [bs.period_s(s) for s in ("hourly", "daily", "weekly", "20s", "30m", "6h", "")] == \
        [3600, 86400, 604800, 20, 1800, 21600, 0]
    for bad in ("19s", "monthly", "1d", "-5m", "5 m", 3600, None):
        with pytest.raises(ValueError) as err:
            bs.parse_schedule(bad)
        assert "hourly, daily, weekly" in str(err.value) or "at least" in str(err.value), err.value
    assert "19 s: a period must be from 20 s" in str(pytest.raises(ValueError, bs.parse_schedule, "19s").value)


def test_instance_modify_checks_the_schedule_keep_and_target_and_names_what_is_accepted():
    record = {"name": "web1", "primary_node": "n1", "disk_template": "file", "hvparams": {}}
    new = check_modify(record, {"backup_schedule": "20s", "backup_keep": 2, "backup_to": "n1:/srv/export/"},
                       (record,), {})
    assert (new["backup_schedule"], new["backup_keep"], new["backup_to"]) == ("20s", 2, "n1:/srv/export")
    assert check_modify(record, {"backup_keep": None, "backup_to": "default"}, (record,), {})["backup_to"] == ""
    with pytest.raises(BadRequest) as err:
        check_modify(record, {"backup_schedule": "5s", "backup_keep": 0, "backup_to": "relative/dir"}, (record,), {})
    said = str(err.value)
    assert "backup schedule '5s' is 5 s: a period must be from 20 s" in said
    assert "backup keep 0 is not accepted: give a whole number of backups to keep, from 1 to 1000" in said
    assert "the directory must be absolute" in said and "NODE:DIR or an absolute DIR" in said


def test_a_schedule_that_could_never_run_is_refused_with_the_reason():
    dirs = {"n1": ["/srv/export"], "n2": ["/backups"], "n3": None}
    ok = inst("web1", backup_to="/srv/export/sub")
    assert bs.target_problem(ok, {}, dirs) == ""
    assert bs.target_problem(inst("web1", backup_to="n2:/backups"), {}, dirs) == ""
    assert bs.target_problem(inst("web1", backup_to="n3:/x"), {}, dirs) == "", \
        "a node that does not say its directories is judged at each export"
    assert "/tmp is not an export directory of node 'n1' (it has: /srv/export" in \
        bs.target_problem(inst("web1", backup_to="/tmp"), {}, dirs)
    assert "/tmp is not an export directory of node 'n1'" in \
        bs.target_problem(inst("web1"), {"backup_to": "/tmp"}, dirs), "the cluster's default"
    assert "no node named 'n9'" in bs.target_problem(inst("web1", backup_to="n9:/x"), {}, dirs)
    assert bs.target_problem(inst("web1", schedule="", backup_to="/tmp"), {}, dirs) == "", "no schedule: no target"


def test_cluster_defaults_of_scheduled_backups_are_checked_and_stored():
    assert check_changes({"backup_keep": 3, "backup_to": "/srv/export", "backup_max_per_node": 2}) == []
    problems = check_changes({"backup_keep": 0, "backup_to": "x:y", "backup_max_per_node": True})
    assert len(problems) == 3 and any(p.startswith("backup_keep must be a whole number from 1") for p in problems)
    assert stored({"backup_to": "n2:/backups/"}, {}) == {"backup_to": "n2:/backups"}


# ---- what is due ------------------------------------------------------------------------------------------

def test_an_instance_is_due_once_its_newest_backup_of_any_kind_is_a_period_old_or_when_it_has_none():
    instances = [inst("fresh"), inst("old"), inst("none"), inst("manual", schedule="hourly"), inst("off", "")]
    reps = reports(backup("fresh", NOW - DAY + 60), backup("old", NOW - DAY - 1), backup("old", NOW - 3 * DAY),
                   backup("manual", NOW - 1800, directory="/elsewhere"), running={"n1": ["old"]})
    plan = bs.plan(view(instances, reps, cluster={"backup_max_per_node": 5}), {}, NOW)
    assert [(e.instance, e.live) for e in plan.exports] == [("none", False), ("old", True)]
    assert plan.exports[1].why == "newest backup 24.0 h old, schedule daily"
    assert plan.exports[0].why == "no backup yet, schedule daily" and plan.held == {}


def test_a_success_not_reported_yet_and_a_recent_failure_hold_the_next_export_back():
    instances = [inst("made", "20s"), inst("failed", "20s"), inst("retry", "20s"), inst("running", "20s")]
    runs = {"made": bs.Run(made=NOW - 5), "failed": bs.Run(failed_at=NOW - 10, error="disk full"),
            "retry": bs.Run(failed_at=NOW - 25), "running": bs.Run(job=7)}
    plan = bs.plan(view(instances, reports(), cluster={"backup_max_per_node": 9}), runs, NOW)
    assert [e.instance for e in plan.exports] == ["retry"]
    assert plan.held == {"running": "its scheduled export (job 7) has not ended"}
    daily = bs.Run(failed_at=NOW - 3601)
    assert bs.due_at(inst("d"), 0.0, daily) == NOW - 1, "a failed daily backup is tried again after an hour"


def test_pacing_one_export_per_node_at_once_most_overdue_first_and_none_while_busy():
    instances = [inst("a"), inst("b"), inst("c", node="n2"), inst("d", node="n2"), inst("e", node="n3")]
    reps = reports(backup("a", NOW - 2 * DAY), backup("b", NOW - 3 * DAY), backup("c", NOW - 2 * DAY, node="n2"),
                   nodes=("n1", "n2", "n3"))
    plan = bs.plan(view(instances, reps, busy={"c"}, exporting={"n3": 1}), {}, NOW)
    assert [(e.instance, e.node) for e in plan.exports] == [("d", "n2"), ("b", "n1")], "none yet, then the oldest"
    assert plan.held["a"].startswith("node 'n1' already has 1 export(s) under way, at most 1 at once")
    assert plan.held["c"] == "a job is working on it"
    assert plan.held["e"].startswith("node 'n3' already has 1 export(s)"), "a manual export counts too"
    two = bs.plan(view(instances[:2], reps, cluster={"backup_max_per_node": 2}), {}, NOW)
    assert [e.instance for e in two.exports] == ["b", "a"]


def test_an_export_to_another_node_counts_against_both_nodes():
    instances = [inst("a", backup_to="n2:/backups"), inst("b", node="n2")]
    plan = bs.plan(view(instances, reports(nodes=("n1", "n2"))), {}, NOW)
    assert [(e.instance, e.to) for e in plan.exports] == [("a", "n2:/backups")]
    assert plan.held["b"].startswith("node 'n2' already has 1 export(s)")


def test_no_scheduled_export_on_a_node_that_is_down_or_recovering():
    instances = [inst("a"), inst("b", node="n2")]
    plan = bs.plan(view(instances, reports(nodes=("n1", "n2")), alive={"n1"},
                        recovering={"n1": "disk copies are resyncing"}), {}, NOW)
    assert plan.exports == []
    assert plan.held == {"a": "node 'n1' is recovering: disk copies are resyncing",
                         "b": "node 'n2' is not up (no fresh report, or no node lease)"}


def test_a_node_is_recovering_just_after_an_outage_while_instances_wait_for_a_restart_or_copies_resync():
    instances = [inst("up", node="n1"), inst("gone", node="n2"), inst("given-up", node="n3"),
                 inst("stopped", node="n3", admin_state="down"), inst("ok", node="n4")]
    reps = reports(running={"n1": ["up"], "n4": ["ok"]}, nodes=("n1", "n2", "n3", "n4", "n5"))
    reps["n5"]["mirrors"] = {"m1": [{"index": 0, "status": "resyncing"}]}
    out = bs.recovering(instances, reps, failed=["given-up"], back={"n1": NOW - 60, "n4": NOW - 301}, now=NOW)
    assert out == {"n1": "back from an outage 60 s ago (scheduled backups wait 300 s)",
                   "n2": "instances marked up are not running yet (gone)",
                   "n5": "disk copies are resyncing"}


# ---- pruning -------------------------------------------------------------------------------------------------

def test_pruning_removes_the_oldest_in_that_directory_on_that_node_beyond_keep_never_the_new_one():
    made = backup("web1", NOW, bid="new")
    rows = [backup("web1", NOW - 300), backup("web1", NOW - 200), backup("web1", NOW - 100), made,
            backup("web1", NOW - 900, directory="/other"), backup("web1", NOW - 900, node="n2"),
            backup("db1", NOW - 900)]
    assert [b["created"] for b in bs.to_prune(rows, "web1", "n1", made["path"], 2)] == [NOW - 300, NOW - 200]
    unreported = [r for r in rows if r is not made]
    assert [b["created"] for b in bs.to_prune(unreported, "web1", "n1", made["path"], 2)] == [NOW - 300, NOW - 200], \
        "the report may not list the new backup yet: it counts all the same"
    assert bs.to_prune(rows, "web1", "n1", made["path"], 4) == []
    assert [b["created"] for b in bs.to_prune(rows, "web1", "n1", made["path"], 1)] == [NOW - 300, NOW - 200,
                                                                                           NOW - 100]


# ---- overdue -------------------------------------------------------------------------------------------------

def test_verify_warns_past_two_periods_without_a_backup_naming_age_and_schedule():
    instances = [inst("late", "hourly"), inst("fine", "hourly"), inst("new", "1h", backup_since=NOW - 3000),
                 inst("never", "30m", backup_since=NOW - 4000), inst("off", "")]
    reps = reports(backup("late", NOW - 7300), backup("fine", NOW - 7100), backup("off", 0.0))
    found = bs.overdue(instances, reps, NOW)
    assert [name for name, _ in found] == ["late", "never"]
    assert found[0][1].startswith("instance 'late': its newest backup is 2.0 h old, more than two periods of its "
                                  "schedule (hourly)")
    assert "no backup at all, although its schedule (every 30 min) was set 67 min ago" in found[1][1]


def test_instance_info_says_schedule_keep_target_last_and_next():
    record = inst("web1", "20s", backup_keep=None, backup_to="", backup_since=NOW - 100)
    reps = reports(backup("web1", NOW - 15), backup("web1", NOW - 40))
    shown = bs.describe(record, reps, {"backup_keep": 3}, {"job": None, "made": NOW - 15}, NOW)
    assert shown["schedule"] == "20s" and shown["period_s"] == 20 and shown["keep"] == 3
    assert shown["keep_own"] is None and shown["to"] is None and shown["count"] == 2
    assert shown["last"] == NOW - 15 and shown["next_due"] == NOW + 5
    assert bs.describe(inst("x", ""), reps, {}, None, NOW)["next_due"] is None
