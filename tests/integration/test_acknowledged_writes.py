"""No acknowledged write is lost: cut the secondary, then lose the primary, at several delays.

Three real agents, the guest (corral.seq=1) writing a number every 100 ms
and printing it once synced. The secondary's copy is cut while the guest
writes (its disk export killed, the secondary node frozen whole, or the
primary's NBD connection yanked); `delay_s` later the primary node is lost
(every process killed, or frozen whole). Either the master refuses to fail
over (the copy was recorded out of date in time, and an event says so) or
the guest boots on the secondary from a copy holding at least the last
number it printed. Never fewer. The node leases last 12 s here.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest
from conftest import AgentNode, Cluster, is_gone, wait_for
from test_mirror_template import SEQ_START, console, numbers, wait_in_sync
from test_node_failure import freeze_all, guarded_by, power_off, runs_on, writing_mirror_cluster

from kvm.qmp import Qmp

pytestmark = pytest.mark.integration

DECIDED_BOUND_S = 90  # lease expiry (12 s) + the failover job, or the refusal, on a loaded machine


def export_pids(node: AgentNode) -> list[int]:
    pids = []
    for pidfile in (node.root / "run" / "replication").glob("*.pid"):
        try:
            pid = int(pidfile.read_text().strip())
        except (OSError, ValueError):
            continue
        if not is_gone(pid):
            pids.append(pid)
    return pids


def yank(node: AgentNode, name: str) -> None:
    async def go() -> None:
        async with await Qmp.connect(str(node.root / "run" / "instances" / name / "qmp.sock"), 10) as qmp:
            await qmp.execute("yank", {"instances": [{"type": "block-node", "node-name": "mirror-target0"}]})
    asyncio.run(go())


def boots_seen(node: AgentNode, name: str) -> list[int]:
    """The last number the guest found on its disk, at each boot on `node` (its console log persists)."""
    return [int(n) for n in SEQ_START.findall(console(node, name))]


def refused_for_sync(asked: AgentNode, name: str, since: float) -> bool:
    return any(e["kind"] == "refuse" and "in sync" in e["message"] and e.get("time", since) >= since - 5
               for e in asked.json("events", "--instance", name))


@pytest.fixture(scope="module")
def ack_cluster(tmp_path_factory, guest_dir: Path):
    with writing_mirror_cluster(tmp_path_factory.mktemp("ack"), guest_dir, "127.0.4", "a1") as cluster:
        yield cluster


# (how the secondary is cut, seconds until the primary is lost, how the primary is lost)
CASES = [("export-killed", 0.0, "kill"), ("yanked", 0.5, "freeze"), ("secondary-frozen", 2.0, "kill"),
         ("export-killed", 5.0, "freeze"), ("yanked", 15.0, "kill")]


@pytest.mark.parametrize("cut,delay_s,loss", CASES, ids=[f"{c}-{d:g}s-{lo}" for c, d, lo in CASES])
@pytest.mark.timeout(900)  # its bounded waits add up to 800 s
def test_a_failover_after_a_cut_secondary_never_loses_an_acknowledged_write(
        ack_cluster: Cluster, cut: str, delay_s: float, loss: str) -> None:
    n1 = ack_cluster["n1"]
    wait_for(lambda: n1.instance("a1")["status"] == "running", 120, "a1 to run")
    wait_in_sync(n1, "a1", timeout_s=120)
    row = n1.instance("a1")
    primary, secondary = ack_cluster[row["primary_node"]], ack_cluster[row["secondary_node"]]
    wait_for(lambda: guarded_by(primary, n1, "a1"), 30, f"{primary.name} to report that it guards a1")
    wait_for(lambda: numbers(console(primary, "a1")), 60, "the guest to write")
    booted_before = len(boots_seen(secondary, "a1"))
    began = time.time()
    frozen_secondary: list[int] = []
    if cut == "export-killed":
        for pid in export_pids(secondary):
            os.kill(pid, signal.SIGKILL)
    elif cut == "yanked":
        yank(primary, "a1")
    else:
        frozen_secondary = freeze_all(secondary)
    time.sleep(delay_s)
    last = numbers(console(primary, "a1"))[-1]
    frozen_primary: list[int] = []
    if loss == "kill":
        power_off(primary)
    else:
        frozen_primary = freeze_all(primary)
    last = max([last] + numbers(console(primary, "a1")))  # anything printed before it was gone
    try:
        if frozen_secondary:
            time.sleep(3)
            secondary.thaw(frozen_secondary)  # two of three nodes gone would leave etcd without quorum
        wait_for(lambda: runs_on(n1, "a1") == secondary.name or refused_for_sync(n1, "a1", began),
                 DECIDED_BOUND_S, "the master to fail a1 over or to refuse for an out-of-date copy")
        if runs_on(n1, "a1") == secondary.name:
            found = wait_for(lambda: boots_seen(secondary, "a1")[booted_before:], 60,
                             f"a1 to boot on {secondary.name}")[0]
            assert found >= last, f"a1 lost acknowledged writes: the console showed {last}, the copy had {found}"
    finally:
        if frozen_primary:
            primary.thaw(frozen_primary)
    if loss == "kill":
        primary.start()
    primary.wait_fresh_report(60)
    # Whichever way it went, the cluster heals: a1 runs (on its old node after a refusal) and resyncs.
    wait_for(lambda: n1.instance("a1")["status"] == "running", 120, "a1 to run again")
    wait_in_sync(n1, "a1", timeout_s=120)


@pytest.mark.timeout(660)  # its bounded waits add up to 570 s
def test_a_copy_that_hangs_while_its_node_is_fine_is_cut_outdated_and_the_guest_goes_on(ack_cluster: Cluster) -> None:
    """Only the secondary's export hangs (its node reports and holds its lease): the primary's guard sees
    guest writes waiting, cuts the connection, has the copy outdated and resumes the guest."""
    n1 = ack_cluster["n1"]
    wait_for(lambda: n1.instance("a1")["status"] == "running", 120, "a1 to run")
    wait_in_sync(n1, "a1", timeout_s=120)
    row = n1.instance("a1")
    primary, secondary = ack_cluster[row["primary_node"]], ack_cluster[row["secondary_node"]]
    began = time.time()
    exports = export_pids(secondary)
    for pid in exports:
        os.kill(pid, signal.SIGSTOP)
    try:
        before = numbers(console(primary, "a1"))[-1]
        wait_for(lambda: not n1.json("instance", "info", "a1")["replication"]["in_sync"], 60,
                 "the copy of a1 to be recorded out of date")
        wait_for(lambda: numbers(console(primary, "a1"))[-1] > before + 5, 60, "the guest to go on writing")
        # The master soon starts a new copy toward the stopped export: QEMU would hang on it (and the guest
        # with it) if the primary let it connect to an export that accepts but never answers.
        wait_for(lambda: any("does not greet" in node.log_tail(400) for node in ack_cluster.alive()), 60,
                 "the master's next copy to be refused for an export that does not greet")
        going = numbers(console(primary, "a1"))[-1]
        wait_for(lambda: numbers(console(primary, "a1"))[-1] > going + 5, 30, "the guest to keep writing")
        info = n1.json("instance", "info", "a1")["replication"]
        last = info["last_degraded"]
        assert last and last["at"] >= began - 1, info
        assert "not in sync" in info["record"], info
    finally:
        for pid in exports:
            if not is_gone(pid):
                os.kill(pid, signal.SIGCONT)
    assert n1.instance("a1")["primary_node"] == primary.name
    wait_in_sync(n1, "a1", timeout_s=120)
