"""Clusters of several agents on 127.0.0.x: join, candidates, election, forwarding, security."""

from __future__ import annotations

import hashlib
import json
import ssl
import time
import urllib.error
import urllib.request

import pytest

from conftest import AgentNode, Cluster, formed, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def shared3(tmp_path_factory):
    """One 3-node cluster for the tests that leave it as they found it (in file order: the planned
    master failover last); the others each form their own (`cluster3`)."""
    with formed(tmp_path_factory.mktemp("shared3"), 3) as cluster:
        yield cluster

def test_three_nodes_form_with_every_node_a_candidate(shared3):
    def settled():
        rows = {r["name"]: r for r in shared3["n3"].json("node", "list")}
        return rows if all(r["etcd"] == "healthy" for r in rows.values()) else None
    rows = wait_for(settled, 15, "every member's report to show a healthy etcd member")
    assert sorted(rows) == ["n1", "n2", "n3"]
    assert [rows[n]["role"] for n in ("n1", "n2", "n3")] == ["master", "candidate", "candidate"]
    for row in rows.values():
        assert (row["status"], row["gossip"], row["etcd"], row["lease"]) == ("online", "alive", "healthy", "held")
        assert row["problems"] == []
    info = shared3["n2"].json("cluster", "info")
    assert info["quorum"]["ok"] and info["token"] and info["master"] == "n1"
    shared3.wait_replicas_agree()
    log = (shared3["n1"].root / "agent.log").read_text()
    assert "gossip: node 'n3' (127.0.0.3)" in log  # member events reach the agent (Serf may coalesce them)


def test_a_change_made_on_any_node_is_forwarded_and_read_back_there(shared3):
    added = shared3["n3"].json("user", "add", "ops", "--role", "read")  # n3 is not the master
    assert added["token"].startswith("ops.")
    assert [u["name"] for u in shared3["n3"].json("user", "list")] == ["ops"]  # read-your-writes on n3
    job = shared3["n2"].ok("instance", "add", "v1", "--os", "busybox-guest", "--node", "n3",
                            "--disk", "64M", "--no-start")
    assert "disks of 'v1' created" in job
    assert shared3["n2"].instance("v1")["primary_node"] == "n3"
    shared3.wait_replicas_agree()


def test_killing_the_master_elects_a_new_one_that_acts(cluster3):
    old = cluster3.master()
    cluster3[old].kill9()
    survivor = next(n for n in cluster3.alive())
    new = wait_for(lambda: (m := survivor.json("cluster", "info")["master"]) not in (None, old) and m, 30,
                   "a new master")
    job = survivor.json("user", "add", "after-failover", "--role", "write")
    assert job["name"] == "after-failover"
    assert new != old
    cluster3[old].start()  # the old master comes back as a member
    cluster3[old].wait_fresh_report()
    assert cluster3[old].json("cluster", "info")["master"] == new
    cluster3.wait_replicas_agree()


def test_a_frozen_minority_cannot_commit_and_says_why(cluster3):
    n1, n2, n3 = cluster3["n1"], cluster3["n2"], cluster3["n3"]
    frozen = n1.freeze() + n2.freeze()
    try:
        refused = n3.corral("user", "add", "nope", "--role", "read", timeout=60)
        assert refused.returncode != 0
        assert "no quorum" in refused.stderr or "no master" in refused.stderr, refused.stderr
        listed = n3.corral("node", "list")  # reads still work from the local replica
        assert listed.returncode == 0 and "n1" in listed.stdout
        info = n3.json("cluster", "info")
        assert info["quorum"]["ok"] is False
    finally:
        n1.thaw(frozen)
    wait_for(lambda: n3.json("cluster", "info")["quorum"]["ok"], 30, "quorum to return")
    n3.ok("user", "add", "after-thaw", "--role", "read")
    cluster3.wait_replicas_agree()


def test_an_old_master_resumed_after_a_freeze_cannot_get_an_order_accepted(cluster3):
    old = cluster3.master()
    old_token = cluster3[old].json("cluster", "info")["token"]
    pids = cluster3[old].freeze()
    try:
        survivor = next(n for n in cluster3.nodes if n.name != old)
        wait_for(lambda: survivor.json("cluster", "info")["master"] not in (None, old), 40, "a new master")
    finally:
        cluster3[old].thaw(pids)
    target = next(n for n in cluster3.nodes if n.name != old)
    wait_for(lambda: target.json("cluster", "info")["token"] not in (None, old_token), 20, "the new token")
    # Play the deposed master: its node certificate, its old token, an order to another node.
    status, answer = send_order(cluster3[old], target, old_token)
    assert status == 409 and answer["error"] == "stale-token", answer
    assert "is no longer master" in answer["message"]
    assert "refusing order" in (target.root / "agent.log").read_text()


def send_order(sender: AgentNode, target: AgentNode, token: str) -> tuple[int, dict]:
    pki = sender.root / "state" / "pki"
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    ctx.load_cert_chain(str(pki / "node.crt"), str(pki / "node.key"))
    body = json.dumps({"op": "node.hello", "args": {}, "token": token}).encode()
    req = urllib.request.Request(f"https://{target.api}/v1/node/orders", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def api_call(node: AgentNode, method: str, path: str, token: str | None = None, body: dict | None = None):
    ctx = ssl.create_default_context(cafile=str(node.root / "state" / "pki" / "ca.crt"))
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"https://{node.api}{path}", data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_api_users_read_only_gets_403_and_no_credentials_gets_401(shared3):
    reader = shared3["n1"].json("user", "add", "viewer", "--role", "read")["token"]
    writer = shared3["n1"].json("user", "add", "admin", "--role", "admin")["token"]  # users need admin
    n2 = shared3["n2"]
    status, answer = api_call(n2, "GET", "/v1/nodes")
    assert status == 401 and "authentication required" in answer["message"]
    status, answer = api_call(n2, "GET", "/v1/nodes", token="viewer.wrong")
    assert status == 401
    status, answer = api_call(n2, "GET", "/v1/nodes", token=reader)
    assert status == 200 and len(answer["data"]) == 3
    status, answer = api_call(n2, "POST", "/v1/users", token=reader, body={"name": "x", "role": "read"})
    assert status == 403 and "user 'viewer' has the read role" in answer["message"]
    status, answer = api_call(n2, "POST", "/v1/nodes/n3/modify", token=reader, body={"drained": True})
    assert status == 403
    status, answer = api_call(n2, "POST", "/v1/users", token=writer, body={"name": "x", "role": "read"})
    assert status == 200 and answer["data"]["name"] == "x"  # forwarded from n2 to the master
    status, answer = api_call(n2, "POST", "/v1/node/orders", token=writer, body={})
    assert status == 403 and "only from cluster nodes" in answer["message"]
    secret = writer.partition(".")[2].encode()  # only its hash is stored: nowhere at rest on any node
    for node in shared3.nodes:
        for path in node.root.rglob("*"):  # config replica and its WAL, etcd's data and WAL, logs
            if path.is_file() and "file-storage" not in path.parts:
                assert secret not in path.read_bytes(), f"the admin token's secret is in {path}"


def test_join_with_a_bad_token_fails_cleanly(tmp_path_factory, shared3):
    newcomer = AgentNode(tmp_path_factory.mktemp("n4"), name="n4", address="127.0.0.4")
    newcomer.start()
    try:
        via = shared3["n2"].api
        cases = [
            ("garbage", "the join token is malformed"),
            ("abc." + "0" * 64, "the cluster at"),  # right shape, wrong CA pin
        ]
        good = shared3["n1"].json("node", "add", "n4", "--address", "127.0.0.4")["token"]
        secret, fingerprint = good.rsplit(".", 1)
        cases += [(f"forged.{fingerprint}", "never issued by this cluster")]
        short = shared3["n1"].json("node", "add", "n5", "--address", "127.0.0.5", "--ttl", "1")["token"]
        time.sleep(1.5)
        for token, message in cases:
            result = newcomer.corral("cluster", "join", via, "--token", token)
            assert result.returncode != 0 and message in result.stderr, (token, result.stderr)
            assert not (newcomer.root / "state" / "cluster.json").exists()
        other = AgentNode(tmp_path_factory.mktemp("n5"), name="n5", address="127.0.0.5")
        other.start()
        try:
            expired = other.corral("cluster", "join", via, "--token", short)
            assert expired.returncode != 0 and "expired" in expired.stderr
        finally:
            other.stop()
            other.kill_qemus()  # its fence keeper, if it got one: it outlives the agent by design
        newcomer.ok("cluster", "join", via, "--token", good)
        assert newcomer.json("cluster", "info")["name"] == "multi"
        reused = newcomer.corral("cluster", "join", via, "--token", good)
        assert reused.returncode != 0 and "already belongs to cluster 'multi'" in reused.stderr
        removed = shared3["n1"].json("node", "remove", "n4")
        assert removed["node"] == "n4"
    finally:
        newcomer.stop()
        newcomer.kill_qemus()  # its fence keeper, which outlives the agent by design


def test_join_tokens_are_listed_without_secrets_a_revoked_one_cannot_join_and_a_used_one_is_gone(
        tmp_path_factory, shared3):
    n1, n2, n3 = shared3["n1"], shared3["n2"], shared3["n3"]
    revoked = n1.json("node", "add", "n6", "--address", "127.0.0.6")["token"]
    used = n1.json("node", "add", "n7", "--address", "127.0.0.7")["token"]
    n1.json("node", "add", "n8", "--address", "127.0.0.8", "--ttl", "1")
    listing = n2.ok("node", "tokens", "--json")  # from a non-master's replica
    rows = {r["node"]: r for r in json.loads(listing)}
    assert (rows["n6"]["address"], rows["n6"]["state"], rows["n7"]["state"]) == ("127.0.0.6", "valid", "valid")
    table = n2.ok("node", "tokens")
    assert "n6" in table and "127.0.0.7" in table
    for token in (revoked, used):
        secret = token.rsplit(".", 1)[0]
        for shown in (listing, table):
            assert secret not in shown and hashlib.sha256(secret.encode()).hexdigest() not in shown
    assert n3.json("node", "token-revoke", "n6") == {"node": "n6", "revoked": 1}  # forwarded to the master
    assert "n6" not in {r["node"] for r in n3.json("node", "tokens")}
    missing = n3.corral("node", "token-revoke", "n6")
    assert missing.returncode == 2 and "no join token for node 'n6' (tokens for: " in missing.stderr
    wait_for(lambda: "n8" not in {r["node"] for r in n1.json("node", "tokens")}, 30,
             "the master to sweep away the expired token of n8")
    newcomers = [AgentNode(tmp_path_factory.mktemp(name), name=name, address=f"127.0.0.{name[1]}")
                 for name in ("n6", "n7")]
    try:
        for node in newcomers:
            node.start()
        refused = newcomers[0].corral("cluster", "join", n2.api, "--token", revoked)
        assert refused.returncode != 0 and "never issued by this cluster, or it was used, revoked" in refused.stderr
        assert not (newcomers[0].root / "state" / "cluster.json").exists()
        newcomers[1].ok("cluster", "join", n2.api, "--token", used)
        assert n1.json("node", "tokens") == []  # used: deleted, not kept marked used
        assert n1.json("node", "remove", "n7")["node"] == "n7"
    finally:
        for node in newcomers:
            node.stop()
            node.kill_qemus()  # its fence keeper, which outlives the agent by design


def test_a_node_cannot_forge_a_newer_token_or_impersonate_the_master(shared3):
    master_token = shared3["n1"].json("cluster", "info")["token"]
    forged = f"{10**12}:1"
    status, answer = send_order(shared3["n2"], shared3["n3"], forged)
    assert status == 409 and answer["error"] == "not-the-master", answer
    status, answer = send_order(shared3["n2"], shared3["n3"], master_token)  # right token, wrong sender
    assert status == 409 and "that token is node 'n1''s" in answer["message"]
    status, _ = send_order(shared3["n1"], shared3["n3"], master_token)  # the real master is still obeyed
    assert status == 200


def test_a_node_that_was_down_catches_up(shared3):
    n3 = shared3["n3"]
    n3.stop()
    for i in range(5):
        shared3["n1"].ok("user", "add", f"while-down-{i}", "--role", "read")
    n3.start()
    n3.wait_fresh_report()
    assert {u["name"] for u in n3.json("user", "list")} >= {f"while-down-{i}" for i in range(5)}
    shared3.wait_replicas_agree()


def test_planned_master_failover_hands_over_to_the_named_node(shared3):
    out = shared3["n2"].ok("cluster", "master-failover", "--to", "n3")
    assert "master is now 'n3' (was 'n1')" in out
    assert shared3["n1"].json("cluster", "info")["master"] == "n3"
    shared3["n1"].ok("user", "add", "after-handover", "--role", "read")


def test_node_remove_refuses_while_instances_remain_unless_forced(cluster3):
    cluster3["n1"].ok("instance", "add", "pinned", "--os", "busybox-guest", "--node", "n3", "--disk", "64M",
                      "--no-start")
    refused = cluster3["n1"].corral("node", "remove", "n3")
    assert refused.returncode != 0 and "node 'n3' hosts instances (pinned)" in refused.stderr
    forced = cluster3["n1"].json("node", "remove", "n3", "--force")
    assert forced["instances_left"] == ["pinned"]
    wait_for(lambda: len(cluster3["n1"].json("cluster", "info")["candidates"]) == 2, 20, "n3 out of the pool")
    assert [n["name"] for n in cluster3["n1"].json("node", "list")] == ["n1", "n2"]


@pytest.mark.timeout(450)  # its bounded waits add up to 370 s
def test_five_nodes_survive_losing_two(tmp_path_factory):
    cluster = Cluster(tmp_path_factory.mktemp("c5"), 5)
    try:
        cluster.form(candidates=5)
        cluster.wait_candidates(5, timeout_s=150)
        old = cluster.master()
        others = [n for n in cluster.nodes if n.name != old]
        cluster[old].kill9()
        others[0].kill9()
        survivor = others[1]
        wait_for(lambda: survivor.json("cluster", "info")["master"] not in (None, old), 40, "a new master")
        survivor.ok("user", "add", "still-works", "--role", "read")
        cluster.wait_replicas_agree()
    finally:
        cluster.stop()


def test_rotate_secrets_renews_gossip_key_and_certificates_without_downtime(cluster3):
    def secrets(node: AgentNode) -> tuple[str, str, str]:
        pki = node.root / "state" / "pki"
        return ((pki / "gossip.key").read_text(), (pki / "node.crt").read_text(), (pki / "serf.keyring").read_text())

    before = {n.name: secrets(n) for n in cluster3.nodes}
    out = cluster3["n2"].ok("cluster", "rotate-secrets")
    assert "old gossip key removed from every member" in out
    for node in cluster3.nodes:
        gossip, cert, keyring = secrets(node)
        old_gossip, old_cert, _ = before[node.name]
        assert gossip != old_gossip and cert != old_cert
        assert old_gossip not in keyring and gossip in keyring
    rows = cluster3["n3"].json("node", "list")
    assert {r["gossip"] for r in rows} == {"alive"}
    cluster3["n3"].ok("user", "add", "after-rotation", "--role", "read")  # mutual TLS with the new certificates
    assert send_order(cluster3["n2"], cluster3["n3"], "1:1")[0] == 409  # n2's new certificate is accepted


def test_node_modify_flags_and_a_node_that_may_not_be_candidate_leaves_the_pool(cluster3):
    n1 = cluster3["n1"]
    n1.ok("node", "modify", "n2", "--drained", "yes")
    row = next(r for r in n1.json("node", "list") if r["name"] == "n2")
    assert row["drained"] is True
    refused = n1.corral("instance", "add", "x", "--os", "busybox-guest", "--node", "n9", "--no-start")
    assert refused.returncode == 2 and "node 'n9' is not in the cluster" in refused.stderr
    n1.ok("node", "modify", "n3", "--candidate", "no")
    # two capable nodes make an even pool: the master keeps one member (itself) rather than two
    wait_for(lambda: n1.json("cluster", "info")["candidates"] == ["n1"], 60, "the pool to shrink to n1")
    assert not (cluster3["n3"].root / "state" / "etcd").exists()
    n1.ok("user", "add", "still-writable", "--role", "read")
    bad = n1.corral("node", "modify", "n2", "--offline", "maybe")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def test_bad_bodies_get_a_400_naming_the_problem_and_no_job_from_master_or_not(shared3):
    """Attacks with an admin token (cluster modify needs admin) on the real agents: the non-master forwards,
    the master refuses; never a 500."""
    writer = shared3["n1"].json("user", "add", "bodies", "--role", "admin")["token"]
    jobs_before = len(shared3["n1"].json("job", "list"))
    for node in (shared3["n1"], shared3["n3"]):
        raw = [(b'{"failback_after_s": NaN}', "/v1/cluster/modify", "holds NaN"),
               (b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "/v1/instances", "nests deeper"),
               (b'["not", "an", "object"]', "/v1/instances", "JSON object")]
        for data, path, words in raw:
            ctx = ssl.create_default_context(cafile=str(node.root / "state" / "pki" / "ca.crt"))
            req = urllib.request.Request(f"https://{node.api}{path}", data=data, method="POST",
                                         headers={"Content-Type": "application/json",
                                                  "Authorization": f"Bearer {writer}"})
            try:
                with urllib.request.urlopen(req, context=ctx, timeout=30) as resp:
                    status, answer = resp.status, json.loads(resp.read())
            except urllib.error.HTTPError as err:
                status, answer = err.code, json.loads(err.read())
            assert status == 400 and words in answer["message"], (node.name, path, status, answer)
        for action, body, words in (("stop", {"timeout_s": "abc"}, "timeout_s must be a number from 0 to 3600"),
                                    ("migrate", {"max_bandwidth_mib_s": "fast"}, "max_bandwidth_mib_s"),
                                    ("move", {"node": 7}, "node must be a string or null, not 7"),
                                    ("move", {"node": ""}, "node must be a node name")):
            status, answer = api_call(node, "POST", f"/v1/instances/nosuch/{action}", token=writer, body=body)
            assert status == 400 and words in answer["message"], (node.name, action, status, answer)
    assert len(shared3["n1"].json("job", "list")) == jobs_before
