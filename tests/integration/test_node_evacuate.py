"""`corral node drain|undrain|evacuate` on three real agents with real TCG guests (`mirror` template).

The guest (corral.seq=1) prints an increasing number every 100 ms, so "it was
migrated, not restarted" shows as its count going on in the new node's console
log without a second boot.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import AgentNode, Cluster, guest_cluster, wait_for

pytestmark = pytest.mark.integration

SEQ = re.compile(r"CORRAL-GUEST-SEQ n=(\d+)")
SEQ_START = re.compile(r"CORRAL-GUEST-SEQ-START last=(\d+)")
GUEST = ("--os", "busybox-guest", "--disk", "64M", "--memory", "128M")


def numbers(node: AgentNode, name: str) -> list[int]:
    path = node.root / "log" / "console" / f"{name}.console.log"
    return [int(n) for n in SEQ.findall(path.read_text(errors="replace"))] if path.exists() else []


def in_sync(node: AgentNode, name: str) -> bool:
    replication = node.json("instance", "info", name)["replication"]
    return replication["summary"] == "in sync" and replication["in_sync"]


def flags(node: AgentNode, name: str) -> dict:
    return next(r for r in node.json("node", "list") if r["name"] == name)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, guest_dir: Path):
    with guest_cluster(tmp_path_factory.mktemp("evacuate"), 3, guest_dir, "quiet corral.seq=1") as cluster:
        yield cluster


def test_drain_and_undrain_say_what_they_did_and_show_in_node_list(cluster: Cluster) -> None:
    n1 = cluster["n1"]
    assert "node 'n3' drained: no new instances" in n1.ok("node", "drain", "n3")
    assert "node 'n3' was already drained; nothing changed" in n1.ok("node", "drain", "n3")
    assert flags(n1, "n3")["drained"] is True
    assert "node 'n3' undrained" in n1.ok("node", "undrain", "n3")
    assert "node 'n3' was not drained; nothing changed" in n1.ok("node", "undrain", "n3")
    assert flags(n1, "n3")["drained"] is False
    unknown = n1.corral("node", "drain", "n9")
    assert unknown.returncode == 2 and "no node named 'n9'" in unknown.stderr


@pytest.mark.timeout(480)  # its waits (210 s) plus the evacuation's migration, move and two copies
def test_evacuation_refuses_a_running_file_instance_then_empties_the_node_keeping_the_guest_running(
        cluster: Cluster) -> None:
    n1, n2, n3 = (cluster[n] for n in ("n1", "n2", "n3"))
    adds = [n1.ok("instance", "add", name, *GUEST, *where, "--submit").strip() for name, where in (
        ("m1", ("--disk-template", "mirror", "--node", "n2:n3")),
        ("k1", ("--disk-template", "mirror", "--node", "n1:n2")), ("f1", ("--node", "n2")))]
    for job in adds:  # the three run side by side
        n1.ok("job", "watch", job)

    # Refused up front: nothing drained, no job.
    jobs = len(n1.json("job", "list"))
    refused = n1.corral("node", "evacuate", "n2")
    assert refused.returncode == 2, refused.stdout
    assert "instance 'f1' on node 'n2': not replicated and running" in refused.stderr
    assert "`corral instance stop f1`" in refused.stderr and "nothing was changed" in refused.stderr
    assert len(n1.json("job", "list")) == jobs and flags(n1, "n2")["drained"] is False

    n1.ok("instance", "stop", "f1")
    wait_for(lambda: in_sync(n1, "m1") and in_sync(n1, "k1"), 90, "the disks of m1 and k1 to be in sync")
    plan = n1.ok("node", "evacuate", "n2", "--dry-run")
    assert "would take 4 step(s)" in plan and "dry run: nothing was changed" in plan, plan
    assert [line.split(". ", 1)[1] for line in plan.splitlines() if re.match(r"\s+\d+\. ", line)] == [
        "live-migrate instance 'm1' from node 'n2' to its secondary node 'n3'",
        "move stopped instance 'f1' with its disks from node 'n2' to node 'n1'",
        "replace the secondary of instance 'k1': node 'n2' by node 'n3'",
        "replace the secondary of instance 'm1': node 'n2' by node 'n1'"]
    assert flags(n1, "n2")["drained"] is False

    counted_on_n2 = max(wait_for(lambda: numbers(n2, "m1")[4:], 60, "the guest m1 to count on n2"))
    out = n1.ok("node", "evacuate", "n2")
    for step in ("step 1 of 4: live-migrate instance 'm1'", "step 2 of 4: move stopped instance 'f1'",
                 "step 4 of 4: replace the secondary of instance 'm1'", "node 'n2' is empty"):
        assert step in out, out

    instances = n1.json("instance", "list")
    assert not [i["name"] for i in instances if "n2" in (i["primary_node"], i["secondary_node"])]
    m1 = next(i for i in instances if i["name"] == "m1")
    assert (m1["primary_node"], m1["secondary_node"], m1["status"]) == ("n3", "n1", "running")
    on_n3 = wait_for(lambda: numbers(n3, "m1")[1:], 30, "the guest m1 to count on n3")
    assert min(on_n3) > counted_on_n2, f"m1 counted {counted_on_n2} on n2, then {on_n3[:3]}... on n3"
    assert not SEQ_START.search((n3.root / "log" / "console" / "m1.console.log").read_text(errors="replace")), \
        "m1 booted again on n3 instead of migrating"
    row = flags(n1, "n2")
    assert (row["drained"], row["primary_instances"], row["secondary_instances"]) == (True, 0, 0)
    n2.wait_fresh_report()
    assert n1.json("node", "info", "n2")["volumes"] == []

    n1.ok("node", "undrain", "n2")
    assert flags(n1, "n2")["drained"] is False
