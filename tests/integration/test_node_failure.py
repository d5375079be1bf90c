"""Node failures on three real agents with real QEMU guests: fenced failover, frozen nodes, total power loss.

The guest (corral.seq=1) writes an increasing number to its disk and prints
it once synced; after a failover the guest boots from its secondary's copy
and prints the last number it finds, which must be at least the last one
the console showed. Node leases last 12 s here (tests/integration/conftest.py).
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import AgentNode, Cluster, is_gone, wait_for
from netns_support import Switch
from test_mirror_template import SEQ_START, console, numbers, wait_in_sync

pytestmark = pytest.mark.integration

FAILOVER_BOUND_S = 60  # lease (12 s) + the failover job, with room for a loaded CI machine


def runs_on(node: AgentNode, name: str) -> str | None:
    """Where the cluster (asked via `node`) sees the instance running, if it does."""
    row = node.instance(name)
    return row["primary_node"] if row["status"] == "running" else None


def qemu_pid(node: AgentNode, name: str) -> int | None:
    pidfile = node.root / "run" / "instances" / name / "qemu.pid"
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
    return None if is_gone(pid) else pid


def primary_and_secondary(cluster: Cluster, name: str) -> tuple[AgentNode, AgentNode]:
    """The nodes of a replicated instance as the cluster records them now."""
    row = cluster["n1"].instance(name)
    return cluster[row["primary_node"]], cluster[row["secondary_node"]]


def power_off(node: AgentNode) -> None:
    node.kill9()  # etcd and serf follow their parent (parent-death signal)
    node.kill_qemus()


def freeze_all(node: AgentNode) -> list[int]:
    """SIGSTOP every process of the node: agent, etcd, serf, fence keeper, QEMUs, disk exports."""
    pids = node.freeze()
    for pid in node.qemu_pids():
        if not is_gone(pid):
            os.kill(pid, signal.SIGSTOP)
            pids.append(pid)
    return pids


def guarded_by(node: AgentNode, asked: AgentNode, name: str) -> bool:
    fencing = asked.json("node", "info", node.name).get("fencing") or {}
    return fencing.get("armed") and name in fencing.get("guarded", [])


def last_acknowledged(node: AgentNode, name: str) -> int:
    return wait_for(lambda: numbers(console(node, name)), 60, f"the guest of {name} to write on {node.name}")[-1]


def boots_seen(node: AgentNode, name: str) -> int:
    """How many boots the guest's console log on `node` holds (QEMU appends to it across runs)."""
    return len(SEQ_START.findall(console(node, name)))


def assert_resumed_from(node: AgentNode, name: str, last: int, booted_before: int, timeout_s: float = 60) -> None:
    """The guest's next boot on `node` (after `booted_before` earlier ones) found a copy holding at least
    `last`, the last write it saw acknowledged."""
    found = wait_for(lambda: [int(n) for n in SEQ_START.findall(console(node, name))][booted_before:], timeout_s,
                     f"the guest of {name} to boot on {node.name}")
    assert found[0] >= last, f"{name} lost acknowledged writes: the console showed {last}, the copy had {found[0]}"


@contextmanager
def writing_mirror_cluster(root: Path, guest_dir: Path, subnet: str, name: str,
                           switch: Switch | None = None) -> Iterator[Cluster]:
    """Three agents, auto-failover on, and `name`: a mirror instance on n2 (secondary n3) whose guest
    writes its sequence (corral.seq=1). With `switch`, each agent in a network namespace on it."""
    cluster = Cluster(root, 3, subnet=subnet, switch=switch)
    try:
        cluster.form(f"accel=tcg,kernel_path={guest_dir}/vmlinuz,initrd_path={guest_dir}/initrd.img,"
                     "kernel_args=quiet corral.seq=1,shutdown_timeout_s=10", 3)
        cluster.wait_candidates(3)
        n1 = cluster["n1"]
        n1.ok("cluster", "modify", "--auto-failover", "yes")
        n1.ok("instance", "add", name, "--os", "busybox-guest", "--disk-template", "mirror", "--node", "n2:n3",
              "--disk", "64M", "--memory", "128M")
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def fo_cluster(tmp_path_factory, guest_dir: Path):
    with writing_mirror_cluster(tmp_path_factory.mktemp("failover"), guest_dir, "127.0.2", "f1") as cluster:
        cluster["n1"].ok("instance", "add", "p1", "--os", "busybox-guest", "--node", "n3", "--disk", "64M",
                         "--memory", "96M")
        yield cluster


@pytest.mark.timeout(560)  # its bounded waits add up to 480 s
def test_a_killed_node_s_auto_failover_instance_runs_on_its_secondary_with_every_acknowledged_write(
        fo_cluster: Cluster) -> None:
    n1, n2, n3 = (fo_cluster[n] for n in ("n1", "n2", "n3"))
    assert fo_cluster.master() == "n1"
    wait_in_sync(n1, "f1")
    wait_for(lambda: guarded_by(n2, n1, "f1"), 30, "n2 to report that it guards f1")
    n3.ok("cluster", "fencing", "disarm")
    assert "DISARMED" in n3.ok("cluster", "info")
    wait_for(lambda: not guarded_by(n2, n1, "f1"), 30, "n2 to report that it no longer fences")
    assert any("disarmed" in f["message"] for f in n1.json("cluster", "verify"))
    plan = n1.json("cluster", "simulate", "--fail", "n2")
    assert plan["failovers"] == [], "nothing fails over while fencing is disarmed"
    n3.ok("cluster", "fencing", "arm")
    wait_for(lambda: guarded_by(n2, n1, "f1"), 30, "n2 to report that it guards f1 again")
    plan = n1.json("cluster", "simulate", "--fail", "n2")
    assert plan["failovers"] == [{"instance": "f1", "from": "n2", "to": "n3"}], plan
    assert any(e["kind"] == "stays-down" for e in n1.json("cluster", "simulate", "--fail", "n3")["events"])
    before = boots_seen(n3, "f1")
    last = last_acknowledged(n2, "f1")
    power_off(n2)
    last = max([last] + numbers(console(n2, "f1")))
    wait_for(lambda: runs_on(n1, "f1") == "n3", FAILOVER_BOUND_S, "f1 to run on n3")
    assert_resumed_from(n3, "f1", last, before)
    events = n1.json("events", "--instance", "f1")
    assert any(e["kind"] == "fail-over" and "lease expired" in e["message"] for e in events), events
    assert runs_on(n1, "p1") == "n3", "the unreplicated instance elsewhere was not disturbed"
    n2.start()  # the node comes back: it becomes f1's secondary and resyncs
    wait_in_sync(n1, "f1", timeout_s=120)
    assert n1.instance("f1")["secondary_node"] == "n2"


@pytest.mark.timeout(360)  # its bounded waits add up to 280 s
def test_a_frozen_agent_s_fence_keeper_stops_the_instance_which_then_runs_elsewhere_and_not_again_there(
        fo_cluster: Cluster) -> None:
    n1 = fo_cluster["n1"]
    wait_in_sync(n1, "f1", timeout_s=120)
    primary, secondary = primary_and_secondary(fo_cluster, "f1")  # n3 and n2 after the test above
    wait_for(lambda: guarded_by(primary, n1, "f1"), 30, f"{primary.name} to report that it guards f1")
    old = qemu_pid(primary, "f1")
    assert old is not None
    frozen = primary.freeze()  # agent, etcd, serf: not the fence keeper, not QEMU
    try:
        wait_for(lambda: is_gone(old), 30, "the fence keeper to stop f1's QEMU on the frozen node")
        wait_for(lambda: runs_on(n1, "f1") == secondary.name, FAILOVER_BOUND_S, f"f1 to run on {secondary.name}")
    finally:
        primary.thaw(frozen)
    primary.wait_fresh_report()
    time.sleep(3)  # a few more reports: the woken agent must not start f1 again
    assert qemu_pid(primary, "f1") is None
    assert runs_on(n1, "f1") == secondary.name
    assert "killed the QEMU of instance 'f1'" in (primary.root / "log" / "fence-keeper.log").read_text()


@pytest.mark.timeout(450)  # its bounded waits add up to 370 s
def test_a_whole_frozen_node_s_qemu_is_stopped_as_soon_as_it_resumes(fo_cluster: Cluster) -> None:
    n1 = fo_cluster["n1"]
    wait_in_sync(n1, "f1", timeout_s=120)
    primary, secondary = primary_and_secondary(fo_cluster, "f1")  # n2 and n3 after the tests above
    wait_for(lambda: guarded_by(primary, n1, "f1"), 30, f"{primary.name} to report that it guards f1")
    old = qemu_pid(primary, "f1")
    assert old is not None
    before = boots_seen(secondary, "f1")
    last = last_acknowledged(primary, "f1")
    frozen = freeze_all(primary)
    last = max([last] + numbers(console(primary, "f1")))
    try:
        wait_for(lambda: runs_on(n1, "f1") == secondary.name, FAILOVER_BOUND_S, f"f1 to run on {secondary.name}")
        assert_resumed_from(secondary, "f1", last, before)
        assert not list((secondary.root / "run" / "replication").glob("*.pid")), \
            f"{secondary.name}'s copy is still exported: the frozen QEMU could reach the new primary's disk"
    finally:
        primary.thaw(frozen)
    wait_for(lambda: is_gone(old), 5, f"the resumed QEMU on {primary.name} to be stopped at once")
    before = numbers(console(secondary, "f1"))[-1]
    wait_for(lambda: numbers(console(secondary, "f1"))[-1] > before, 30,
             "the guest on the new primary to go on writing")


@pytest.mark.timeout(510)  # its bounded waits add up to 450 s
def test_the_node_loss_drill_cuts_a_node_off_and_reports_its_instance_recovered_elsewhere(
        fo_cluster: Cluster) -> None:
    n1 = fo_cluster["n1"]
    wait_in_sync(n1, "f1", timeout_s=120)
    row = n1.instance("f1")
    primary, secondary = row["primary_node"], row["secondary_node"]
    observer = fo_cluster[secondary]
    wait_for(lambda: guarded_by(fo_cluster[primary], observer, "f1"), 30, f"{primary} to report that it guards f1")
    result = observer.corral("drill", "node-loss", primary, "--mode", "isolate", "--duration", "30", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert [(i["name"], i["from"], i["to"]) for i in report["instances"]] == [("f1", primary, secondary)]
    assert 0 < report["lease_expired_s"] <= report["instances"][0]["recovered_s"]
    assert report["double_run"] == [] and report["rejoined"] and report["passed"]
    assert runs_on(n1, "f1") == secondary


@pytest.mark.timeout(330)  # its bounded waits add up to 270 s
def test_after_every_agent_and_qemu_died_every_instance_marked_up_runs_again(fo_cluster: Cluster) -> None:
    n1 = fo_cluster["n1"]
    for node in fo_cluster.nodes:
        power_off(node)
    for node in fo_cluster.nodes:
        node.start()
    try:
        wait_for(lambda: {i["name"]: i["status"] for i in n1.json("instance", "list")} == {"f1": "running",
                                                                                         "p1": "running"},
                 180, "every instance marked up to run again")
    except AssertionError:
        for what in (("instance", "list"), ("node", "list"), ("job", "list"), ("events",)):
            print(n1.corral(*what).stdout)
        raise
