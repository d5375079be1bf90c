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


CHANGES = """
import json, sys
from ganeti.rapi import client
host, port, ca, writer, admin, reader = sys.argv[1:7]
def as_user(token):
    user, _, secret = token.partition(".")
    return client.GanetiRapiClient(host, int(port), user, secret, curl_config_fn=client.GenericCurlConfig(cafile=ca))
w, a, r = as_user(writer), as_user(admin), as_user(reader)
out = {}
for step, c, call in (("modify", w, lambda: w.ModifyInstance("rp6", beparams={"maxmem": 96, "minmem": 96, "vcpus": 2})),
                      ("tag", w, lambda: w.AddInstanceTags("rp6", ["web", "team:lab"])),
                      ("untag", w, lambda: w.DeleteInstanceTags("rp6", ["web"])),
                      ("info", w, lambda: w.GetInstanceInfo("rp6")),
                      ("deactivate", w, lambda: w.DeactivateInstanceDisks("rp6")),
                      ("export", w, lambda: w.ExportInstance("rp6", "local", "n1")),
                      ("storage", w, lambda: w.GetNodeStorageUnits("n1", "file", "name,size,used,free,type")),
                      ("drain", a, lambda: a.SetNodeRole("n1", "drained")),
                      ("undrain", a, lambda: a.SetNodeRole("n1", "regular")),
                      ("node-tag", a, lambda: a.AddNodeTags("n1", ["rack:1"])),
                      ("cluster-tag", a, lambda: a.AddClusterTags(["site:lab"])),
                      ("cluster-modify", a, lambda: a.ModifyCluster(beparams={"default": {"vcpus": 2}}))):
    job = call()
    c.WaitForJobCompletion(job, period=1, retries=60)
    status = c.GetJobStatus(job)
    out[step] = [isinstance(job, int), status["status"], status["opresult"][0]]
    if step == "drain":
        out["drained"] = a.GetNode("n1")["drained"]
out["tags"], out["node-tags"], out["cluster-tags"] = w.GetInstanceTags("rp6"), a.GetNodeTags("n1"), a.GetClusterTags()
out["undrained"], out["instance"] = a.GetNode("n1")["drained"], w.GetInstance("rp6")
for what, call in (("read-modify", lambda: r.ModifyInstance("rp6", beparams={"vcpus": 1})),
                   ("read-info", lambda: r.GetInstanceInfo("rp6")),
                   ("write-role", lambda: w.SetNodeRole("n1", "drained")),
                   ("write-cluster", lambda: w.ModifyCluster(candidate_pool_size=1)),
                   ("nics", lambda: w.ModifyInstance("rp6", nics=[["add", -1, {}]])),
                   ("minmem", lambda: w.ModifyInstance("rp6", beparams={"minmem": 64})),
                   ("master", lambda: a.SetNodeRole("n1", "master")),
                   ("bad-tag", lambda: w.AddInstanceTags("rp6", ["a b"])),
                   ("missing-tag", lambda: w.DeleteInstanceTags("rp6", ["nope"])),
                   ("dry-run", lambda: w.AddInstanceTags("rp6", ["x"], dry_run=True)),
                   ("cluster-unknown", lambda: a.ModifyCluster(vg_name="xenvg")),
                   ("storage-type", lambda: w.GetNodeStorageUnits("n1", "rados", "name")),
                   ("export-remote", lambda: w.ExportInstance("rp6", "remote", "n1")),
                   ("storage-field", lambda: w.GetNodeStorageUnits("n1", "file", "name,colour"))):
    try:
        call()
        out[what] = ["answered"]
    except client.GanetiApiError as exc:
        out[what] = [exc.code, str(exc)]
print(json.dumps(out))
"""


def test_ganetis_own_client_changes_instances_nodes_tags_and_the_cluster_through_corral_jobs(one_node):
    """Modify, tags, node role, instance details, deactivate-disks, export, storage and cluster modify: each a job id, as Ganeti's, whose change
    Corral's own CLI then shows; Corral's roles hold (node and cluster changes are admin's), and refused
    requests make no job."""
    node = one_node
    node.ok("instance", "add", "rp6", "--os", "busybox-guest", "--memory", "64M", "--disk", "64M", "--no-start")
    tokens = {role: node.json("user", "add", f"rapi-{role}", "--role", role)["token"]
              for role in ("write", "admin", "read")}
    try:
        done = subprocess.run(["/usr/bin/python3", "-c", CHANGES, node.address, str(node.ports["rapi"]),
                               str(node.root / "state" / "pki" / "ca.crt"), tokens["write"], tokens["admin"],
                               tokens["read"]], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        out = json.loads(done.stdout)
        for step in ("modify", "tag", "untag", "info", "deactivate", "export", "storage", "drain", "undrain", "node-tag", "cluster-tag",
                     "cluster-modify"):
            assert out[step][:2] == [True, "success"], (step, out[step])
        assert out["drained"] is True and out["undrained"] is False, out
        assert out["tags"] == ["team:lab"] and out["node-tags"] == ["rack:1"] and out["cluster-tags"] == ["site:lab"]
        assert out["instance"]["beparams"]["maxmem"] == 96 and out["instance"]["beparams"]["vcpus"] == 2
        info = out["info"][2]["rp6"]
        expected = json.loads((GANETI / "job-instance-info.json").read_text())
        theirs = next(iter(expected["opresult"][0].values()))
        same_shape(info, theirs, "instance info")
        same_shape(info["disks"][0], theirs["disks"][0], "instance info disk")
        assert info["name"] == "rp6" and info["pnode"] == "n1" and info["run_state"] == "down"
        assert info["be_actual"]["maxmem"] == 96 and info["disks"][0]["size"] == 64
        assert out["cluster-modify"][2]["default_vcpus"] == 2
        [[path, size, used, free, kind]] = out["storage"][2]
        assert path.endswith("file-storage") and size > 0 and used + free == size and kind == "file", out["storage"]
        shown = node.json("instance", "info", "rp6")
        assert shown["memory"] == 96 and shown["vcpus"] == 2 and shown["tags"] == ["team:lab"], shown
        assert not node.json("node", "info", "n1").get("drained")
        assert [b["instance"] for b in node.json("backup", "list")] == ["rp6"]
        for what in ("read-modify", "read-info", "write-role", "write-cluster"):
            assert out[what][0] == 403, (what, out[what])
        for what, said in (("nics", "--nic"), ("minmem", "one memory size"), ("master", "master-failover"),
                           ("bad-tag", "is not a tag"), ("missing-tag", "not tagged"), ("dry-run", "dry-run"),
                           ("cluster-unknown", "no such cluster setting"), ("storage-type", "file and lvm-vg"),
                           ("export-remote", "mode local"),
                           ("storage-field", "unknown storage field")):
            assert out[what][0] == 400 and said in out[what][1], (what, out[what])
        ops = [j["op"] for j in node.json("job", "list")]
        assert ops.count("tags.change") == 4 and ops.count("node.modify") == 2, ops
    finally:
        node.corral("instance", "remove", "rp6")
        node.ok("node", "modify", "n1", "--drained", "no")
        for role in ("write", "admin", "read"):
            node.corral("user", "remove", f"rapi-{role}")
