"""`corral drill master-failover` against real 3-node clusters."""

from __future__ import annotations

import json

import pytest

from conftest import GUEST_DIR, formed

pytestmark = [pytest.mark.integration, pytest.mark.timeout(480)]  # a drill is given 400 s (run_drill)


@pytest.fixture(scope="module")
def drill3(tmp_path_factory):
    """One 3-node cluster under restart loops for every drill here: a drill leaves the cluster healthy."""
    with formed(tmp_path_factory.mktemp("drill3"), 3, supervised=True) as cluster:
        yield cluster


def run_drill(node, *args: str) -> tuple[int, dict, str]:
    result = node.corral("drill", "master-failover", "--json", *args, timeout=400)
    return result.returncode, json.loads(result.stdout or "{}"), result.stderr


def test_kill_drill_moves_the_master_and_disturbs_no_instance(drill3, guest_dir):
    n1, n3 = drill3["n1"], drill3["n3"]
    n1.ok("instance", "add", "steady", "--os", "busybox-guest", "--node", "n2", "--memory", "128M",
          "--disk", "64M", "--hv", f"kernel_path={GUEST_DIR}/vmlinuz,initrd_path={GUEST_DIR}/initrd.img")
    rc, report, err = run_drill(n3, "--mode", "kill", "--rounds", "2")
    assert rc == 0, (report, err)
    assert report["passed"] is True and len(report["rounds"]) == 2
    for r in report["rounds"]:
        assert 0 < r["detect_s"] <= r["elect_s"] <= r["resume_s"]
        assert r["instances_disturbed"] == 0 and r["replicas_agree"] is True
        assert r["old_master_rejoined"] and r["stale_orders_accepted_by"] == [] == r["stale_orders_unanswered"]
        assert r["new_token"] != r["old_token"]
    assert n3.instance("steady")["status"] == "running"


def test_freeze_drill_deposes_the_frozen_master(drill3):
    before = drill3.master()
    observer = next(n for n in drill3.nodes if n.name != before)
    rc, report, err = run_drill(observer, "--mode", "freeze", "--freeze-seconds", "9")
    assert rc == 0, (report, err)
    (r,) = report["rounds"]
    assert r["old_master"] == before and r["new_master"] not in (None, before)
    assert r["stale_orders_accepted_by"] == [] == r["stale_orders_unanswered"] and r["replicas_agree"]


def test_drill_run_on_the_master_hands_over_first_then_deposes_the_new_master(drill3):
    master = drill3.master()
    rc, report, err = run_drill(drill3[master], "--mode", "freeze", "--freeze-seconds", "9")
    assert rc == 0, (report, err)
    assert "handing over to another candidate first" in err
    (r,) = report["rounds"]
    assert r["old_master"] != master and r["new_master"] != r["old_master"]
