"""The route table's access levels, the auth middleware on a plain server, callers and the access log line."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from hostagent import model
from hostagent import callers
from hostagent.api import auth, users
from hostagent.api.accesslog import line
from hostagent.api.app import ROUTES, build_app
from hostagent.callers import Caller


def test_every_route_has_an_access_level_and_a_site():
    assert ROUTES, "the route table is empty"
    for route in ROUTES:
        assert route.access in auth.LEVELS, route
        assert route.site in ("both", "tls", "local"), route
    keys = [(r.method, r.path, r.site) for r in ROUTES]
    assert len(keys) == len(set(keys)), "a route is in the table twice"


@pytest.mark.parametrize("node_site", [True, False])
def test_the_app_serves_exactly_the_routes_of_the_table(node_site):
    served = {(r.method, r.resource.canonical) for r in build_app(agent=None, node_site=node_site).router.routes()
              if r.method != "HEAD"}
    site = "tls" if node_site else "local"
    assert served == {(r.method, r.path) for r in ROUTES if r.site in ("both", site)}


def access(method: str, path: str) -> str:
    return next(r.access for r in ROUTES if (r.method, r.path) == (method, path))


def test_write_cannot_mint_join_tokens_manage_users_or_rotate_secrets():
    for method, path in (("POST", "/v1/nodes"), ("GET", "/v1/users"), ("POST", "/v1/users"),
                         ("DELETE", "/v1/users/{name}"), ("POST", "/v1/cluster/rotate-secrets"),
                         ("DELETE", "/v1/nodes/{name}"), ("POST", "/v1/nodes/{name}/modify"),
                         ("POST", "/v1/cluster/modify"), ("POST", "/v1/cluster/fencing")):
        assert access(method, path) == "admin", (method, path)
        assert not auth.allows("write", access(method, path))
    assert access("GET", "/v1/instances/{name}/console") == "write"  # a GET, but typing changes the guest
    assert all(r.access == "node" for r in ROUTES if r.path.startswith("/v1/node/"))
    assert {r.path for r in ROUTES if r.access == "public"} == {"/v1/join/ca", "/v1/join", "/v1/openapi.json"}


def test_levels_are_ordered_and_unknown_roles_get_nothing():
    assert auth.allows("admin", "write") and auth.allows("write", "read") and auth.allows("node", "admin")
    assert not auth.allows("read", "write") and not auth.allows("admin", "node")
    assert not auth.allows("root", "read") and not auth.allows("", "read")


def test_an_unknown_role_is_refused_naming_the_roles():
    with pytest.raises(Exception, match="the roles are read, write, admin"):
        users.new_user("bob", "superuser", 0.0)


class Replica:
    """The users the middleware looks up, as the replica would hold them."""

    def __init__(self, records: list[dict[str, Any]]) -> None:
        self.records = {model.user_key(r["name"]): r for r in records}

    def get_json(self, key: str) -> dict[str, Any] | None:
        return self.records.get(key)


class NoNodes:
    async def check(self, node: str, serial: Any) -> str | None:  # pragma: no cover - no certificates here
        return "no node certificates in this test"


async def test_the_middleware_checks_the_matched_route_and_refuses_a_forged_caller():
    reader, reader_token = users.new_user("rita", "read", 0.0)
    writer, writer_token = users.new_user("will", "write", 0.0)
    roles: dict[Any, str] = {}
    app = web.Application(middlewares=[auth.middleware(Replica([reader, writer]), NoNodes(), roles, "n2")])  # type: ignore[arg-type]

    async def who(request: web.Request) -> web.Response:
        return web.json_response(request[auth.CALLER].to_dict())

    resource = app.router.add_resource("/v1/nodes")
    roles[resource.add_route("GET", who)] = "read"
    roles[resource.add_route("POST", who)] = "admin"
    roles[app.router.add_route("GET", "/v1/join/ca", who)] = "public"
    async with TestClient(TestServer(app)) as client:
        assert (await client.get("/v1/nodes")).status == 401
        assert (await client.get("/v1/nosuch")).status == 401  # no route: signed-in callers only
        answer = await client.get("/v1/nodes", headers={"Authorization": f"Bearer {reader_token}"})
        assert answer.status == 200 and await answer.json() == Caller.user("rita", "read", "n2").to_dict()
        refused = await client.post("/v1/nodes", headers={"Authorization": f"Bearer {writer_token}"})
        assert refused.status == 403
        assert "needs the admin role; user 'will' has the write role" in (await refused.json())["message"]
        forged = Caller.user("boss", "admin", "n1").to_header()
        refused = await client.post("/v1/nodes", headers={"Authorization": f"Bearer {writer_token}",
                                                          callers.HEADER: forged})
        assert refused.status == 403 and callers.HEADER in (await refused.json())["message"]
        answer = await client.get("/v1/join/ca")
        assert answer.status == 200 and (await answer.json())["kind"] == "anonymous"


def test_a_forwarded_caller_is_checked_field_by_field():
    alice = Caller.user("alice", "write", "n2")
    assert callers.from_header(alice.to_header()) == alice
    for bad in ('{"kind": "user"}', "not json", '{"kind": "god", "name": "x", "role": "admin", "via": "n1"}',
                '{"kind": "user", "name": "a", "role": "owner", "via": "n1"}',
                '{"kind": "root", "name": "alice", "role": "read", "via": "n1"}'):
        with pytest.raises(ValueError):
            callers.from_header(bad)


def test_a_recorded_caller_is_named_as_job_info_prints_it():
    assert callers.describe(Caller.user("alice", "write", "n2").to_dict()) == "user 'alice' (write) via node 'n2'"
    assert callers.describe(Caller.root("n1").to_dict()) == "local root via node 'n1'"
    assert callers.describe(None) == "the master (automatic)"


def test_jobs_and_events_record_the_caller_only_inside_acting():
    assert callers.recorded() is None
    with callers.acting(Caller.root("n1")):
        assert callers.recorded() == {"kind": "root", "name": "root", "role": "admin", "via": "n1"}
    assert callers.recorded() is None


def test_an_access_log_line_has_time_caller_method_raw_path_status_duration():
    text = line(0.25, Caller.user("alice", "write", "n2"), "POST", "/v1/instances/%2E%2E/start?x=1 y\n", 403, 0.0042)
    assert text == "1970-01-01T00:00:00.250Z user:alice:write@n2 POST /v1/instances/%2E%2E/start?x=1%20y%0A 403 0.004s"
    assert line(0, None, "GET", "/", 401, 0).split()[1] == "-"
