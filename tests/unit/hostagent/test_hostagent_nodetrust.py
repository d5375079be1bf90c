"""Which node certificates an agent accepts: members only, with the serial recorded for them."""

from __future__ import annotations

from hostagent.node.nodetrust import refusal


def test_a_member_with_its_recorded_certificate_is_accepted():
    assert refusal({"name": "n2", "cert_serials": ["ab12"]}, "n2", "ab12") is None
    assert refusal({"name": "n2", "cert_serials": ["ab12", "cd34"]}, "n2", "cd34") is None  # mid-rotation


def test_a_removed_node_or_another_certificate_is_refused():
    assert "not a member of this cluster" in refusal(None, "n9", "ab12")
    assert "not the one the cluster recorded" in refusal({"name": "n2", "cert_serials": ["ab12"]}, "n2", "ffff")
    assert "serial unknown" in refusal({"name": "n2", "cert_serials": ["ab12"]}, "n2", None)
    assert refusal({"name": "n2", "cert_serials": []}, "n2", "ab12") is not None


def test_a_node_recorded_before_serials_were_is_accepted_until_the_master_records_one():
    assert refusal({"name": "n2"}, "n2", "ab12") is None
