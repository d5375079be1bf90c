"""Serf's member and event records as Corral values, and their pure parsers.

Kept apart from the RPC connection so the parsers can be tested on records
captured from a real serf 0.8.2 without a socket, and so pure code (the view)
can use the values without importing the network client.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from membership.errors import SerfProtocolError

MEMBER_EVENT_TYPES = ("member-join", "member-leave", "member-failed", "member-update", "member-reap")
"""Member event names Serf sends on a stream; each record lists the affected members."""


@dataclass(frozen=True)
class Member:
    """One node as the local Serf agent sees it; status is Serf's word (alive, leaving, left, failed)."""

    name: str
    addr: str
    port: int
    tags: dict[str, str]
    status: str


@dataclass(frozen=True)
class MemberEvent:
    """A membership change; Serf coalesces these, so poll members() as well (see MEASURED.md)."""

    type: str
    members: tuple[Member, ...]


@dataclass(frozen=True)
class UserEvent:
    """A user event gossiped by some node; ltime is Serf's Lamport time, which orders events."""

    name: str
    payload: bytes
    ltime: int
    coalesce: bool


SerfEvent = MemberEvent | UserEvent


def parse_addr(raw: object) -> str:
    """Serf sends an address as 4 or 16 raw bytes; IPv4-mapped IPv6 comes back dotted."""
    if not isinstance(raw, bytes) or len(raw) not in (4, 16):
        raise SerfProtocolError("address", raw)
    ip = ipaddress.ip_address(raw)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def parse_member(record: Mapping[str, Any]) -> Member:
    try:
        return Member(name=str(record["Name"]), addr=parse_addr(record["Addr"]), port=int(record["Port"]),
                      tags={str(k): str(v) for k, v in (record["Tags"] or {}).items()},
                      status=str(record["Status"]))
    except (KeyError, TypeError, AttributeError) as exc:
        raise SerfProtocolError("member record", record) from exc


def parse_members(body: Mapping[str, Any]) -> list[Member]:
    """The body of a members / members-filtered reply."""
    members = body.get("Members") if isinstance(body, Mapping) else None
    if not isinstance(members, list):
        raise SerfProtocolError("members reply", body)
    return [parse_member(m) for m in members]


def parse_event(record: Mapping[str, Any]) -> SerfEvent:
    """One record of a stream; only member and user events are subscribed to, so others are malformed."""
    kind = record.get("Event") if isinstance(record, Mapping) else None
    try:
        if kind in MEMBER_EVENT_TYPES:
            return MemberEvent(type=str(kind), members=tuple(parse_member(m) for m in record["Members"]))
        if kind == "user":
            payload = record["Payload"]
            return UserEvent(name=str(record["Name"]), payload=bytes(payload or b""),
                             ltime=int(record["LTime"]), coalesce=bool(record["Coalesce"]))
    except (KeyError, TypeError) as exc:
        raise SerfProtocolError("event record", record) from exc
    raise SerfProtocolError("event record", record)


def check_stream_types(types: str) -> str:
    """Validate a stream filter before sending it, so a typo fails here with the allowed names.

    Query events are refused: they would need answers this client does not give.
    """
    names = [t.strip() for t in types.split(",")]
    bad = [t for t in names if not (t in MEMBER_EVENT_TYPES or t == "user" or (t.startswith("user:") and len(t) > 5))]
    if bad:
        raise ValueError(f"unsupported serf stream type(s) {bad!r}; use a comma-separated list of "
                         f"{', '.join(MEMBER_EVENT_TYPES)}, user or user:NAME")
    return ",".join(names)
