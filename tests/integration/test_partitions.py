"""Real network partitions: three agents in network namespaces on a bridge, one node's port cut.

Nothing tells the agents: the test sets the node's bridge port down
(tests/integration/netns_support.py) and up again later. The cut node
keeps running and answers its local CLI through its unix socket; it just
reaches nobody. Node leases last 12 s, master leases 5 s here
(tests/integration/conftest.py). The tests share one cluster; in file
order the primary of `s1` (n2) is cut first, then the master (n1), then a
node on its own (n1 again, no longer master and hosting nothing). Each also
passes alone.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest
from conftest import AgentNode, Cluster, wait_for
from netns_support import Switch, network
from test_mirror_template import console, numbers, wait_in_sync
from test_node_failure import (FAILOVER_BOUND_S, assert_resumed_from, boots_seen, guarded_by, last_acknowledged,
                               qemu_pid, runs_on, writing_mirror_cluster)

from cli.client import AgentClient, AgentUnreachable, ApiError
from election.lease import FencingToken

pytestmark = pytest.mark.integration

POLL_S = 0.3


@pytest.fixture(scope="module")
def split(tmp_path_factory, guest_dir: Path) -> Iterator[tuple[Switch, Cluster]]:
    with network() as switch, writing_mirror_cluster(tmp_path_factory.mktemp("partitions"), guest_dir,
                                                     switch.subnet, "s1", switch=switch) as cluster:
        yield switch, cluster


def local(node: AgentNode) -> AgentClient:
    """The node's own agent, through its unix socket: reachable whether or not the node is cut off."""
    return AgentClient(node.socket, timeout_s=10)


def qemus_said(node: AgentNode) -> set[str] | None:
    """The instances whose QEMU the node's agent says it runs right now (None: no answer)."""
    try:
        return set(local(node).get(f"/v1/drill/qemus?node={node.name}")["data"]["qemus"])
    except (ApiError, AgentUnreachable):
        return None


def qemus_seen(cluster: Cluster, name: str) -> set[str]:
    """The nodes on which a QEMU of instance `name` exists, from the process table (the ground truth)."""
    pidfiles = {f"{node.root}/run/instances/{name}/qemu.pid": node.name for node in cluster.nodes}
    found = set()
    for proc in psutil.process_iter(["cmdline"]):
        argv = proc.info["cmdline"] or []
        if argv and argv[0].endswith("qemu-system-x86_64"):
            found |= {node for pidfile, node in pidfiles.items() if pidfile in argv}
    return found


def raft_term(node: AgentNode) -> int:
    """The Raft term of the node's etcd member, asked inside its namespace with the node's certificate."""
    pki = node.root / "state" / "pki"
    status = subprocess.run(
        ["ip", "netns", "exec", str(node.netns), "etcdctl", f"--endpoints=https://{node.address}:{node.ports['etcd_client']}",
         f"--cacert={pki}/ca.crt", f"--cert={pki}/node.crt", f"--key={pki}/node.key", "endpoint", "status", "-w", "json"],
        capture_output=True, text=True, timeout=10, check=True).stdout
    return int(json.loads(status)[0]["Status"]["header"]["raft_term"])


class Witness:
    """Polls, until stopped, where instance `name` runs: every node's agent is asked directly, and the
    process table is read. `double` keeps every poll that found it on more than one node."""

    def __init__(self, cluster: Cluster, name: str) -> None:
        self.cluster, self.name = cluster, name
        self.polls = 0
        self.double: list[str] = []
        self.unanswered: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            said = {node.name: qemus_said(node) for node in self.cluster.nodes}
            self.unanswered |= {node for node, qemus in said.items() if qemus is None}
            by_agents = {node for node, qemus in said.items() if qemus and self.name in qemus}
            by_processes = qemus_seen(self.cluster, self.name)
            if len(by_agents) > 1 or len(by_processes) > 1:
                self.double.append(f"{time.strftime('%H:%M:%S')}: agents say {sorted(by_agents)}, "
                                   f"processes {sorted(by_processes)}")
            self.polls += 1
            self._stop.wait(POLL_S)

    @contextmanager
    def watching(self) -> Iterator[Witness]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join(timeout=30)


@pytest.mark.timeout(480)  # its bounded waits add up to 420 s
def test_a_cut_off_primary_fences_itself_and_its_instance_runs_once_on_the_secondary(
        split: tuple[Switch, Cluster]) -> None:
    switch, cluster = split
    n1 = cluster["n1"]
    wait_in_sync(n1, "s1", timeout_s=120)
    row = n1.instance("s1")
    primary, secondary = cluster[row["primary_node"]], cluster[row["secondary_node"]]
    assert (primary.name, cluster.master()) == ("n2", "n1")
    wait_for(lambda: guarded_by(primary, n1, "s1"), 30, f"{primary.name} to report that it guards s1")
    old = qemu_pid(primary, "s1")
    assert old is not None
    before = boots_seen(secondary, "s1")
    last = last_acknowledged(primary, "s1")
    with Witness(cluster, "s1").watching() as witness:
        with switch.cut_off(primary.name):
            wait_for(lambda: qemu_pid(primary, "s1") is None, 30, "the cut-off primary to stop s1 itself")
            last = max([last] + numbers(console(primary, "s1")))
            wait_for(lambda: runs_on(n1, "s1") == secondary.name, FAILOVER_BOUND_S, f"s1 to run on {secondary.name}")
            assert_resumed_from(secondary, "s1", last, before)
        primary.wait_fresh_report(60)  # healed: its agent reaches etcd again
        time.sleep(3)  # a few more reports: it must not start s1 again
    assert witness.double == [], witness.double
    assert witness.polls > 20 and not witness.unanswered, (witness.polls, witness.unanswered)
    assert qemu_pid(primary, "s1") is None and qemus_said(primary) == set()
    assert runs_on(n1, "s1") == secondary.name
    events = n1.json("events", "--instance", "s1")
    assert any(e["kind"] == "fail-over" and "lease expired" in e["message"] for e in events), events


def test_a_cut_off_master_loses_the_role_and_its_orders_are_refused_after_healing(
        split: tuple[Switch, Cluster]) -> None:
    switch, cluster = split
    old_master, majority = cluster["n1"], [cluster["n2"], cluster["n3"]]
    info = old_master.json("cluster", "info")
    assert info["this_node_is_master"] and info["master"] == "n1"
    old_token = FencingToken.from_str(info["token"])

    def new_master() -> dict | None:  # asked of each agent's role, not of a replica that may lag
        return next((i for i in (n.json("cluster", "info") for n in majority) if i["this_node_is_master"]), None)

    with switch.cut_off(old_master.name):
        new = wait_for(new_master, 30, "the majority side to elect a new master")
        assert FencingToken.from_str(new["token"]) > old_token, (new["token"], old_token)
        wait_for(lambda: not old_master.json("cluster", "info")["this_node_is_master"], 15,
                 "the cut-off master to give up the role")
    old_master.wait_fresh_report(60)
    answers = local(old_master).post("/v1/drill/stale-order", {"token": old_token.to_str()})["data"]
    assert sorted(a["node"] for a in answers) == ["n1", "n2", "n3"]
    assert all(a["refused"] and not a["accepted"] for a in answers), answers
    assert old_master.json("cluster", "info")["master"] == new["this_node"]


def test_a_cut_off_node_s_cli_refuses_changes_for_want_of_quorum_and_still_reads(
        split: tuple[Switch, Cluster]) -> None:
    switch, cluster = split
    alone = cluster["n1"]  # hosts nothing; no longer master after the test above, or handed over here
    if cluster.master() == "n1":
        alone.ok("cluster", "master-failover", "--to", "n3")
    assert cluster.master() != "n1" and not alone.json("node", "info", "n1")["instances"]
    with switch.cut_off(alone.name):
        # At once, its etcd member still believes in its leader: this change leaves for the master and is
        # lost on the way. The CLI must not call it refused: TCP may yet deliver it once the network heals.
        in_flight = alone.corral("user", "add", "in-flight", "--role", "read")
        assert in_flight.returncode != 0 and "no quorum" in in_flight.stderr, in_flight.stdout + in_flight.stderr
        wait_for(lambda: not alone.json("cluster", "info")["quorum"]["ok"], 15, "the cut-off node to see no quorum")
        refused = alone.corral("user", "add", "split-brain", "--role", "read")
        assert refused.returncode != 0 and "no quorum" in refused.stderr and "refused" in refused.stderr, \
            refused.stdout + refused.stderr
        assert {i["name"] for i in alone.json("instance", "list")} == {"s1"}
        assert alone.corral("node", "list").returncode == 0
        term = raft_term(cluster["n2"])
    alone.wait_fresh_report(60)
    time.sleep(2)  # anything still on its way arrives now
    assert raft_term(cluster["n2"]) == term, "the healed node's etcd member deposed the majority's leader"
    users = {u["name"] for u in alone.json("user", "list")}
    assert "split-brain" not in users
    assert "in-flight" not in users or "may still be made" in in_flight.stderr, in_flight.stderr
