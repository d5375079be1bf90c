"""FencingToken: ordering and its text form."""

from __future__ import annotations

import pytest

from election.lease import FencingToken


def test_a_later_win_compares_greater_whatever_the_lease_ids() -> None:
    older = FencingToken(revision=10, lease_id=0xFFFF_FFFF)
    newer = FencingToken(revision=11, lease_id=1)
    assert newer > older
    assert max([newer, older]) == newer
    assert FencingToken(revision=10, lease_id=2) > FencingToken(revision=10, lease_id=1)


def test_fields_cannot_be_passed_by_position() -> None:
    with pytest.raises(TypeError):
        FencingToken(1, 2)  # type: ignore[misc]


def test_text_form_round_trips() -> None:
    token = FencingToken(revision=1234, lease_id=0x694D81D2C1A4E80B)
    assert token.to_str() == "1234:694d81d2c1a4e80b"
    assert FencingToken.from_str(token.to_str()) == token


@pytest.mark.parametrize("text", ["", "1234", "x:1f", "12:zz", ":1f", "12:"])
def test_malformed_text_is_rejected_with_the_expected_format(text: str) -> None:
    with pytest.raises(ValueError, match="<revision>:<lease id in hex>"):
        FencingToken.from_str(text)
