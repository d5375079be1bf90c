"""Parsers of Serf RPC records, fed records captured from a real serf 0.8.2 (msgpack-decoded)."""

from __future__ import annotations

from typing import Any

import pytest

from membership.errors import SerfProtocolError
from membership.members import (Member, MemberEvent, UserEvent, check_stream_types, parse_addr, parse_event,
                                parse_members)

# `members` reply body from serf 0.8.2 (agent started with -tag role=x).
MEMBERS_BODY: dict[str, Any] = {"Members": [{
    "Addr": b"\x7f\x00\x00\x01", "DelegateCur": 5, "DelegateMax": 5, "DelegateMin": 2, "Name": "a",
    "Port": 17946, "ProtocolCur": 2, "ProtocolMax": 5, "ProtocolMin": 1, "Status": "alive",
    "Tags": {"role": "x"}}]}

# Stream records from serf 0.8.2 after `event` and `tags` commands.
USER_RECORD: dict[str, Any] = {"Coalesce": False, "Event": "user", "LTime": 2, "Name": "e2", "Payload": b"\xc0\xff"}
UPDATE_RECORD: dict[str, Any] = {"Event": "member-update", "Members": [{
    "Addr": b"\x7f\x00\x00\x01", "DelegateCur": 5, "DelegateMax": 5, "DelegateMin": 2, "Name": "a",
    "Port": 17946, "ProtocolCur": 2, "ProtocolMax": 5, "ProtocolMin": 1, "Status": "alive",
    "Tags": {"role": "x", "k": "w"}}]}


def test_members_reply_becomes_members_with_dotted_address() -> None:
    assert parse_members(MEMBERS_BODY) == [Member("a", "127.0.0.1", 17946, {"role": "x"}, "alive")]


def test_user_event_record_keeps_binary_payload_and_lamport_time() -> None:
    assert parse_event(USER_RECORD) == UserEvent("e2", b"\xc0\xff", 2, False)


def test_member_update_record_lists_the_affected_members() -> None:
    assert parse_event(UPDATE_RECORD) == MemberEvent(
        "member-update", (Member("a", "127.0.0.1", 17946, {"role": "x", "k": "w"}, "alive"),))


def test_user_event_without_payload_has_empty_bytes() -> None:
    assert parse_event({**USER_RECORD, "Payload": None}).payload == b""  # type: ignore[union-attr]


@pytest.mark.parametrize(("raw", "text"), [
    (b"\x7f\x00\x00\x02", "127.0.0.2"),
    (b"\x00" * 10 + b"\xff\xff" + b"\x7f\x00\x00\x03", "127.0.0.3"),
    (b"\x00" * 15 + b"\x01", "::1"),
])
def test_addresses_of_4_or_16_bytes_are_printed_the_usual_way(raw: bytes, text: str) -> None:
    assert parse_addr(raw) == text


@pytest.mark.parametrize("record", [
    {"Members": [{"Name": "a"}]},
    {"Members": [{**MEMBERS_BODY["Members"][0], "Addr": b"\x01\x02"}]},
    {"Members": None},
    [],
])
def test_members_reply_of_the_wrong_shape_is_a_protocol_error(record: Any) -> None:
    with pytest.raises(SerfProtocolError):
        parse_members(record)


@pytest.mark.parametrize("record", [
    {"Event": "query", "ID": 1, "LTime": 3, "Name": "q", "Payload": b""},
    {"Event": "user", "Name": "e"},
    {"Event": "member-join"},
])
def test_unexpected_stream_record_is_a_protocol_error(record: dict[str, Any]) -> None:
    with pytest.raises(SerfProtocolError, match="event record"):
        parse_event(record)


def test_stream_types_are_normalised() -> None:
    assert check_stream_types("member-join, member-failed ,user:deploy") == "member-join,member-failed,user:deploy"


@pytest.mark.parametrize("types", ["", "*", "query", "member-joined", "user:", "user,"])
def test_stream_types_this_client_cannot_handle_are_refused_with_the_allowed_names(types: str) -> None:
    with pytest.raises(ValueError, match="member-join, member-leave"):
        check_stream_types(types)
