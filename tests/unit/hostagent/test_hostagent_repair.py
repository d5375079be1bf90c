"""What `cluster verify --repair` would do (hostagent.master.repair.plan): pure, from verify's own findings."""

from __future__ import annotations

from hostagent.master.repair import Step, plan
from hostagent.views import Finding, jobs_in_flight, verify

NOW = 1_000_000.0
QEMU_STARTED = NOW - 100


def inst(name="web1", node="n1", admin="up", **extra):
    return {"name": name, "uuid": "u", "os": "img", "disk_template": "file", "memory_mib": 256, "vcpus": 1,
            "primary_node": node, "secondary_node": None, "admin_state": admin,
            "disks": [{"index": 0, "size_mib": 64, "format": "raw", "uuid": "d"}], "nics": [{"mac": "m"}],
            "hvparams": {}, "ctime": 0, "mtime": 0, **extra}


def report(node="n1", age=1.0, instances=None, **extra):
    return {"node": node, "time": NOW - age, "instances": instances or {}, "volumes": [], "os_problems": [],
            **extra}


def running(pid=7):
    return {"pid": pid, "status": "running", "started": QEMU_STARTED}


NODES = [{"name": "n1"}, {"name": "n2"}]
HELD = {"n1": {"node": "n1", "since": NOW - 1000}, "n2": {"node": "n2", "since": NOW - 1000}}


def steps(instances=(), reports=None, jobs=(), leases=HELD, tracks=None) -> list[Step]:
    reports = reports if reports is not None else {"n1": report(), "n2": report("n2")}
    findings = verify(NODES, list(instances), reports, list(jobs), "n1", NOW, leases=leases, tracks=tracks)
    return plan(findings, instances, reports, leases, jobs_in_flight(jobs), NOW)


def only(found: list[Step], code: str) -> Step:
    (step,) = [s for s in found if s.finding.code == code]
    return step


def test_the_qemu_of_an_unknown_instance_is_stopped_on_its_node():
    step = only(steps(reports={"n1": report(), "n2": report("n2", instances={"ghost": running(9)})}),
                "unknown-qemu")
    assert (step.node, step.op, dict(step.args)) == ("n2", "instance.stop", {"name": "ghost", "timeout_s": 0,
                                                                             "force": True, "nic_count": 0})
    assert step.action == "stop the QEMU of unknown instance 'ghost' on node 'n2' (pid 9)"


def test_nothing_is_stopped_for_a_name_a_job_is_working_on():
    add = {"id": 4, "op": "instance.add", "summary": "add instance 'ghost'", "status": "running",
           "args": {"instance": {"name": "ghost"}}}
    step = only(steps(reports={"n1": report(instances={"ghost": running()}), "n2": report("n2")}, jobs=[add]),
                "unknown-qemu")
    assert (step.op, step.manual) == ("", "left alone while job 4 (add instance 'ghost') is running")


def test_a_second_copy_is_stopped_when_the_primary_runs_the_instance_too():
    reports = {"n1": report(instances={"web1": running()}), "n2": report("n2", instances={"web1": running(9)})}
    step = only(steps([inst()], reports), "wrong-node")
    assert (step.node, step.op, step.args["nic_count"]) == ("n2", "instance.stop", 1)
    assert step.action == "stop the copy of 'web1' on node 'n2' (pid 9): its primary 'n1' runs it too"


def test_the_only_running_copy_is_left_while_its_node_held_its_lease_all_along():
    reports = {"n1": report(), "n2": report("n2", instances={"web1": running(9)})}
    step = only(steps([inst()], reports), "wrong-node")
    assert step.op == "" and step.manual.startswith("left running: it is the only running copy")
    assert "kill 9" in step.manual and "`corral instance start web1`" in step.manual


def test_a_primary_report_too_old_to_trust_does_not_count_as_a_second_copy():
    reports = {"n1": report(age=120, instances={"web1": running()}), "n2": report("n2", instances={"web1": running(9)})}
    assert only(steps([inst()], reports), "wrong-node").op == ""


def test_the_only_copy_is_stopped_once_its_node_lost_its_lease_after_starting_it():
    reports = {"n1": report(), "n2": report("n2", instances={"web1": running(9)})}
    retaken = {**HELD, "n2": {"node": "n2", "since": QEMU_STARTED + 30}}
    for leases in (retaken, {"n1": HELD["n1"]}):
        step = only(steps([inst()], reports, leases=leases), "wrong-node")
        assert step.op == "instance.stop"
        assert step.action.endswith("node 'n2' lost its node lease after this QEMU started, so that copy counts "
                                    "as fenced")


def test_an_orphan_nbd_export_is_stopped():
    export = {"instance": "gone", "disk": 1, "pid": 40, "client": "n1"}
    step = only(steps(reports={"n1": report(), "n2": report("n2", exports=[export])}), "orphan-export")
    assert (step.node, step.op, dict(step.args)) == ("n2", "instance.replica-unexport",
                                                     {"name": "gone", "disks": [{"index": 1}]})


def test_the_restart_track_of_a_deleted_instance_is_cleared():
    step = only(steps(tracks=[{"name": "gone"}]), "stale-track")
    assert (step.op, step.delete_key) == ("", "/corral/restarts/gone")


def test_disks_are_never_deleted_but_the_command_is_given():
    volumes = [{"instance": "gone", "index": 0, "path": "/srv/gone/disk0.raw"},
               {"instance": "gone", "index": 1, "path": "/dev/vg0/corral-gone-disk1"}]
    found = [s for s in steps(reports={"n1": report(volumes=volumes), "n2": report("n2")})
             if s.finding.code == "orphan-disk"]
    assert [(s.op, s.delete_key) for s in found] == [("", ""), ("", "")]
    assert found[0].manual == ("disks are never deleted automatically; if nothing needs it, on node 'n1': "
                               "rm -- /srv/gone/disk0.raw")
    assert found[1].manual.endswith("on node 'n1': lvremove vg0/corral-gone-disk1")


def test_a_missing_lv_is_never_made_anew_but_the_ways_out_are_given():
    (step,) = plan([Finding("error", "instance 'web1': disk 1 is missing", "missing-disk", "n1", "web1", disk=1)],
                   [], {}, {}, {}, NOW)
    assert (step.action, step.op) == ("", "")
    assert "corral-instance= and corral-disk= tags" in step.manual
    assert "`corral instance remove-disk web1 1 --destroy-data`" in step.manual


def test_two_qemus_on_one_node_are_left_to_the_operator():
    r = report(instances={"web1": running()}, stray_qemus=[{"instance": "web1", "pid": 8, "started": NOW}])
    step = only(steps([inst()], {"n1": r, "n2": report("n2")}), "duplicate-qemu")
    assert step.op == "" and "kill 8" in step.manual


def test_findings_with_no_safe_repair_say_so():
    (step,) = plan([Finding("warning", "node 'n2': clock is 2.0 s ahead", "clock-skew", "n2")], [], {}, {}, {}, NOW)
    assert (step.action, step.manual) == ("", "nothing safe to do automatically")
