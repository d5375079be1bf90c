"""Scheduled backups with a real guest on a one-node cluster: `corral instance modify --backup 20s --backup-keep 2`.

The master's duty (hostagent.master.duties.scheduled_backups) exports the running guest by itself every 20 s,
records each backup and each removal of an old one as an event, and keeps the newest 2; `--backup none`
stops it. A 20 s period is the shortest accepted (for tests and drills).
"""

from __future__ import annotations

import calendar
import re
import time

import pytest

from conftest import AgentNode, wait_boot_count, wait_for, wait_until

PERIOD_S = 20


def listed(node: AgentNode, instance: str) -> list[dict]:
    return node.json("backup", "list", instance)


def events(node: AgentNode, instance: str, kind: str) -> list[dict]:
    return [e for e in node.json("events", "--instance", instance, "--limit", "0") if e["kind"] == kind]


def exporting(node: AgentNode, instance: str) -> bool:
    return any(j["op"] == "backup.export" and f"'{instance}'" in j["summary"] and j["status"] in ("queued", "running")
               for j in node.json("job", "list"))


@pytest.mark.timeout(240)
def test_scheduled_backups_come_by_themselves_pruned_to_keep_and_stop_with_none(one_node):
    node = one_node
    node.ok("instance", "add", "sb1", "--os", "busybox-guest", "--memory", "128M", "--disk", "64M")
    try:
        wait_boot_count(node, "sb1", 1)
        jobs = len(node.json("job", "list"))
        for args, said in ((["--backup", "5s"], "is 5 s: a period must be from 20 s"),
                           (["--backup", "monthly"], "give hourly, daily, weekly, a duration of at least 20 s"),
                           (["--backup", "20s", "--backup-to", "/tmp"], "/tmp is not an export directory of node 'n1'"),
                           (["--backup-keep", "zero"], "is not a whole number of backups"),
                           (["--backup-keep", "0"], "from 1 to 1000")):
            refused = node.corral("instance", "modify", "sb1", *args)
            assert refused.returncode != 0 and said in refused.stderr, (args, refused)
        assert len(node.json("job", "list")) == jobs, "refused at submit: no job"
        assert listed(node, "sb1") == []

        said = node.ok("instance", "modify", "sb1", "--backup", f"{PERIOD_S}s", "--backup-keep", "2")
        assert f"the master backs up 'sb1' every {PERIOD_S} s (live while it runs)" in said, said
        assert "keeping the newest 2 there" in said, said
        first = wait_for(lambda: listed(node, "sb1"), PERIOD_S + 30, "the first scheduled backup, made at once")
        assert first[0]["consistency"] == "crash", "the running guest is exported live"
        made = wait_for(lambda: len(events(node, "sb1", "backup-made")) >= 3 and events(node, "sb1", "backup-made"),
                        3 * PERIOD_S + 40, "three scheduled backups, each reported as an event")
        assert all("scheduled backup of instance 'sb1' made: n1:" in e["message"] for e in made), made
        pruned = wait_for(lambda: events(node, "sb1", "backup-pruned"), 30, "an old backup pruned, as an event")
        assert "only the newest 2 are kept in its export directory" in pruned[0]["message"], pruned
        wait_for(lambda: len(listed(node, "sb1")) <= 2, 30, "`backup list` to show at most 2 backups of sb1")
        ids = sorted(re.search(r"/sb1/(\d{8}T\d{6}Z)", e["message"]).group(1) for e in made)
        taken = [calendar.timegm(time.strptime(i, "%Y%m%dT%H%M%SZ")) for i in ids]
        assert all(b - a >= PERIOD_S - 1 for a, b in zip(taken, taken[1:])), f"one backup per period, not more: {ids}"
        assert not events(node, "sb1", "backup-failed")

        info = node.json("instance", "info", "sb1")["backup"]
        assert (info["schedule"], info["keep"], info["keep_own"]) == (f"{PERIOD_S}s", 2, 2), info
        assert info["last"] and info["next_due"] and info["next_due"] <= info["last"] + PERIOD_S + 1, info
        shown = node.ok("instance", "info", "sb1")
        assert f"backups:      every {PERIOD_S} s, keep 2" in shown, shown
        assert not [f for f in node.json("cluster", "verify") if f["code"] == "backup-overdue"]

        node.ok("instance", "modify", "sb1", "--backup", "none")
        wait_for(lambda: not exporting(node, "sb1"), 60, "the scheduled export under way to end")
        count = len(events(node, "sb1", "backup-made"))
        names = {b["backup_id"] for b in listed(node, "sb1")}
        assert not wait_until(lambda: len(events(node, "sb1", "backup-made")) > count or exporting(node, "sb1"),
                              timeout_s=PERIOD_S + 5, interval_s=1.0), "a backup was made after --backup none"
        assert {b["backup_id"] for b in listed(node, "sb1")} <= names
        assert "backups:      none scheduled" in node.ok("instance", "info", "sb1")
    finally:
        node.corral("instance", "remove", "sb1")
