"""`corral cluster balance` on three real agents with real TCG guests (`mirror` template), and Ganeti's own RAPI
client migrating an instance there and back, asked of a node that is not the master.

The cluster starts piled up: every instance has n1 as primary and n2 as secondary, n3 holds nothing. The
balance job must move instances with live migrations and new secondaries, keep every guest running, and end
at a better score (hbal's, as Debian's hbal reads the exported cluster) with no node failing N+1.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from conftest import AgentNode, Cluster, guest_cluster, in_sync, pile_up, wait_for
from ganeti_data import htool, unavailable

from hostagent.master.decide import htools
from hostagent.master.decide.htools_score import score_terms

pytestmark = pytest.mark.integration

CLIENT = Path("/usr/lib/python3/dist-packages/ganeti/rapi/client.py")
GUEST = ("--os", "busybox-guest", "--disk", "64M", "--memory", "128M")
MIGRATE = """
import json, sys
from ganeti.rapi import client
host, port, user, password, ca, name, node = sys.argv[1:8]
c = client.GanetiRapiClient(host, int(port), user, password, curl_config_fn=client.GenericCurlConfig(cafile=ca))
job = c.MigrateNode(node) if node else c.MigrateInstance(name)  # a node's: one job that submits one per instance
ok = c.WaitForJobCompletion(job, period=1, retries=120)
status = c.GetJobStatus(job)
for accepted, sub in (status["opresult"][0]["jobs"] if node else []):
    ok = ok and accepted and c.WaitForJobCompletion(sub, period=1, retries=120)
print(json.dumps([isinstance(job, int), ok, status["status"], c.GetInstance(name)["pnode"]]))
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, guest_dir: Path):
    with guest_cluster(tmp_path_factory.mktemp("balance"), 3, guest_dir, "quiet") as cluster:
        yield cluster


def exported(node: AgentNode, path: Path) -> htools.HtoolsCluster:
    node.ok("cluster", "export-htools", "-o", str(path))
    return htools.read_text(path.read_text())


def test_ganetis_client_migrates_there_and_back_and_the_balancer_evens_out_a_piled_up_cluster(
        cluster: Cluster, tmp_path: Path) -> None:
    if not CLIENT.exists():
        unavailable("python3-ganeti-rapi is not installed")
    n1, n2 = cluster["n1"], cluster["n2"]
    names = ["b1", "b2", "b3"]
    pile_up(n1, names, *GUEST)

    writer = n1.json("user", "add", "balancer", "--role", "write")["token"].partition(".")[2]
    for where, node in (("n2", ""), ("n1", "n2")):  # there (the instance), back (its node's primaries)
        done = subprocess.run(["/usr/bin/python3", "-c", MIGRATE, n2.address, str(n2.ports["rapi"]), "balancer",
                               writer, str(n2.root / "state" / "pki" / "ca.crt"), "b1", node], capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == [True, True, "success", where], done.stdout
        wait_for(lambda: in_sync(n1, names), 120, "b1's copy to be in sync again")

    before = exported(n1, tmp_path / "before.data")
    jobs = len(n1.json("job", "list"))
    plan = n1.ok("cluster", "balance", "--dry-run")
    assert "dry run: nothing was changed" in plan and len(n1.json("job", "list")) == jobs, plan
    initial = float(re.search(r"Initial score: (\S+)", plan)[1])
    planned = float(re.search(r"Final score: (\S+)", plan)[1])
    assert planned < initial, plan

    out = n1.ok("cluster", "balance")
    assert "the cluster is balanced" in out and "step 1 of " in out, out
    rows = {r["name"]: r for r in n1.json("instance", "list")}
    assert {r["status"] for r in rows.values()} == {"running"}, rows
    assert any("n3" in (r["primary_node"], r["secondary_node"]) for r in rows.values()), rows
    wait_for(lambda: in_sync(n1, names), 180, "every copy to be in sync after the balance")

    after = exported(n1, tmp_path / "after.data")
    terms = dict((name, value) for name, _, value in score_terms(after))
    assert sum(w * v for _, w, v in score_terms(after)) < sum(w * v for _, w, v in score_terms(before))
    assert terms["n1_cnt"] == 0, f"a node fails N+1 after the balance: {terms}"
    checked = subprocess.run([htool("hbal"), "-t", str(tmp_path / "after.data")], capture_output=True, text=True,
                             timeout=60)
    assert checked.returncode == 0 and "Initial check done: 0 bad nodes, 0 bad instances" in checked.stdout, \
        checked.stdout + checked.stderr  # hbal's own N+1 and policy check of the balanced cluster


def test_capacity_is_hspaces_answer_on_the_same_cluster(cluster: Cluster, tmp_path: Path) -> None:
    """Debian's hspace and `corral cluster capacity` on the same exported cluster give the same count and reason;
    asked live, Corral answers for the cluster as it is now."""
    n1 = cluster["n1"]
    path = tmp_path / "now.data"
    n1.ok("cluster", "export-htools", "-o", str(path))
    ours = json.loads(n1.ok("cluster", "capacity", "--from-htools", str(path), "--spec", "memory=4G,disk=1G,vcpus=1",
                            "--disk-template", "drbd", "--json"))
    out = subprocess.run([htool("hspace"), "-t", str(path), "--standard-alloc=1024,4096,1", "--disk-template=drbd",
                          "--machine-readable"], capture_output=True, text=True, timeout=120).stdout
    count, reason = re.search(r"HTS_ALLOC_INSTANCES=(\d+)", out), re.search(r"HTS_ALLOC_FAIL_REASON=(\S+)", out)
    assert count and reason, out
    assert (ours["instances"], ours["reason"].upper()) == (int(count[1]), reason[1]), (ours, out)
    live = n1.json("cluster", "capacity", "--spec", "memory=4G,disk=1G,vcpus=1")
    assert live["disk_template"] == "drbd" and live["instances"] > 0 and live["runs_out"], live
    assert set(live["primaries"]) <= {"n1", "n2", "n3"}
    refused = n1.corral("cluster", "capacity", "--spec", "memory=4G,disk=1G,vcpus=1", "--disk-template", "lvm")
    assert refused.returncode == 2 and "disk_template 'lvm'" in refused.stderr, refused
