"""Serf's member list in Corral's words: pure functions, no I/O, the clock passed in.

Serf says alive, leaving, left or failed. Corral says alive, failed or left
("leaving" is a left in progress). A failed node gets a reason an operator can
read ("no gossip for 40 s") from when this agent last saw it alive; the caller
keeps that map with `note_alive`. Gossip "failed" only starts the master's
clock: what authorizes recovery is the node's lease expiring (DESIGN.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from membership.members import Member

GossipStatus = Literal["alive", "failed", "left"]

_SERF_TO_CORRAL: dict[str, GossipStatus] = {"alive": "alive", "failed": "failed", "leaving": "left", "left": "left"}


@dataclass(frozen=True)
class NodeGossip:
    """One node's gossip state; last_alive is the caller's clock reading when it was last seen alive."""

    status: GossipStatus
    last_alive: float | None
    reason: str


def note_alive(members: Iterable[Member], now: float, last_seen: Mapping[str, float]) -> dict[str, float]:
    """A new last-seen map: every member Serf reports alive was seen at `now`; others keep their time."""
    updated = dict(last_seen)
    for member in members:
        if member.status == "alive":
            updated[member.name] = now
    return updated


def gossip_status(members: Iterable[Member], now: float, last_seen: Mapping[str, float]) -> dict[str, NodeGossip]:
    """Each member's Corral status and reason, by node name.

    A status Serf may add later (or "none") counts as failed, with a reason
    naming it: a node we cannot classify must not look healthy.
    """
    view: dict[str, NodeGossip] = {}
    for member in members:
        status = _SERF_TO_CORRAL.get(member.status, "failed")
        seen = now if member.status == "alive" else last_seen.get(member.name)
        view[member.name] = NodeGossip(status, seen, _reason(member.status, now, seen))
    return view


def _reason(serf_status: str, now: float, seen: float | None) -> str:
    if serf_status == "alive":
        return "gossiping"
    if serf_status == "leaving":
        return "leaving the cluster"
    if serf_status == "left":
        return "left the cluster"
    silence = "never seen alive by this node" if seen is None else f"no gossip for {format_duration(now - seen)}"
    if serf_status == "failed":
        return silence
    return f"serf reports status {serf_status!r}; {silence}"


def format_duration(seconds: float) -> str:
    """Operator-sized durations: "40 s", "12 min", "3 h"."""
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.0f} h"
