"""Roles and callers against real agents over TLS: every route of the route table as every kind of caller,
write is not admin, and jobs, events and the access log say who asked and through which node."""

from __future__ import annotations

import json
import re
import ssl
import urllib.error
import urllib.request
from typing import Any

import pytest

from conftest import AgentNode, Cluster, wait_for
from hostagent.api import auth
from hostagent.api.app import ROUTES, Route
from hostagent.callers import HEADER, Caller

pytestmark = pytest.mark.integration

DUMMY = {"{name}": "nosuch", "{id}": "999999", "{node}": "nosuch"}
ACTION = {"/v1/instances/{name}/{action}": "start", "/v1/nodes/{name}/{action}": "migrate"}
# Bodies that fail validation where the real thing would change the cluster for the tests after it.
BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/v1/cluster/master-failover"): {"to": "nosuch"},
    ("POST", "/v1/node/drill"): {"mode": "nosuch"},
}
LAST = {("POST", "/v1/cluster/rotate-secrets")}  # real when allowed: after every other route


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """n1 (master) and n2 (not master, so changes sent to it are forwarded), both writing access logs."""
    cluster = Cluster(tmp_path_factory.mktemp("roles"), 2)
    for node in cluster.nodes:
        node.config.write_text(node.config.read_text().replace("access_log = false", "access_log = true"))
    try:
        cluster.form()
        n2 = cluster["n2"]
        wait_for(lambda: {r["name"] for r in n2.json("node", "list")} == {"n1", "n2"}, 30, "n2 to see both nodes")
        assert cluster.master() == "n1"
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def tokens(pair) -> dict[str, str]:
    n1 = pair["n1"]
    return {role: n1.json("user", "add", f"u-{role}", "--role", role)["token"] for role in ("read", "write", "admin")}


def call(node: AgentNode, method: str, path: str, token: str | None = None, body: Any = None,
         headers: dict[str, str] | None = None, cert_of: AgentNode | None = None) -> tuple[int, dict[str, Any]]:
    """One HTTPS request to `node`'s API: with a bearer token, or with `cert_of`'s node certificate."""
    ctx = ssl.create_default_context(cafile=str(node.root / "state" / "pki" / "ca.crt"))
    if cert_of is not None:
        pki = cert_of.root / "state" / "pki"
        ctx.load_cert_chain(str(pki / "node.crt"), str(pki / "node.key"))
    sent = {"Content-Type": "application/json", **(headers or {})}
    if token:
        sent["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"https://{node.api}{path}", data=data, method=method, headers=sent)
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=60) as resp:
            status, text = resp.status, resp.read()
    except urllib.error.HTTPError as err:
        status, text = err.code, err.read()
    try:
        answer = json.loads(text)
    except ValueError:
        answer = {"text": text[:200]}
    return status, answer if isinstance(answer, dict) else {"data": answer}


def concrete(route: Route) -> str:
    path = route.path.replace("{action}", ACTION.get(route.path, "nosuch"))
    return re.sub(r"\{\w+\}", lambda m: DUMMY.get(m.group(0), "nosuch"), path)


def refused_by_auth(status: int, answer: dict[str, Any]) -> bool:
    """401, or the middleware's 403 (a handler's own 403, such as a refused join token, is not one)."""
    return status == 401 or (status == 403 and answer.get("error") == "forbidden")


@pytest.mark.timeout(420)  # its rotation wait (180 s) plus some 500 quick requests
def test_every_route_answers_each_role_exactly_as_the_table_says(pair, tokens):
    n1, n2 = pair["n1"], pair["n2"]
    callers = [("anonymous", "public", None), ("read", "read", tokens["read"]),
               ("write", "write", tokens["write"]), ("admin", "admin", tokens["admin"])]
    routes = sorted((r for r in ROUTES if r.site in ("both", "tls")), key=lambda r: (r.method, r.path) in LAST)
    wrong, rotation = [], None
    for route in routes:
        path, body = concrete(route), BODIES.get((route.method, route.path), {} if route.method == "POST" else None)
        for who, level, token in callers:
            status, answer = call(n2, route.method, path, token, body)
            allowed = auth.allows(level, route.access)
            if allowed and refused_by_auth(status, answer):
                wrong.append(f"{who} refused {status} on {route.method} {path} ({route.access}): {answer}")
            if not allowed:
                expected = 401 if token is None and route.access != auth.NODE else 403
                if status != expected or not refused_by_auth(status, answer):
                    wrong.append(f"{who} got {status}, not {expected}, on {route.method} {path} "
                                 f"({route.access}): {answer}")
                elif token is not None and route.access != auth.NODE:
                    assert f"needs the {route.access} role; user 'u-{who}' has the {who} role" in answer["message"]
            if (route.method, route.path) in LAST and status == 202:
                rotation = answer["data"]["job_id"]
        if route.access == auth.NODE:  # and a node's certificate gets through
            status, answer = call(n2, route.method, path, body=body, cert_of=n1)
            if refused_by_auth(status, answer):
                wrong.append(f"node n1 refused {status} on {route.method} {path}: {answer}")
    assert not wrong, "\n".join(wrong)
    assert rotation is not None, "the admin's rotate-secrets was not accepted"
    wait_for(lambda: n1.json("job", "info", str(rotation))["status"] in ("success", "error"), 180,
             "the rotation to end")


def test_a_write_user_cannot_mint_a_join_token_manage_users_or_rotate_secrets(pair, tokens):
    for node in (pair["n1"], pair["n2"]):  # the master, and a node that would forward
        for method, path, body in (("POST", "/v1/nodes", {"name": "rogue", "address": "127.0.0.99"}),
                                   ("POST", "/v1/users", {"name": "mine", "role": "admin"}),
                                   ("GET", "/v1/users", None), ("POST", "/v1/cluster/rotate-secrets", {})):
            status, answer = call(node, method, path, tokens["write"], body)
            assert status == 403, (node.name, path, status, answer)
            assert "needs the admin role; user 'u-write' has the write role" in answer["message"]
    assert "rogue" not in json.dumps(pair["n1"].json("node", "list"))
    status, answer = call(pair["n1"], "POST", "/v1/users", tokens["write"], {"name": "x", "role": "root"})
    assert status == 403  # the role check comes before the body is read
    status, answer = call(pair["n1"], "POST", "/v1/users", tokens["admin"], {"name": "x", "role": "root"})
    assert status == 400 and "the roles are read, write, admin" in answer["message"], answer


def test_a_job_through_a_non_master_names_the_user_and_that_node(pair, tokens):
    n1, n2 = pair["n1"], pair["n2"]
    status, answer = call(n2, "POST", "/v1/cluster/probe", tokens["write"], {})
    assert status == 202, answer
    job_id = str(answer["data"]["job_id"])
    info = n1.ok("job", "info", job_id)
    assert "by:       user 'u-write' (write) via node 'n2'" in info, info
    assert n1.json("job", "info", job_id)["caller"] == Caller.user("u-write", "write", "n2").to_dict()
    init = n1.ok("job", "info", "1")  # `cluster init` on n1's own socket
    assert "cluster" in init and "by:       local root via node 'n1'" in init, init
    status, answer = call(n2, "POST", "/v1/cluster/modify", tokens["admin"], {"failback_after_s": 0})
    assert status == 200, answer
    changed = [e for e in n1.json("events") if "cluster settings changed" in e["message"]]
    assert changed and changed[-1]["caller"] == Caller.user("u-admin", "admin", "n2").to_dict(), changed
    assert "by user 'u-admin' (admin) via node 'n2'" in n1.ok("events")
    for node, word in ((n2, "user:u-write:write@n2"), (n1, "user:u-write:write@n2")):  # received, forwarded
        log = (node.root / "log" / "access.log").read_text()
        assert re.search(rf"Z {re.escape(word)} POST /v1/cluster/probe 202 \d+\.\d+s$", log, re.M), log[-2000:]


def test_a_caller_header_from_a_user_is_refused_and_never_believed(pair, tokens):
    n1, n2 = pair["n1"], pair["n2"]
    jobs_before = len(n1.json("job", "list"))
    forged = {HEADER: Caller.root("n1").to_header()}
    for node in (n1, n2):
        status, answer = call(node, "POST", "/v1/cluster/probe", tokens["write"], {}, headers=forged)
        assert status == 403 and HEADER in answer["message"], answer
        status, answer = call(node, "POST", "/v1/nodes", tokens["write"], {"name": "rogue", "address": "127.0.0.9"},
                              headers=forged)
        assert status == 403, answer
    assert len(n1.json("job", "list")) == jobs_before
    log = (n2.root / "log" / "access.log").read_text()
    assert re.search(r"Z user:u-write:write@n2 POST /v1/nodes 403 ", log), log[-2000:]
    # From a node certificate the header is believed, and the level it claims is checked again.
    status, answer = call(n1, "POST", "/v1/users", body={"name": "y", "role": "read"}, cert_of=n2,
                          headers={HEADER: Caller.user("u-write", "write", "n2").to_header()})
    assert status == 403 and "forwarded it for user 'u-write' (write) via node 'n2'" in answer["message"], answer
