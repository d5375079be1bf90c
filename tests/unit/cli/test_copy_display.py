"""What `instance list`, `instance info`, `cluster info` and a job's progress line print about copies under way,
from the agent's answers (rows as hostagent.views builds them)."""

import argparse
from typing import Any

from cli import cluster, instance_show
from cli.common import Context, progress_line
from hostagent.views import instance_row, redundancy

NOW = 1_000_000.0
FULL = {"index": 0, "status": "syncing", "percent": 45.0, "eta_s": 130.0, "remaining_mib": 2080, "error": "", "gen": 1}
IN_SYNC = {"index": 0, "status": "in_sync", "percent": 100.0, "eta_s": 0.0, "remaining_mib": 0, "error": "", "gen": 1,
           "last_sync": {"mode": "incremental", "copied_mib": 3.2, "seconds": 0.4, "pause_ms": 12}}


class FakeClient:
    def __init__(self, data: Any) -> None:
        self.data = data

    def get(self, url: str) -> dict[str, Any]:
        return {"data": self.data, "replica": {}}


def run(handler, data: Any, **args: Any) -> None:
    handler(Context(argparse.Namespace(json=False, **args), FakeClient(data)))  # type: ignore[arg-type]


def inst(name: str, in_sync: bool = True, secondary: str | None = "n2") -> dict[str, Any]:
    return {"name": name, "uuid": "u", "os": "img", "disk_template": "mirror" if secondary else "file",
            "memory_mib": 256, "vcpus": 1, "primary_node": "n1", "secondary_node": secondary, "admin_state": "up",
            "disks": [{"index": 0, "size_mib": 4096, "format": "raw", "uuid": "d0"}], "nics": [], "hvparams": {},
            "ctime": 0, "mtime": 0, "replica": {"in_sync": in_sync, "gen": 1, "why": "resyncing"}}


def reports(mirrors: dict[str, list[dict[str, Any]]], running: list[str], n2_age: float = 1.0) -> dict[str, Any]:
    return {"n1": {"node": "n1", "time": NOW - 1, "mirrors": mirrors,
                   "instances": {n: {"pid": 7, "status": "running"} for n in running}},
            "n2": {"node": "n2", "time": NOW - n2_age, "instances": {}}}


def test_instance_list_has_a_short_copy_column(capsys):
    got = reports({"db1": [FULL], "db2": [IN_SYNC]}, ["db1", "db2", "web"])
    rows = [instance_row(i, got, NOW) for i in (inst("db1", in_sync=False), inst("db2"), inst("web", secondary=None))]
    run(instance_show.show_list, rows, tag=None, node=None, status=None, owner=None, output=None)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:5] == ["INSTANCE", "STATUS", "NODE", "TEMPLATE", "COPY"]
    assert "mirror    sync 45% 2m" in lines[1]
    assert "mirror    in sync" in lines[2]
    assert "file      -" in lines[3]


def test_instance_info_shows_each_disks_progress_and_its_last_resync(capsys):
    row = instance_row(inst("db1", in_sync=False), reports({"db1": [FULL]}, ["db1"]), NOW)
    run(instance_show.info, {**row, "auto_failover_default": False}, name="db1")
    out = capsys.readouterr().out
    assert "replication:  to n2: syncing 45.0 %, about 2 min left\n" in out
    assert "disk 0:       mirror 4G raw on n1 + n2, syncing 45.0 %, 2.0 GiB to copy at 16.0 MiB/s, " \
           "about 2 min left\n" in out
    row = instance_row(inst("db1"), reports({"db1": [IN_SYNC]}, ["db1"]), NOW)
    run(instance_show.info, row, name="db1")
    out = capsys.readouterr().out
    assert "disk 0:       mirror 4G raw on n1 + n2, in sync\n" \
           "              last resync: only the changes, 3.2 MiB in 0.4 s (guest paused 12 ms to join)\n" in out


def test_instance_info_says_why_there_is_no_copy_in_sync_now(capsys):
    row = instance_row(inst("db1"), reports({"db1": [IN_SYNC]}, ["db1"], n2_age=120), NOW)
    run(instance_show.info, row, name="db1")
    assert "              no second copy in sync now: secondary node 'n2' down: no report for 120 s\n" \
        in capsys.readouterr().out


def test_cluster_info_counts_and_names_the_instances_without_a_copy_in_sync():
    got = reports({"a": [IN_SYNC], "b": [FULL], "c": [{**FULL, "eta_s": None}]}, ["a", "b", "c"])
    got["n3"] = {"node": "n3", "time": NOW - 400, "instances": {}}
    data = redundancy([inst("a"), inst("b", False), inst("c", False), {**inst("d"), "secondary_node": "n3"}],
                      got, NOW)
    lines = cluster.redundancy_lines(data)
    assert lines[0] == "redundancy:   3 of 4 replicated instance(s) without a second copy in sync now: b, c, d"
    assert lines[1] == "              being copied: b (syncing 45.0 %, about 2 min left); c (syncing 45.0 %, ETA " \
                       "being measured)"
    assert lines[2].startswith("              the last of them in sync again in about 2 min (by ")
    assert lines[2].endswith("; the ETA of c is being measured")
    assert lines[3] == "              not being copied: d (secondary node 'n3' down: no report for 400 s): when " \
                       "it is in sync again is unknown"
    assert cluster.redundancy_lines(redundancy([inst("a")], got, NOW)) == [
        "redundancy:   all 1 replicated instance(s) have their second copy in sync"]
    assert cluster.redundancy_lines(None) == [] and cluster.redundancy_lines(redundancy([], got, NOW)) == []


def test_a_jobs_progress_line_says_its_eta_is_being_measured_until_it_has_one():
    assert progress_line({"percent": 0.0, "text": "copying disk 0", "eta_s": None}) == \
        "    0.0% copying disk 0 ETA being measured"
    assert progress_line({"percent": 50.0, "text": "copying disk 0", "eta_s": 75}) == \
        "   50.0% copying disk 0 ETA 1m15s"
