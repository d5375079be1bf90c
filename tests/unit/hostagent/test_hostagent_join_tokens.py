"""Join token records as `corral node tokens` shows them, and which the master sweeps away."""

import pytest

from hostagent.errors import BadRequest
from hostagent.node.joining import check_token, token_rows, token_state

RECORD = {"node": "n4", "address": "192.0.2.4", "created": 100.0, "expires": 200.0, "issued_by": "n1"}


def test_a_token_is_valid_until_it_expires_and_used_records_of_older_agents_count_as_used():
    assert [token_state(RECORD, now) for now in (150.0, 200.0, 200.5)] == ["valid", "valid", "expired"]
    assert token_state({**RECORD, "used_at": 120.0}, 150.0) == "used"


def test_the_listing_names_node_address_times_and_state_but_never_a_secret_or_hash():
    rows = token_rows([{**RECORD, "node": "n5", "created": 150.0}, RECORD], 300.0)
    assert [r["node"] for r in rows] == ["n4", "n5"]  # oldest first
    assert rows[0] == {"node": "n4", "address": "192.0.2.4", "created": 100.0, "expires": 200.0,
                       "issued_by": "n1", "state": "expired", "used": False}


def test_a_token_no_longer_in_the_config_is_refused_saying_what_may_have_happened():
    with pytest.raises(BadRequest, match="never issued by this cluster, or it was used, revoked or expired"):
        check_token(None, "n4", "192.0.2.4", 150.0)
