from hostagent.status import instance_status
from hostagent.views import instance_row, verify

NOW = 1_000_000.0


def inst(name="web1", node="n1", admin="up"):
    return {"name": name, "uuid": "u", "os": "img", "disk_template": "file", "memory_mib": 256, "vcpus": 1,
            "primary_node": node, "secondary_node": None, "admin_state": admin,
            "disks": [{"index": 0, "size_mib": 64, "format": "raw", "uuid": "d0"}], "nics": [],
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
    assert "instance 'web1': marked up but running nowhere (primary node 'n1'); the master has not tried " \
           "to restart it yet" in messages
    assert {f.severity for f in findings} == {"error", "warning"}


def test_verify_of_a_healthy_cluster_finds_nothing():
    reports = {"n1": report(instances={"web1": {"pid": 9, "status": "running"}},
                            volumes=[{"instance": "web1", "index": 0, "path": "/x/web1/disk0.raw"}])}
    assert verify([{"name": "n1", "address": "a"}], [inst()], reports, [], "n1", NOW) == []


def test_verify_without_master_is_an_error():
    findings = verify([], [], {}, [], None, NOW)
    assert [f.message for f in findings] == ["no node holds the master lease"]


def mirrored(state: str | None, in_sync: bool = False) -> tuple[dict, dict]:
    i = {**inst("db1"), "disk_template": "mirror", "secondary_node": "n2", "replica_in_sync": in_sync,
         "disks": [{"index": 0, "size_mib": 64, "format": "raw", "uuid": "d"}]}
    mirrors = {"db1": [] if state is None else [{"index": 0, "status": state, "percent": 40.0, "eta_s": 30.0,
                                                 "remaining_mib": 10, "error": ""}]}
    r = {**report(instances={"db1": {"pid": 7, "status": "running"}}), "mirrors": mirrors}
    return i, r


def test_a_syncing_mirror_shows_percent_and_eta_and_is_a_warning():
    i, r = mirrored("syncing")
    assert instance_row(i, {"n1": r}, NOW)["replication"]["summary"] == "syncing 40.0 %, about 30 s left"
    findings = verify([{"name": "n1"}], [i], {"n1": r, "n2": report("n2")}, [], "n1", NOW)
    assert [(f.severity, f.message) for f in findings] == [
        ("warning", "instance 'db1': its copy on node 'n2' is syncing 40.0 %, about 30 s left")]


def test_a_running_instance_without_a_current_copy_is_an_error():
    for state in ("degraded", None):
        i, r = mirrored(state, in_sync=True)
        findings = verify([{"name": "n1"}], [i], {"n1": r}, [], "n1", NOW)
        assert any(f.severity == "error" and "a failover is refused" in f.message for f in findings)


def test_the_secondary_copy_is_not_an_orphan_disk():
    i, r = mirrored("in_sync", in_sync=True)
    copy = {"instance": "db1", "index": 0, "path": "/srv/db1/disk0.raw", "size_mib": 64, "format": "raw"}
    findings = verify([{"name": "n1"}, {"name": "n2"}], [i], {"n1": r, "n2": report("n2", volumes=[copy])},
                      [], "n1", NOW)
    assert findings == []


def test_an_instance_being_migrated_is_running_and_says_so():
    for state in ("migrating", "finish-migrate", "postmigrate"):
        got = instance_status(inst(), report(instances={"web1": {"pid": 9, "status": state}}), NOW)
        assert (got.status, got.pid, got.reason) == ("running", 9, f"live migration under way ({state})")
