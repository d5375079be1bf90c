"""Property-based fuzzing of every TLS route of a real agent, from the OpenAPI document's own schemas.

For each route: bodies generated from its schema (hypothesis-jsonschema), any
JSON at all, and odd path parameters, sent as an admin user (node-only routes
with the node's certificate). The agent must never answer 5xx, never take
more than a few seconds, and keep answering afterwards. Derandomized: the same
examples every run, so a failure here is reproducible.
"""

from __future__ import annotations

import copy
import json
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema

from conftest import AgentNode, formed
from hostagent.api.app import ROUTES, Route
from hostagent.api.openapi import SCHEMAS, body_schema

pytestmark = pytest.mark.integration

ANSWER_WITHIN_S = 10.0
# Valid bodies of these would do real, slow or disruptive work (restart etcd, crash or freeze the
# agent); they are fuzzed with arbitrary JSON only.
NO_VALID_BODIES = {("POST", "/v1/cluster/rotate-secrets"), ("POST", "/v1/node/drill"),
                   ("POST", "/v1/cluster/init"), ("POST", "/v1/cluster/master-failover")}
FUZZED = [r for r in ROUTES if r.site in ("both", "tls")]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12)
segments = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=24) | \
    st.sampled_from(["..", "%2E%2E", "n1", "0", "-1", "%C2%B9", "a/b", "start", "migrate", "\u00b9"])


def _for_generation(schema: Any) -> Any:
    """The OpenAPI 3.0 schema as JSON Schema draft 7: refs inlined, nullable spelled out."""
    if isinstance(schema, list):
        return [_for_generation(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    if "$ref" in schema:
        return _for_generation(SCHEMAS[schema["$ref"].rsplit("/", 1)[-1]])
    out = {k: _for_generation(v) for k, v in schema.items()
           if k not in ("nullable", "example", "description", "exclusiveMinimum")}
    if schema.get("exclusiveMinimum") is True:
        out["exclusiveMinimum"] = out.pop("minimum")
    if schema.get("nullable"):
        return {"anyOf": [out, {"type": "null"}]}
    return out


def _bodies(route: Route) -> st.SearchStrategy[Any]:
    schema = body_schema(route.path, route.method)
    anything = json_values | st.dictionaries(st.text(max_size=20), json_values, max_size=6)
    if schema is None or (route.method, route.path) in NO_VALID_BODIES:
        return anything
    return from_schema(_for_generation(copy.deepcopy(schema))) | anything


def _call(node: AgentNode, route: Route, path: str, body: Any, token: str) -> tuple[int, bytes, float]:
    pki = node.root / "state" / "pki"
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    if route.access == "node":
        ctx.load_cert_chain(str(pki / "node.crt"), str(pki / "node.key"))
    data = None if route.method in ("GET", "DELETE") else json.dumps(body).encode()
    req = urllib.request.Request(f"https://{node.api}{path}", data=data, method=route.method,
                                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
    began = time.monotonic()
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=ANSWER_WITHIN_S) as resp:
            return resp.status, resp.read(), time.monotonic() - began
    except urllib.error.HTTPError as err:
        return err.code, err.read(), time.monotonic() - began


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    with formed(tmp_path_factory.mktemp("fuzz"), 1) as cluster:
        node = cluster["n1"]
        token = node.json("user", "add", "fuzzer", "--role", "admin")["token"]
        yield node, token


@pytest.mark.parametrize("route", FUZZED, ids=[f"{r.method} {r.path}" for r in FUZZED])
def test_no_route_answers_5xx_or_hangs_whatever_it_is_sent(target, route):
    node, token = target
    params = [part for part in route.path.split("/") if part.startswith("{")]

    @settings(max_examples=40, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(body=_bodies(route), values=st.lists(segments, min_size=len(params), max_size=len(params)))
    def one(body: Any, values: list[str]) -> None:
        path = route.path
        for param, value in zip(params, values):
            path = path.replace(param, urllib.parse.quote(value, safe="%"), 1)
        status, raw, took = _call(node, route, path, body, token)
        assert status < 500, (route.method, path, body, status, raw[:300])
        assert took < ANSWER_WITHIN_S
        if status >= 400 and status != 405:
            answer = json.loads(raw)
            assert answer.get("message"), (path, body, answer)

    one()
    status, _, took = _call(node, ROUTES[1], "/v1/cluster", None, token)
    assert status == 200 and took < 2, "the agent stopped answering after the fuzzing"
