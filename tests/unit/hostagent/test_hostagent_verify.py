"""`cluster verify` findings (hostagent.views.verify): pure, on hand-made config records and node reports."""

from __future__ import annotations



from hostagent.node.clocks import ClockReading, reading
from hostagent.master import repair
from hostagent.views import Finding, jobs_in_flight, verify

NOW = 1_000_000.0
GIB = 1024


def inst(name="web1", node="n1", admin="up", template="file", secondary=None, memory=256, disks=1, **extra):
    return {"name": name, "uuid": "u", "os": "img", "disk_template": template, "memory_mib": memory, "vcpus": 1,
            "primary_node": node, "secondary_node": secondary, "admin_state": admin,
            "disks": [{"index": i, "size_mib": 64, "format": "raw", "uuid": f"d{i}"} for i in range(disks)],
            "nics": [], "hvparams": {}, "ctime": 0, "mtime": 0, **extra}


def report(node="n1", age=1.0, instances=None, **extra):
    return {"node": node, "time": NOW - age, "instances": instances or {}, "volumes": [], "os_problems": [],
            **extra}


def running(pid=7, started=NOW - 100):
    return {"pid": pid, "status": "running", "started": started}


def node(name="n1", **flags):
    return {"name": name, "address": "127.0.0.1", **flags}


def run(nodes=None, instances=(), reports=None, jobs=(), **kw) -> list[Finding]:
    nodes = nodes if nodes is not None else [node()]
    reports = reports if reports is not None else {"n1": report()}
    return verify(nodes, list(instances), reports, list(jobs), "n1", NOW, **kw)


def said(findings: list[Finding]) -> list[tuple[str, str]]:
    return [(f.severity, f.message) for f in findings]


def job(job_id=3, op="instance.migrate", name="web1", status="running"):
    return {"id": job_id, "op": op, "summary": f"{op.split('.')[1]} instance '{name}'", "status": status,
            "args": {"name": name}, "started": NOW - 5}


# ---- cluster record ---------------------------------------------------------------------------------------
def test_the_cluster_alert_is_an_error_with_its_reason():
    alert = {"reason": "2 of 3 nodes lost within 300 s", "since": NOW - 60, "nodes": ["n2", "n3"]}
    (finding,) = run(cluster={"alert": alert})
    assert finding.severity == "error" and finding.code == "alert"
    assert finding.message.startswith("cluster alert since ") and finding.message.endswith(": 2 of 3 nodes lost "
                                                                                           "within 300 s")


def test_disarmed_fencing_is_a_warning_that_nothing_fails_over():
    (finding,) = run(cluster={"fencing": "disarmed", "fencing_since": NOW - 3600})
    assert finding.severity == "warning"
    assert finding.message.startswith("fencing is disarmed since ")
    assert finding.message.endswith(": nothing fails over automatically")
    assert run(cluster={"fencing": "armed", "alert": None}) == []


# ---- node leases ---------------------------------------------------------------------------------------
def test_a_node_without_its_node_lease_is_an_error_but_an_offline_node_needs_none():
    nodes = [node("n1"), node("n2"), node("n3", offline=True)]
    reports = {"n1": report(), "n2": report("n2"), "n3": report("n3")}
    findings = run(nodes, reports=reports, leases={"n1": {"node": "n1", "since": NOW - 50}})
    assert said(findings) == [("error", "node 'n2': holds no node lease: its agent is not renewing it, so the "
                                        "master counts the node as lost")]


def test_leases_are_not_checked_when_the_caller_does_not_know_them():
    assert run() == []


# ---- QEMUs -------------------------------------------------------------------------------------------------
def test_a_qemu_on_a_node_that_is_not_the_primary_is_an_error_naming_its_pid():
    reports = {"n1": report(), "n2": report("n2", instances={"web1": running(pid=9)})}
    findings = run([node("n1"), node("n2")], [inst()], reports)
    wrong = [f for f in findings if f.code == "wrong-node"]
    assert said(wrong) == [("error", "instance 'web1' runs on node 'n2' but its primary is 'n1' (pid 9)")]
    assert (wrong[0].node, wrong[0].instance, wrong[0].pid) == ("n2", "web1", 9)
    # it runs somewhere, so it is not "running nowhere"
    assert not [f for f in findings if f.code == "runs-nowhere"]


def test_the_second_qemu_of_a_migration_in_flight_is_only_a_warning_naming_the_job():
    reports = {"n1": report(instances={"web1": running()}), "n2": report("n2", instances={"web1": running(pid=9)})}
    findings = run([node("n1"), node("n2")], [inst()], reports, [job()])
    assert said([f for f in findings if f.code == "wrong-node"]) == [
        ("warning", "instance 'web1' runs on node 'n2' but its primary is 'n1' (pid 9); "
                    "job 3 (migrate instance 'web1') is running")]


def test_an_unknown_instance_being_added_is_a_warning():
    findings = run(reports={"n1": report(instances={"new1": running()})},
                   jobs=[{**job(op="instance.add", name="new1"), "args": {"instance": {"name": "new1"}}}])
    assert [(f.severity, f.code) for f in findings] == [("warning", "unknown-qemu")]


def test_two_qemus_for_one_instance_on_the_same_node_are_an_error():
    r = report(instances={"web1": running(pid=7)}, stray_qemus=[{"instance": "web1", "pid": 8, "started": NOW}])
    (finding,) = run(instances=[inst()], reports={"n1": r})
    assert finding.severity == "error" and finding.code == "duplicate-qemu"
    assert finding.message == "node 'n1': two QEMUs for instance 'web1': pid 7 (named by its pidfile) and pid 8"


def test_a_qemu_its_pidfile_does_not_name_is_an_error_even_without_a_tracked_one():
    r = report(stray_qemus=[{"instance": "web1", "pid": 8, "started": NOW}])
    findings = run(instances=[inst(admin="down")], reports={"n1": r})
    assert said(findings) == [("error", "node 'n1': QEMU pid 8 of instance 'web1' is not the one its pidfile "
                                        "names, so the agent neither sees nor stops it")]


# ---- instances marked up but running nowhere ---------------------------------------------------------------
def test_an_instance_running_nowhere_says_what_the_restart_duty_is_doing():
    none = run(instances=[inst()])
    assert said(none) == [("error", "instance 'web1': marked up but running nowhere (primary node 'n1'); the "
                                    "master has not tried to restart it yet")]
    track = {"attempts": 2, "next_try_at": NOW + 4, "last_error": "QEMU exited with status 1", "failed": ""}
    trying = run(instances=[inst(restart=track)])
    assert said(trying) == [("error", "instance 'web1': marked up but running nowhere (primary node 'n1'); 2 "
                                      "restart attempt(s) so far, next in 4 s, last error: QEMU exited with "
                                      "status 1")]


def test_an_instance_given_up_says_why_and_how_to_try_again():
    track = {"attempts": 5, "failed": "gave up after 5 start attempts on node 'n1'"}
    (finding,) = run(instances=[inst(restart=track)])
    assert finding.message == ("instance 'web1': gave up after 5 start attempts on node 'n1' (marked up, running "
                               "nowhere; `corral instance start web1` tries again)")


def test_an_instance_whose_node_is_down_runs_nowhere_and_says_why():
    findings = run(instances=[inst()], reports={"n1": report(age=120)})
    assert ("error", "instance 'web1': marked up but running nowhere: node 'n1' has not reported for 120 s") \
        in said(findings)


def test_an_instance_marked_down_and_stopped_is_fine():
    assert run(instances=[inst(admin="down")]) == []


# ---- orphans -------------------------------------------------------------------------------------------------
def export(instance="db1", disk=0, pid=40):
    return {"instance": instance, "disk": disk, "pid": pid, "client": "n1"}


def test_an_export_serving_the_mirror_of_an_instance_whose_secondary_is_here_is_not_an_orphan():
    db1 = inst("db1", template="mirror", secondary="n2")
    reports = {"n1": report(instances={"db1": running()}, mirrors={"db1": [
        {"index": 0, "status": "in_sync", "percent": 100.0, "eta_s": 0, "remaining_mib": 0, "error": ""}]}),
               "n2": report("n2", exports=[export()])}
    assert run([node("n1"), node("n2")], [db1], reports) == []


def test_exports_no_mirror_needs_are_orphans_with_the_reason():
    cases = {"no such instance": [],
             "the instance is not mirrored (template file)": [inst("db1")],
             "its secondary is node 'n3'": [inst("db1", template="mirror", secondary="n3", admin="down")],
             "the instance has no disk 0": [inst("db1", template="mirror", secondary="n2", admin="down",
                                                 disks=0)]}
    for why, instances in cases.items():
        reports = {"n1": report(), "n2": report("n2", exports=[export()])}
        findings = [f for f in run([node("n1"), node("n2")], instances, reports) if f.code == "orphan-export"]
        assert said(findings) == [("warning", f"node 'n2': orphan NBD export of disk 0 of 'db1' (pid 40): {why}")]
        assert (findings[0].node, findings[0].instance, findings[0].disk, findings[0].pid) == ("n2", "db1", 0, 40)


def test_an_orphan_disk_carries_its_path_and_the_job_creating_it():
    vol = {"instance": "new1", "index": 0, "path": "/srv/new1/disk0.raw", "size_mib": 64, "format": "raw"}
    findings = run(reports={"n1": report(volumes=[vol])},
                   jobs=[{**job(op="instance.add", name="new1"), "args": {"instance": {"name": "new1"}}}])
    assert said(findings) == [("warning", "node 'n1': orphan disk /srv/new1/disk0.raw (no instance 'new1' here); "
                                          "job 3 (add instance 'new1') is running")]
    assert findings[0].subject == "/srv/new1/disk0.raw"


def test_snapshots_of_an_instance_gone_or_moved_away_are_orphans_and_a_secondary_s_are_not():
    snap = {"name": "before", "created": NOW - 60, "consistency": "crash", "used_bytes": 5 * 2**20, "disks": {}}
    reports = {"n1": report(snapshots={"gone1": [snap], "web1": [snap]}, snapshot_problems=["snapshot directory "
                                                                                            "/x is not readable"]),
               "n2": report("n2", snapshots={"web1": [snap], "web2": [snap]})}
    findings = run(nodes=[node(), node("n2")], reports=reports,
                   instances=[inst("web1", "n1", admin="down", template="mirror", secondary="n2"),
                              inst("web2", "n1", admin="down")])
    assert said(findings) == [
        ("warning", "node 'n1': orphan snapshot(s) before of 'gone1', not an instance of the cluster (5 MiB; in the "
                    "snapshots directory of 'gone1' in the node's file storage, or LVs tagged corral-snapshot=gone1/...)"),
        ("warning", "node 'n1': snapshot directory /x is not readable"),
        ("warning", "node 'n2': orphan snapshot(s) before of 'web2', whose disks are no longer on this node (5 MiB; "
                    "in the snapshots directory of 'web2' in the node's file storage, or LVs tagged "
                    "corral-snapshot=web2/...)")]


def test_a_snapshot_cut_short_is_a_leftover_and_says_when_its_job_still_runs():
    left = "/srv/web1/snapshots/.s1.partial"
    findings = run(reports={"n1": report(snapshot_leftovers={"web1": [left]})}, instances=[inst(admin="down")],
                   jobs=[job(op="instance.snapshot-create")])
    assert said(findings) == [("warning", f"node 'n1': {left} was left by a snapshot (or its removal) of 'web1' cut "
                                          "short and takes space; delete it; job 3 (snapshot-create instance "
                                          "'web1') is running")]
    assert findings[0].subject == left


def lv(name="web1", index=0, vg="vg0"):
    return {"instance": name, "index": index, "path": f"/dev/{vg}/corral-{name}-disk{index}", "size_mib": 64,
            "format": "raw"}


def test_an_lv_no_disk_of_the_config_names_is_an_orphan_and_says_why():
    instances = [inst("web1", template="plain"), inst("db1")]  # db1's disks are files
    vols = [lv("web1", 0), lv("web1", 3), lv("db1", 0), lv("gone", 0)]
    findings = run(instances=instances, reports={"n1": report(volumes=vols, lvm={"vg": "vg0", "free_mib": 9})})
    assert said([f for f in findings if f.code == "orphan-disk"]) == [
        ("warning", "node 'n1': orphan disk /dev/vg0/corral-web1-disk3 (instance 'web1' has no disk 3)"),
        ("warning", "node 'n1': orphan disk /dev/vg0/corral-db1-disk0 (instance 'db1' keeps its disks in files "
                    "(file))"),
        ("warning", "node 'n1': orphan disk /dev/vg0/corral-gone-disk0 (no instance 'gone' here)")]


def test_a_plain_disk_without_its_lv_on_the_primary_is_missing():
    instances = [inst("web1", template="plain", disks=2), inst("db1", template="plain", admin="down")]
    findings = run(instances=instances, reports={"n1": report(volumes=[lv("web1", 0)], lvm={"vg": "vg0"})},
                   jobs=[job(op="instance.reinstall", name="db1")])
    missing = [f for f in findings if f.code == "missing-disk"]
    assert said(missing) == [
        ("error", "instance 'web1': disk 1 is missing: no logical volume for it in volume group vg0 on its "
                  "primary node 'n1'"),
        ("warning", "instance 'db1': disk 0 is missing: no logical volume for it in volume group vg0 on its "
                    "primary node 'n1'; job 3 (reinstall instance 'db1') is running")]
    assert (missing[0].node, missing[0].instance, missing[0].disk) == ("n1", "web1", 1)


def test_missing_lvs_are_not_judged_from_a_volume_group_the_node_could_not_read():
    instances = [inst("web1", template="plain")]
    for lvm in (None, {"vg": "vg0", "error": "volume group 'vg0' cannot be used"}):
        findings = run(instances=instances, reports={"n1": report(lvm=lvm)})
        assert not [f for f in findings if f.code == "missing-disk"]


# n1's resource files: one of web1 whose peer is gone, one of a deleted instance, and one Corral did not make.
def test_drbd_resources_of_no_instance_are_orphans_and_a_disconnected_primary_is_an_error():
    drbd = {"version": "8.4", "resources": [  # as hostagent.node.drbdnode reports the node's resource files
        {"name": "corral-web1-0", "up": True, "connection": "WFConnection", "role": "Primary", "up_to_date": False,
         "summary": "WFConnection, Primary, this disk UpToDate, the peer's DUnknown"},
        {"name": "corral-gone-1", "up": False, "up_to_date": False, "summary": "not up on this node"},
        {"name": "r0", "up": True, "connection": "StandAlone", "up_to_date": True, "summary": "not Corral's"}]}
    web1 = inst(template="drbd", secondary="n2")
    reports = {"n1": report(instances={"web1": running()}, drbd=drbd), "n2": report("n2")}
    findings = [f for f in run([node("n1"), node("n2")], [web1], reports) if f.code.endswith("drbd")
                or f.code == "drbd-degraded"]
    assert said(findings) == [
        ("error", "instance 'web1' disk 0: DRBD on node 'n1' is not in sync: WFConnection, Primary, this disk UpToDate, "
                  "the peer's DUnknown"),
        ("warning", "node 'n1': orphan DRBD resource corral-gone-1 (no such instance)")]
    assert findings[1].subject == "corral-gone-1"


def test_a_drbd_resource_that_refuses_to_connect_is_a_split_brain_with_the_steps_to_resolve_it():
    standalone = {"name": "corral-web1-0", "up": True, "connection": "StandAlone", "role": "Secondary",
                  "up_to_date": False, "summary": "StandAlone, Secondary, this disk UpToDate, the peer's DUnknown"}
    web1 = inst(template="drbd", secondary="n2")
    reports = {"n1": report(instances={"web1": running()}), "n2": report("n2", drbd={"resources": [standalone]})}
    findings = [f for f in run([node("n1"), node("n2")], [web1], reports) if "drbd" in f.code]
    assert [(f.severity, f.code, f.node, f.subject) for f in findings] == [
        ("error", "drbd-split-brain", "n2", "corral-web1-0")]
    assert "split brain" in findings[0].message
    steps = repair.plan(findings, [web1], reports, {}, {}, NOW)
    assert not steps[0].op and "connect --discard-my-data corral-web1-0" in steps[0].manual


def test_unreadable_drbd_state_is_a_warning():
    findings = run(reports={"n1": report(drbd={"error": "drbdsetup status did not finish within 10 s"})})
    assert said(findings) == [("warning", "node 'n1': DRBD state unreadable: drbdsetup status did not finish "
                                          "within 10 s")]


def test_leftover_restart_tracks_of_deleted_instances_are_warnings():
    findings = run(instances=[inst(admin="down")], tracks=[{"name": "web1"}, {"name": "gone"}])
    assert said(findings) == [("warning", "the master's restart track of deleted instance 'gone' is left over")]


# ---- N+1 ------------------------------------------------------------------------------------------------------
def test_n_plus_1_fails_when_a_secondary_could_not_take_its_primarys_instances():
    nodes = [node("n1"), node("n2")]
    instances = [inst("a", template="mirror", secondary="n2", memory=GIB),
                 inst("b", template="mirror", secondary="n2", memory=GIB),
                 inst("c", node="n2", memory=GIB)]
    mirrors = {n: [{"index": 0, "status": "in_sync", "percent": 100.0, "eta_s": 0, "remaining_mib": 0,
                    "error": ""}] for n in ("a", "b")}
    up = {"a": running(), "b": running(pid=8)}

    def findings(n2_total: int) -> list[Finding]:
        reports = {"n1": report(instances=up, mirrors=mirrors, memory_total_mib=8 * GIB),
                   "n2": report("n2", instances={"c": running(pid=9)}, memory_total_mib=n2_total)}
        return run(nodes, instances, reports)

    assert said(findings(2 * GIB)) == [("error", "node 'n2': N+1: if n1 failed, n2 would need 2G for its "
                                                 "secondaries, has 1G")]
    assert findings(3 * GIB) == []


# ---- clocks ---------------------------------------------------------------------------------------------------
def test_clock_skew_is_a_warning_above_1_s_and_an_error_above_10_s():
    clocks = {"n2": ClockReading("n1", 0.5, 0.01), "n3": ClockReading("n1", 2.0, 0.01),
              "n4": ClockReading("n1", -20.0, 0.01)}
    findings = run(clocks=clocks)
    assert [(f.severity, f.node) for f in findings] == [("warning", "n3"), ("error", "n4")]
    assert findings[0].message.startswith("node 'n3': clock is 2.0 s ahead of the clock of node 'n1' (±0.01 s)")
    assert findings[1].message.startswith("node 'n4': clock is 20.0 s behind the clock of node 'n1'")


def test_clock_skew_within_the_measurements_uncertainty_is_not_reported():
    assert run(clocks={"n2": ClockReading("n1", 1.3, 0.4)}) == []


def test_a_node_whose_clock_could_not_be_asked_is_a_warning_not_a_crash():
    findings = run(clocks={"n2": ClockReading("n1", None, error="its agent at 127.0.0.2:7947 did not answer")})
    assert said(findings) == [("warning", "node 'n2': clock not measured: its agent at 127.0.0.2:7947 did not "
                                          "answer")]


def test_a_clock_reading_is_taken_halfway_through_the_round_trip():
    got = reading("n1", sent_at=100.0, round_trip_s=0.2, remote_time=105.1)
    assert (round(got.offset_s, 6), got.uncertainty_s) == (5.0, 0.1)


# ---- jobs -----------------------------------------------------------------------------------------------------
def test_jobs_in_flight_name_their_instance_and_ended_ones_do_not_count():
    jobs = [job(1, status="success"), job(2, status="queued", name="db1"),
            {**job(3, op="instance.add", name="x"), "args": {"instance": {"name": "new1"}}},
            {**job(4, op="node.evacuate", name="n2"), "args": {"node": "n2", "instances": ["a", "db1"]}}]
    assert jobs_in_flight(jobs) == {"db1": "job 2 (migrate instance 'db1') is queued",
                                    "new1": "job 3 (add instance 'x') is running",
                                    "a": "job 4 (evacuate instance 'n2') is running"}


def test_an_instance_whose_scheduled_backups_stopped_is_named_with_the_age_and_schedule():
    backups = [{"instance": "web1", "created": NOW - 5000, "path": "/srv/export/web1/a"},
               {"instance": "web2", "created": NOW - 100, "path": "/srv/export/web2/a"}]
    found = [f for f in run(instances=[inst("web1", backup_schedule="30m"), inst("web2", backup_schedule="30m"),
                                       inst("web3", backup_schedule="hourly", backup_since=NOW - 7300)],
                            reports={"n1": report(instances={n: running() for n in ("web1", "web2", "web3")},
                                                  backups=backups)})
             if f.code == "backup-overdue"]
    assert [(f.severity, f.instance, f.node) for f in found] == [("warning", "web1", "n1"), ("warning", "web3", "n1")]
    assert "its newest backup is 83 min old, more than two periods of its schedule (every 30 min)" in found[0].message
    assert "no backup at all, although its schedule (hourly) was set 2.0 h ago" in found[1].message
