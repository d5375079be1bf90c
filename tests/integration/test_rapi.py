"""Ganeti's Remote API v2 on a Corral agent, read by Debian's own client (`python3-ganeti-rapi`, run with the
system's Python, where Debian installs it) over HTTPS with the cluster's CA, and compared field by field (names
and JSON types) with what a real Ganeti 3.0.2 answered (tests/data/ganeti-rapi-3.0.2)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import AgentNode, wait_for
from ganeti_data import unavailable

CLIENT = Path("/usr/lib/python3/dist-packages/ganeti/rapi/client.py")
GANETI = Path(__file__).resolve().parents[1] / "data" / "ganeti-rapi-3.0.2"
pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def ganeti_client() -> None:
    if not CLIENT.exists():
        unavailable("python3-ganeti-rapi is not installed")

READ = """
import json, sys
from ganeti.rapi import client
host, port, user, password, ca = sys.argv[1:6]
c = client.GanetiRapiClient(host, int(port), user or None, password or None,
                            curl_config_fn=client.GenericCurlConfig(cafile=ca))
out = {}
try:
    out["version"] = c.GetVersion()
except client.GanetiApiError as exc:
    print(json.dumps({"refused": exc.code, "message": str(exc)}))
    sys.exit(0)
out.update(features=c.GetFeatures(), info=c.GetInfo(), os=c.GetOperatingSystems(), nodes=c.GetNodes(),
           nodes_bulk=c.GetNodes(bulk=True), instances=c.GetInstances(), instances_bulk=c.GetInstances(bulk=True),
           groups=c.GetGroups(bulk=True), instance=c.GetInstance("rp1"), node=c.GetNode("n1"),
           console=c.GetInstanceConsole("rp1"), tags=c.GetInstanceTags("rp1"), role=c.GetNodeRole("n1"),
           jobs=c.GetJobs(), job=c.GetJobStatus(c.GetJobs()[-1]))
for what, call in (("missing", lambda: c.GetInstance("nonexistent")),
                   ("shutdown", lambda: c.ShutdownInstance("rp1"))):
    try:
        call()
        out[what] = "answered"
    except client.GanetiApiError as exc:
        out[what] = exc.code
print(json.dumps(out))
"""


def rapi(node: AgentNode, user: str, password: str) -> dict[str, Any]:
    done = subprocess.run(["/usr/bin/python3", "-c", READ, node.address, str(node.ports["rapi"]), user, password,
                           str(node.root / "state" / "pki" / "ca.crt")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def same_shape(ours: dict[str, Any], theirs: dict[str, Any], what: str) -> None:
    """The same field names, and where both have a value, the same JSON type (Ganeti's ints may be our floats
    only where it has floats)."""
    assert sorted(ours) == sorted(theirs), f"{what}: fields differ: only ours {sorted(set(ours) - set(theirs))}, " \
                                           f"only Ganeti's {sorted(set(theirs) - set(ours))}"
    for key, value in theirs.items():
        if value is not None and ours[key] is not None:
            assert type(ours[key]) is type(value), f"{what}.{key}: {ours[key]!r} is not a {type(value).__name__}"


def test_ganetis_own_client_reads_a_corral_cluster_in_ganetis_shapes(one_node):
    node = one_node
    node.ok("instance", "add", "rp1", "--os", "busybox-guest", "--memory", "64M", "--disk", "64M", "--tag", "rapi")
    reader = node.json("user", "add", "rapi-reader", "--role", "read")["token"]
    try:
        got = wait_for(lambda: (r := rapi(node, "rapi-reader", reader.partition(".")[2]))["instance"]["status"]
                       == "running" and r, 60, "rp1 running as the RAPI shows it")
        assert got["version"] == 2
        assert "instance-create-reqv1" in got["features"]
        assert got["instances"] == ["rp1"] and got["nodes"] == ["n1"]  # the client reads the ids of [{id, uri}]
        assert "busybox-guest" in got["os"]
        assert got["info"]["master"] == "n1" and got["info"]["name"] == "t1"
        same_shape(got["info"], json.loads((GANETI / "info.json").read_text()), "/2/info")
        instance = got["instance"]
        same_shape(instance, json.loads((GANETI / "instances-bulk.json").read_text())[0], "/2/instances/rp1")
        assert (instance["pnode"], instance["admin_state"], instance["oper_state"]) == ("n1", "up", True)
        assert instance["disk.sizes"] == [64] and instance["beparams"]["memory"] == 64
        assert [i["name"] for i in got["instances_bulk"]] == ["rp1"]
        same_shape(got["node"], json.loads((GANETI / "nodes-bulk.json").read_text())[0], "/2/nodes/n1")
        assert got["node"]["pinst_list"] == ["rp1"] and got["node"]["role"] == "M"
        same_shape(got["groups"][0], json.loads((GANETI / "groups-bulk.json").read_text())[0], "/2/groups")
        assert got["groups"][0]["node_list"] == ["n1"]
        same_shape(got["job"], json.loads((GANETI / "job.json").read_text()), "/2/jobs/J")
        assert got["job"]["status"] == "success"
        assert got["console"]["kind"] == "message" and "corral instance console rp1" in got["console"]["message"]
        assert (got["tags"], got["role"]) == (["rapi"], "master")
        assert got["missing"] == 404
        assert got["shutdown"] == 403, "a read user must not change anything"

        assert rapi(node, "", "")["refused"] == 401
        assert rapi(node, "rapi-reader", "not-the-secret")["refused"] == 401
        assert rapi(node, "rapi-reader", reader)["version"] == 2, "the whole token is accepted as the password"
        node.ok("instance", "stop", "rp1")
        stopped = rapi(node, "rapi-reader", reader)["instance"]
        assert (stopped["status"], stopped["oper_state"], stopped["oper_ram"]) == ("ADMIN_down", False, None)
    finally:
        node.corral("instance", "remove", "rp1")
        node.corral("user", "remove", "rapi-reader")


WRITE = """
import json, sys
from ganeti.rapi import client
host, port, user, password, ca, name = sys.argv[1:7]
c = client.GanetiRapiClient(host, int(port), user, password, curl_config_fn=client.GenericCurlConfig(cafile=ca))
out = []
for step, call in (("create", lambda: c.CreateInstance("create", name, "file", [{"size": 64}], [], os_type="busybox-guest",
                                                       pnode="n1", beparams={"memory": 64, "vcpus": 1})),
                   ("shutdown", lambda: c.ShutdownInstance(name)), ("startup", lambda: c.StartupInstance(name)),
                   ("reboot", lambda: c.RebootInstance(name, reboot_type="hard")),
                   ("grow", lambda: c.GrowInstanceDisk(name, 0, 32)),
                   ("stop", lambda: c.ShutdownInstance(name)),
                   ("rename", lambda: c.RenameInstance(name, name + "-renamed")),
                   ("remove", lambda: c.DeleteInstance(name + "-renamed"))):
    job = call()
    out.append([step, isinstance(job, int), c.WaitForJobCompletion(job, period=1, retries=60),
                c.GetJobStatus(job)["status"], c.GetInstances()])
for what, call in (("unknown", lambda: c.ShutdownInstance("nonexistent")),
                   ("taken", lambda: c.CreateInstance("create", "rp-taken", "file", [{"size": 64}], [],
                                                      os_type="busybox-guest", pnode="n1")),
                   ("routed", lambda: c.CreateInstance("create", "rp4", "file", [{"size": 64}],
                                                       [{"mode": "routed", "link": "100"}], os_type="busybox-guest")),
                   ("evacuate-primaries", lambda: c.EvacuateNode("n1", mode="primary-only")),
                   ("cancel-ended", lambda: c.CancelJob(c.GetJobs()[0]))):
    try:
        call()
        out.append([what, "answered"])
    except client.GanetiApiError as exc:
        out.append([what, exc.code, str(exc)])
print(json.dumps(out))
"""


def test_ganetis_own_client_creates_stops_starts_reboots_and_removes_an_instance_through_corral_jobs(one_node):
    node = one_node
    node.ok("instance", "add", "rp-taken", "--os", "busybox-guest", "--memory", "64M", "--disk", "64M", "--no-start")
    jobs_before = len(node.json("job", "list"))
    writer = node.json("user", "add", "rapi-writer", "--role", "write")["token"]
    try:
        done = subprocess.run(["/usr/bin/python3", "-c", WRITE, node.address, str(node.ports["rapi"]), "rapi-writer",
                               writer.partition(".")[2], str(node.root / "state" / "pki" / "ca.crt"), "rp2"],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        steps = json.loads(done.stdout)
        done_steps = ("create", "shutdown", "startup", "reboot", "grow", "stop", "rename", "remove")
        assert [s[:4] for s in steps[:8]] == [[step, True, True, "success"] for step in done_steps], steps
        assert steps[0][4] == ["rp-taken", "rp2"] and steps[6][4] == ["rp-taken", "rp2-renamed"], steps
        assert steps[7][4] == ["rp-taken"], steps
        refused = {s[0]: s[1:] for s in steps[8:]}
        assert refused["unknown"][0] == 404, refused
        assert refused["taken"][0] == 409 and "already exists" in refused["taken"][1], refused
        assert refused["routed"][0] == 400 and "has no Corral equivalent" in refused["routed"][1], refused
        assert refused["evacuate-primaries"][0] == 400 and "empties a node as a whole" in refused["evacuate-primaries"][1]
        assert refused["cancel-ended"][0] == 409 and "has already ended" in refused["cancel-ended"][1], refused
        jobs = node.json("job", "list")
        assert len(jobs) == jobs_before + 8, "refused requests must not make jobs"
        assert {"instance.add", "instance.stop", "instance.start", "instance.reboot", "instance.grow-disk",
                "instance.rename", "instance.remove"} <= {j["op"] for j in jobs}
    finally:
        for name in ("rp2", "rp2-renamed", "rp-taken"):
            node.corral("instance", "remove", name)
        node.corral("user", "remove", "rapi-writer")


HTOOLS = Path("/usr/lib/ganeti/3.0/usr/bin")


def test_ganetis_htools_read_a_live_corral_cluster_through_the_rapi(one_node):
    """hinfo, hscan, hbal and hspace of Debian's ganeti-htools-3.0, pointed at the agent's RAPI (`-m URL`, the
    user's credentials in the URL as curl takes them), load the cluster without an error."""
    if not (HTOOLS / "hinfo").exists():
        unavailable("ganeti-htools-3.0 is not installed")
    node = one_node
    node.ok("instance", "add", "rp5", "--os", "busybox-guest", "--memory", "64M", "--disk", "64M")
    reader = node.json("user", "add", "htools", "--role", "read")["token"].partition(".")[2]
    url = f"https://htools:{reader}@{node.address}:{node.ports['rapi']}"
    try:
        said = {}
        for tool, args in (("hinfo", ["-m", url, "-v"]), ("hscan", ["-p", "-d", str(node.root), url]),
                           ("hbal", ["-m", url, "-C"]),
                           ("hspace", ["-m", url, "--standard-alloc=64,64,1"])):
            done = subprocess.run([str(HTOOLS / tool), *args], capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, f"{tool}: {done.stderr}{done.stdout}"
            said[tool] = done.stdout + done.stderr
        assert "Loaded 1 node, 1 instance, 1 node group" in said["hinfo"] and "Cluster score:" in said["hinfo"]
        assert " n1 " in said["hscan"] and "t_mem" in said["hscan"], said["hscan"]  # -p: the node list
        assert "Loaded 1 nodes, 1 instances" in said["hbal"] and "Initial score:" in said["hbal"], said["hbal"]
        assert "The cluster has 1 nodes" in said["hspace"] and "There are 1 initial instances" in said["hspace"]
        # the same cluster written to a file by `corral cluster export-htools`: hinfo reads the same score from it
        exported = node.root / "cluster.data"
        node.ok("cluster", "export-htools", "-o", str(exported))
        from_file = subprocess.run([str(HTOOLS / "hinfo"), "-t", str(exported)], capture_output=True, text=True,
                                   timeout=60)
        assert from_file.returncode == 0, from_file.stderr
        score = re.compile(r"Cluster score: (\S+)")
        assert score.search(from_file.stdout)[1] == score.search(said["hinfo"])[1], (from_file.stdout, said["hinfo"])
        assert "Final score" in node.ok("cluster", "balance", "--from-htools", str(exported)) or \
            "No move lowers the score" in node.ok("cluster", "balance", "--from-htools", str(exported))
        refused = subprocess.run([str(HTOOLS / "hinfo"), "-m", f"https://{node.address}:{node.ports['rapi']}"],
                                 capture_output=True, text=True, timeout=60)
        assert refused.returncode != 0, "without credentials the RAPI must not answer htools"
    finally:
        node.corral("instance", "remove", "rp5")
        node.corral("user", "remove", "htools")
