"""Ganeti's instance actions as Corral's /v1 actions (hostagent.rapi.actions)."""

from __future__ import annotations

import pytest

from hostagent.errors import BadRequest
from hostagent.rapi.actions import ACTIONS, v1_body

INST = {"name": "web1", "disks": [{"index": 0, "size_mib": 1024}, {"index": 1, "size_mib": 64}]}


def test_each_ganeti_action_becomes_the_corral_action_of_the_same_meaning():
    assert ACTIONS[("PUT", "shutdown")] == "stop" and ACTIONS[("POST", "replace-disks")] == "replace-secondary"
    assert v1_body("reboot", {"type": "full"}, {}, INST) == {"type": "hard"}
    assert v1_body("reboot", {}, {}, INST) == {"type": "soft"}
    assert v1_body("stop", {}, {"timeout": 30}, INST) == {"timeout_s": 30}
    assert v1_body("migrate", {}, {"mode": "live", "target_node": "n3"}, INST) == {"node": "n3"}
    assert v1_body("failover", {}, {"ignore_consistency": True}, INST) == {"ignore_consistency": True}
    assert v1_body("reinstall", {}, {"start": True, "os": "debian"}, INST) == {"yes": True, "os": "debian"}
    assert v1_body("rename", {}, {"new_name": "web2"}, INST) == {"new_name": "web2"}
    assert v1_body("replace-secondary", {"mode": "replace_new_secondary", "remote_node": "n4"}, {}, INST) == \
        {"node": "n4"}
    assert v1_body("grow-disk", {}, {"amount": 512}, INST, "0") == {"disk": 0, "size": "1536M"}
    assert v1_body("grow-disk", {}, {"amount": 128, "absolute": True}, INST, "1") == {"disk": 1, "size": "128M"}


@pytest.mark.parametrize("corral, query, body, disk, reason", [
    ("reboot", {"type": "warm"}, {}, "", "not one of soft, hard, full"),
    ("migrate", {}, {"mode": "non-live"}, "", "is a failover in Corral"),
    ("replace-secondary", {"mode": "replace_on_primary"}, {}, "", "replaces a secondary as a whole"),
    ("grow-disk", {}, {"amount": 10}, "2", "has disks 0-1, not '2'"),
    ("grow-disk", {}, {"amount": "1G"}, "0", "amount must be a whole number of MiB"),
    ("reinstall", {}, {"start": False}, "", "starts the instance again if it ran before"),
])
def test_what_corral_does_otherwise_is_refused_with_the_reason(corral, query, body, disk, reason):
    with pytest.raises(BadRequest) as err:
        v1_body(corral, query, body, INST, disk)
    assert reason in str(err.value)
