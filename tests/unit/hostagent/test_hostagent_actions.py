"""Instance actions check their parameters before a job exists (hostagent.api.instances.action_params)."""

import pytest

from hostagent.api.instances import action_params
from hostagent.errors import BadRequest


def test_good_parameters_pass_with_their_defaults():
    assert action_params("stop", {}) == {"force": False, "timeout_s": None}
    assert action_params("stop", {"force": True, "timeout_s": 30}) == {"force": True, "timeout_s": 30.0}
    assert action_params("migrate", {"node": None}) == {"node": None, "max_bandwidth_mib_s": 1024.0}
    assert action_params("reboot", {"type": "hard"}) == {"type": "hard"}
    assert action_params("move", {"node": "n2"}) == {"node": "n2"}
    assert action_params("start", {"anything": 1}) == {}


@pytest.mark.parametrize("action,body,field", [
    ("stop", {"timeout_s": "abc"}, "timeout_s must be a number of seconds from 0 to 3600, not 'abc'"),
    ("stop", {"timeout_s": -1}, "timeout_s"),
    ("stop", {"timeout_s": True}, "timeout_s"),
    ("stop", {"force": "yes"}, "force must be true or false, not 'yes'"),
    ("migrate", {"max_bandwidth_mib_s": "fast"}, "max_bandwidth_mib_s must be a number of MiB/s from 1 to 100000"),
    ("migrate", {"node": 3}, "node must be a node name, not 3"),
    ("failover", {"ignore_consistency": 1}, "ignore_consistency must be true or false"),
    ("move", {}, "node must be a node name, not None"),
    ("replace-secondary", {"node": ""}, "node must be a node name"),
    ("reboot", {"type": "cold"}, "type must be soft or hard, not 'cold'"),
])
def test_wrong_types_and_ranges_are_refused_naming_the_field(action, body, field):
    with pytest.raises(BadRequest, match=field.replace("(", r"\(")):
        action_params(action, body)
