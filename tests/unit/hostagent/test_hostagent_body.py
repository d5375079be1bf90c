"""Request bodies: a JSON object or a 400 that says why, never a 500 (hostagent.api.base.parse_body)."""

import pytest

from hostagent.api.base import MAX_BODY_DEPTH, parse_body
from hostagent.errors import BadRequest


def test_an_object_is_taken_as_it_is():
    assert parse_body(b'{"name": "db1", "size": "64M", "x": [1, {"y": "[[[[{{{{"}]}') == {
        "name": "db1", "size": "64M", "x": [1, {"y": "[[[[{{{{"}]}


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_refused_by_name(constant):
    with pytest.raises(BadRequest, match=f"holds {constant}"):
        parse_body(f'{{"failback_after_s": {constant}}}'.encode())


@pytest.mark.parametrize("raw", [b"[]", b'"x"', b"1", b"null", b"{", b"\xff\xfe", b""])
def test_anything_but_an_object_is_a_bad_request(raw):
    with pytest.raises(BadRequest, match="JSON object"):
        parse_body(raw)


def test_deep_nesting_is_refused_before_the_parser_recurses():
    with pytest.raises(BadRequest, match="nests deeper"):
        parse_body(b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    assert parse_body(b'{"a": ' + b"[" * (MAX_BODY_DEPTH - 1) + b"]" * (MAX_BODY_DEPTH - 1) + b"}")
    assert parse_body(b'{"a": "' + b"[" * 1000 + b'"}'), "brackets in strings do not nest"
    assert parse_body(b'{"a": "\\\\", "b": "[["}')
