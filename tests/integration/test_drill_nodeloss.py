"""`corral drill node-loss NODE --mode kill` on three real agents, the killed one under a restart loop.

The restart loop (packaging/supervise-agent.sh, as systemd's Restart=on-failure)
brings a killed agent back within a second; the drill's hold-down must keep the
node away for the whole duration, so that its lease expires, its auto-failover
instance runs on its secondary exactly once, and the node then comes back.
The cluster and its helpers are those of test_node_failure.py (node lease 12 s).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import Cluster, wait_for
from test_mirror_template import console, numbers, wait_in_sync
from test_node_failure import (assert_resumed_from, boots_seen, guarded_by, last_acknowledged, qemu_pid, runs_on,
                               writing_mirror_cluster)

from hostagent.node import holddown

pytestmark = pytest.mark.integration

HOLD_S = 30  # longer than the node lease (12 s) plus the failover, well short of a test's patience


@pytest.fixture(scope="module")
def kd_cluster(tmp_path_factory, guest_dir: Path):
    """k1: a writing mirror instance on n2 (secondary n3); p2: a plain instance on n2. n2 runs under a
    restart loop (stopped and started again: its QEMUs and node lease outlive the agent)."""
    with writing_mirror_cluster(tmp_path_factory.mktemp("killdrill"), guest_dir, "127.0.6", "k1") as cluster:
        n1, n2 = cluster["n1"], cluster["n2"]
        n1.ok("instance", "add", "p2", "--os", "busybox-guest", "--node", "n2", "--disk", "64M", "--memory", "96M")
        n2.stop()
        n2.start(supervised=True)
        n2.wait_fresh_report()
        yield cluster


def test_a_kill_drill_shorter_than_the_node_lease_is_refused_before_anything_dies(kd_cluster: Cluster) -> None:
    n2, n3 = kd_cluster["n2"], kd_cluster["n3"]
    pid = n2.agent_pid()
    result = n3.corral("drill", "node-loss", "n2", "--mode", "kill", "--duration", "5")
    assert result.returncode == 1 and "longer than the node lease of 'n2' (12 s)" in result.stderr, result.stderr
    assert n2.agent_pid() == pid and not (n2.root / "run" / holddown.FILE_NAME).exists()


@pytest.mark.timeout(630)  # its bounded waits add up to 570 s
def test_the_kill_drill_keeps_the_node_down_for_its_duration_and_its_instance_recovers_elsewhere_once(
        kd_cluster: Cluster) -> None:
    n1, n2, n3 = (kd_cluster[n] for n in ("n1", "n2", "n3"))
    wait_in_sync(n1, "k1", timeout_s=120)
    wait_for(lambda: guarded_by(n2, n3, "k1"), 30, "n2 to report that it guards k1")
    agent_before = n2.agent_pid()
    booted_before = boots_seen(n3, "k1")
    last = last_acknowledged(n2, "k1")

    result = n3.corral("drill", "node-loss", "n2", "--mode", "kill", "--duration", str(HOLD_S), "--json")
    assert result.returncode == 0, result.stdout + result.stderr + n2.log_tail(40)
    report = json.loads(result.stdout)
    assert [(i["name"], i["from"], i["to"], i["failovers"]) for i in report["instances"]] == [("k1", "n2", "n3", 1)]
    (k1,) = report["instances"]
    assert 0 < report["went_down_s"] < report["lease_expired_s"] <= k1["recovered_s"] < HOLD_S
    assert report["answered_again_s"] >= HOLD_S - 1 and report["rejoined"], report
    (p2,) = report["others"]
    assert p2["name"] == "p2" and p2["stopped_s"] < HOLD_S <= p2["running_s"], report
    assert report["double_run"] == [] and report["failures"] == [] and report["passed"]

    # Not only the drill's word: the agent was killed and restarted, having waited out the hold.
    assert n2.agent_pid() != agent_before
    log = (n2.root / "agent.log").read_text(errors="replace")
    assert "powered off by a drill and stays down for" in log and "the hold-down is over" in log
    assert not (n2.root / "run" / holddown.FILE_NAME).exists()
    assert runs_on(n1, "k1") == "n3" and qemu_pid(n2, "k1") is None
    last = max([last] + numbers(console(n2, "k1")))  # what the guest saw acknowledged until the power cut
    assert_resumed_from(n3, "k1", last, booted_before)
    assert runs_on(n1, "p2") == "n2"
