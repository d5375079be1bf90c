"""Whether a secondary's copy may be started from: pure rules over the master's replica record.

The master keeps one record per replicated instance at
/corral/replicas/<name>, apart from the instance record so that no job
writing the instance back can undo an outdate:

    {"gen": 7, "in_sync": true, "since": t, "why": "...", "judged_from": {...},
     "last_degraded": {"at": t, "pause_ms": 40, "reason": "..."}}

- ``gen`` counts the copies the master asked for: every new mirror (protect)
  and every outdate raises it. The primary reports each disk with the
  ``gen`` it was attached under, so a report made before an outdate can
  never mark the copy in sync again.
- ``in_sync`` becomes true only from a primary's report in which every disk
  is ``in_sync`` (the copy is a child of the disk's quorum, kvm.blockmirror)
  under the current ``gen``, written with a compare on the record's revision.
  Anything else clears it.
- A copy is trusted for a failover only if its record says in sync and the
  primary's last report does not say otherwise (``trusted``).

The record is the template's, not the mirror's: the DRBD template's
fence-peer handler (``fencing resource-only``) is to outdate its peer the
same way, through the master's /v1/node/replica-outdated, before DRBD lets
the primary write alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Disk states under which every acknowledged write is on the copy: joined, or joined with a write held.
JOINED = ("in_sync", "blocked")


def trusted(record: Mapping[str, Any] | None, report: Mapping[str, Any] | None, name: str) -> tuple[bool, str]:
    """(may fail over onto the copy, why not)."""
    if not record or not record.get("in_sync"):
        return False, out_of_date_words(record)
    states = ((report or {}).get("mirrors") or {}).get(name) or []
    for s in states:
        if s.get("status") not in JOINED or s.get("gen") != record.get("gen"):
            return False, (f"not to be trusted: the primary's last report says its disk {s.get('index')} is "
                           f"{s.get('status')} (copy generation {s.get('gen')}, recorded {record.get('gen')})")
    return True, ""


def judge(record: Mapping[str, Any], states: list[Mapping[str, Any]], report_time: float,
          now: float) -> dict[str, Any] | None:
    """The record to write after a fresh report from the primary, or None to leave it as it is."""
    gen = record.get("gen")
    joined = bool(states) and all(s.get("status") == "in_sync" and s.get("gen") == gen for s in states)
    if joined and not record.get("in_sync"):
        return {**record, "in_sync": True, "since": now,
                "why": "every disk's copy is a member of its quorum",
                "judged_from": {"report_time": report_time, "gen": gen}}
    if not joined and record.get("in_sync"):
        return outdated(record, "the primary reports " + ", ".join(
            f"disk {s.get('index')} {s.get('status')}" for s in states) if states else
            "the primary reports no copy", now)
    return None


def already_outdated(record: Mapping[str, Any], gen: Any) -> bool:
    """A primary asks to outdate the copy of generation `gen`; the record moved past it (the master
    outdated it itself, or a new copy began): nothing to record, the copy of `gen` is trusted no more."""
    return isinstance(gen, int) and not isinstance(gen, bool) and gen < int(record.get("gen") or 0)


def outdated(record: Mapping[str, Any], why: str, now: float) -> dict[str, Any]:
    """The record once the copy is out of date: its generation ends, so no older report revives it."""
    return {**record, "gen": int(record.get("gen") or 0) + 1, "in_sync": False,
            "since": now if record.get("in_sync", True) else record.get("since", now), "why": why}


def new_copy(record: Mapping[str, Any], now: float) -> dict[str, Any]:
    """The record when the master starts a new mirror: a generation of its own, not in sync."""
    since = record.get("since", now) if not record.get("in_sync") else now
    return {**record, "gen": int(record.get("gen") or 0) + 1, "in_sync": False, "since": since,
            "why": record.get("why") if not record.get("in_sync") else "a new copy is being made"}


def out_of_date_words(record: Mapping[str, Any] | None) -> str:
    if not record:
        return "not in sync (no copy of it was ever recorded in sync)"
    return f"not in sync ({record.get('why') or 'no reason recorded'})"


def with_trust(instances: list[dict[str, Any]], replicas: Mapping[str, Mapping[str, Any]],
               reports: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Instance records with ``replica_in_sync`` set from their replica record (for the decisions)."""
    return [{**i, "replica_in_sync": trusted(replicas.get(i["name"]), reports.get(i["primary_node"]),
                                             i["name"])[0]} for i in instances]
