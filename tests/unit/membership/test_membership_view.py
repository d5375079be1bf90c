"""Serf's member list in Corral's words: pure, the clock passed in."""

from __future__ import annotations

import pytest

from membership.members import Member
from membership.view import NodeGossip, format_duration, gossip_status, note_alive


def member(name: str, status: str) -> Member:
    return Member(name, "127.0.0.1", 7946, {}, status)


def test_alive_member_is_alive_now() -> None:
    assert gossip_status([member("n1", "alive")], 100.0, {}) == {"n1": NodeGossip("alive", 100.0, "gossiping")}


def test_failed_member_says_how_long_it_has_been_silent() -> None:
    view = gossip_status([member("n2", "failed")], 100.0, {"n2": 60.0})

    assert view["n2"] == NodeGossip("failed", 60.0, "no gossip for 40 s")


def test_failed_member_never_seen_alive_says_so() -> None:
    assert gossip_status([member("n3", "failed")], 100.0, {})["n3"] == NodeGossip(
        "failed", None, "never seen alive by this node")


@pytest.mark.parametrize(("serf", "reason"), [("leaving", "leaving the cluster"), ("left", "left the cluster")])
def test_leaving_and_left_are_both_left(serf: str, reason: str) -> None:
    assert gossip_status([member("n4", serf)], 100.0, {"n4": 90.0})["n4"] == NodeGossip("left", 90.0, reason)


def test_status_corral_does_not_know_counts_as_failed_and_names_it() -> None:
    view = gossip_status([member("n5", "none")], 100.0, {"n5": 95.0})

    assert view["n5"] == NodeGossip("failed", 95.0, "serf reports status 'none'; no gossip for 5 s")


def test_note_alive_moves_alive_members_forward_and_keeps_the_others() -> None:
    members = [member("n1", "alive"), member("n2", "failed")]
    before = {"n1": 10.0, "n2": 10.0}

    after = note_alive(members, 50.0, before)

    assert after == {"n1": 50.0, "n2": 10.0}
    assert before == {"n1": 10.0, "n2": 10.0}


def test_a_node_that_fails_after_being_seen_reports_silence_since_then() -> None:
    last_seen = note_alive([member("n1", "alive")], 1000.0, {})

    view = gossip_status([member("n1", "failed")], 1000.0 + 3 * 60, last_seen)

    assert view["n1"].reason == "no gossip for 3 min"


@pytest.mark.parametrize(("seconds", "text"), [(0.4, "0 s"), (40.2, "40 s"), (119, "119 s"), (600, "10 min"),
                                               (3 * 3600, "3 h"), (-5, "0 s")])
def test_durations_are_operator_sized(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
