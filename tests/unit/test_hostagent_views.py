from hostagent.status import instance_status
from hostagent.views import instance_row, verify

NOW = 1_000_000.0


def inst(name="web1", node="n1", admin="up"):
    return {"name": name, "uuid": "u", "os": "img", "disk_template": "file", "memory_mib": 256, "vcpus": 1,
            "primary_node": node, "secondary_node": None, "admin_state": admin, "disks": [], "nics": [],
            "hvparams": {}, "ctime": 0, "mtime": 0}


def report(node="n1", age=1.0, instances=None, volumes=()):
    return {"node": node, "time": NOW - age, "instances": instances or {}, "volumes": list(volumes),
            "os_problems": []}


def test_marked_up_and_running_is_running():
    got = instance_status(inst(), report(instances={"web1": {"pid": 42, "status": "running"}}), NOW)
    assert (got.status, got.pid) == ("running", 42)


def test_marked_up_but_not_running_is_an_error():
    assert instance_status(inst(), report(), NOW).status == "error"


def test_marked_down_and_stopped_is_stopped_and_running_is_error_up():
    assert instance_status(inst(admin="down"), report(), NOW).status == "stopped"
    up = report(instances={"web1": {"pid": 1, "status": "running"}})
    assert instance_status(inst(admin="down"), up, NOW).status == "error-up"


def test_stale_report_means_node_down_not_stopped():
    got = instance_status(inst(), report(age=120), NOW)
    assert got.status == "node-down"
    assert "has not reported for 120 s" in got.reason


def test_guest_panic_is_an_error():
    got = instance_status(inst(), report(instances={"web1": {"pid": 3, "status": "guest-panicked"}}), NOW)
    assert (got.status, got.reason) == ("error", "the guest kernel panicked")


def test_instance_row_has_the_documented_json_fields():
    row = instance_row(inst(), {"n1": report()}, NOW)
    for key in ("name", "status", "primary_node", "secondary_node", "disk_template", "memory", "vcpus"):
        assert key in row


def test_verify_reports_unknown_qemu_orphan_disk_and_down_instance():
    nodes = [{"name": "n1", "address": "127.0.0.1"}]
    reports = {"n1": report(instances={"ghost": {"pid": 7, "status": "running"}},
                            volumes=[{"instance": "gone", "index": 0, "path": "/x/gone/disk0.raw"}])}
    findings = verify(nodes, [inst()], reports, [], "n1", NOW)
    messages = [f.message for f in findings]
    assert "node 'n1': QEMU for unknown instance 'ghost' is running (pid 7)" in messages
    assert "node 'n1': orphan disk /x/gone/disk0.raw (no instance 'gone' here)" in messages
    assert "instance 'web1': marked up but not running on node 'n1'" in messages
    assert {f.severity for f in findings} == {"error", "warning"}


def test_verify_of_a_healthy_cluster_finds_nothing():
    reports = {"n1": report(instances={"web1": {"pid": 9, "status": "running"}},
                            volumes=[{"instance": "web1", "index": 0, "path": "/x/web1/disk0.raw"}])}
    assert verify([{"name": "n1", "address": "a"}], [inst()], reports, [], "n1", NOW) == []


def test_verify_without_master_is_an_error():
    findings = verify([], [], {}, [], None, NOW)
    assert [f.message for f in findings] == ["no node holds the master lease"]
