"""Request bodies against the OpenAPI document's own schemas: each problem names the field and what it accepts."""

from __future__ import annotations

import pytest

from hostagent.api.bodycheck import problems
from hostagent.api.openapi import PATHS, SCHEMAS, body_schema


def check(name: str, body: object) -> list[str]:
    return problems({"$ref": f"#/components/schemas/{name}"}, body, SCHEMAS)


@pytest.mark.parametrize("body, words", [
    ({"name": "a", "os": "x", "disks": "64M"}, "disks must be a list, not '64M'"),
    ({"name": "a", "os": "x", "nics": [1]}, "nics[0] must be an object, not 1"),
    ({"name": "a", "os": "x", "hvparams": []}, "hvparams must be an object, not []"),
    ({"name": "a", "os": "x", "osparams": "x"}, "osparams must be an object, not 'x'"),
    ({"name": "a", "os": "x", "disks": [{"size": True}]}, "disks[0].size must be a string or a whole number"),
    ({"name": "a", "os": "x", "vcpus": 1.5}, "vcpus must be a whole number of at least 1, not 1.5"),
    ({"name": "a", "os": "x", "disks": [{}] * 17}, "disks must hold 0 to 16 items, not 17"),
    ({"os": "x"}, "name is required"),
    ({"name": None, "os": "x"}, "name must be a string, not null"),
    ({"name": "a", "os": "x", "cdrom": "/var/lib/corral/iso/\x00x"}, "cdrom must not contain a NUL character"),
])
def test_wrong_types_in_instance_add_name_the_field(body, words):
    found = check("InstanceAdd", body)
    assert any(words in p for p in found), found


def test_actions_numbers_and_flags():
    assert check("InstanceAction", {"max_bandwidth_mib_s": "fast"}) == [
        "max_bandwidth_mib_s must be a number from 1 to 100000 or null, not 'fast'"]
    assert check("InstanceAction", {"timeout_s": 30, "force": True}) == []
    assert check("InstanceAction", {"force": "yes"}) == ["force must be true or false, not 'yes'"]
    assert check("ClusterModify", {"failback_after_s": -1}) == [
        "failback_after_s must be a number of at least 0, not -1"]
    assert check("NodeModify", {"nonsense": 1}) == [
        "'nonsense' is not a field here (fields: candidate, drained, offline)"]


def test_what_the_cli_sends_passes():
    assert check("InstanceAdd", {"name": "web1", "os": "busybox-guest", "memory": "256M", "vcpus": 1,
                                 "disk_template": "mirror", "disks": [{"size": "64M", "format": "qcow2"}],
                                 "nics": [{"mode": "user"}], "hvparams": {"accel": "tcg"}, "start": True,
                                 "node": "n1:n2", "priority": "high", "after": ["db1"], "boot_pattern": "login:",
                                 "boot_timeout_s": 60, "auto_failover": None}) == []
    assert check("Join", {"token": "t", "name": "n2", "address": "127.0.0.2", "csr": "PEM",
                          "ports": {"api": 1, "gossip": 2, "etcd_client": 3, "etcd_peer": 4}}) == []
    assert check("InstanceAction", {"disk": 0, "size": "2G"}) == []


def test_a_huge_wrong_body_gets_a_short_answer():
    found = check("InstanceAdd", {"name": "a", "os": "x", "nics": [1] * 8, "disks": [1] * 16})
    assert len(found) == 5


def test_every_body_schema_resolves_and_every_route_with_a_body_has_one():
    for path, ops in PATHS.items():
        for method in ops:
            schema = body_schema(path, method)
            if schema is not None:
                assert problems(schema, {}, SCHEMAS) is not None
    assert body_schema("/v1/instances", "POST") == {"$ref": "#/components/schemas/InstanceAdd"}
    assert body_schema("/v1/instances/{name}", "DELETE") is None
