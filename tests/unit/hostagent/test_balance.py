"""Corral's balancer (hostagent.master.decide.balance) against hbal's own plans on the same htools files.

Known answers: what Debian's hbal 3.0.2 (`hbal -t FILE -G GROUP`) printed for the data sets of its
ganeti-testsuite where it moves something ("Cluster score improved from X to Y", the solution's length);
Corral's plan must end at the same score with no more moves. Where hbal moves nothing, Corral must not
either (soft errors: test_balance_soft_errors). The live test runs hbal again on every data set when it is installed (make test installs it).
"""

import re
import subprocess
from pathlib import Path

import pytest
from ganeti_data import HTOOLS_DATA, data_set_groups, htool, unavailable

from hostagent.master.decide import htools
from hostagent.master.decide.balance import Move, plan, steps_of
from hostagent.master.decide.htools_score import format_score

# (file, group) -> hbal's final score and moves
KNOWN = {
    ("hbal-desiredlocation-1.data", "group-01"): ("1.60937500", 1),
    ("hbal-desiredlocation-2.data", "group-01"): ("2.06413676", 2),
    ("hbal-desiredlocation-3.data", "group-01"): ("2.12221395", 1),
    ("hbal-desiredlocation-4.data", "group-01"): ("2.60937500", 1),
    ("hbal-dyn.data", "group-01"): ("0.03264811", 1),
    ("hbal-evac.data", "group-01"): ("0.26606742", 4),
    ("hbal-forth.data", "default"): ("0.00000000", 2),
    ("hbal-location-1.data", "group-01"): ("0.06250000", 5),
    ("hbal-location-2.data", "group-01"): ("2.89670030", 1),
    ("hbal-location-exclusion.data", "group-01"): ("1.98249548", 1),
    ("hbal-migration-1.data", "group-01"): ("4.91278575", 4),
    ("hbal-migration-2.data", "group-01"): ("2.92459186", 4),
    ("hbal-migration-3.data", "group-01"): ("2.88190356", 5),
    ("hspace-groups-one.data", "group-01"): ("2.64122994", 2),
    ("partly-used.data", "group-01"): ("2.05529971", 2),
    ("shared-n1-failure.data", "group-01"): ("2.34941019", 1),
    ("shared-n1-restriction.data", "group-01"): ("0.42793833", 2),
}


def load(name: str) -> htools.HtoolsCluster:
    path = HTOOLS_DATA / name
    if not path.exists():
        unavailable(f"Debian's ganeti-testsuite data sets are not there (no {path})")
    return htools.read_text(path.read_text())


@pytest.mark.parametrize("name, group", sorted(KNOWN))
def test_the_plan_ends_at_hbals_score_with_no_more_moves(name, group):
    score, moves = KNOWN[(name, group)]
    made = plan(load(name), group)
    assert format_score(made.final) == score and len(made.moves) <= moves, (made.moves, format_score(made.final))


def test_every_move_says_corral_s_operations_in_order():
    assert Move("i", "replace-and-failover", "n3", "n3", "n1").steps() == [("replace-secondary", "n3"),
                                                                           ("switchover", "")]
    assert Move("i", "failover", "", "n2", "n1").steps() == [("switchover", "")]


def test_the_moves_become_instance_jobs_that_follow_where_each_instance_is_after_the_last():
    moves = (Move("web1", "replace-primary", "n3", "n3", "n2", ("n1", "n2")),
             Move("db1", "failover-and-replace", "n3", "n2", "n3", ("n1", "n2")))
    steps = steps_of(moves, running=frozenset({"web1"}))
    assert [(s.action, s.instance, s.source, s.target) for s in steps] == [
        ("migrate", "web1", "n1", "n2"), ("replace-secondary", "web1", "n1", "n3"), ("migrate", "web1", "n2", "n3"),
        ("failover", "db1", "n1", "n2"), ("replace-secondary", "db1", "n1", "n3")]
    assert steps[2].describe() == "live-migrate instance 'web1' from node 'n2' to its secondary node 'n3'"
    with pytest.raises(ValueError, match="shared storage"):
        steps_of((Move("s", "failover-to-any", "n2", "n2", "", ("n1", "")),), frozenset())


def test_max_moves_and_a_group_without_nodes():
    made = plan(load("hbal-location-1.data"), "group-01", max_moves=2)
    assert len(made.moves) == 2 and made.final < made.initial
    with pytest.raises(ValueError, match="no node group"):
        plan(load("hbal-location-1.data"), "nosuch")


def _hbal(path: Path, group: str, *flags: str) -> tuple[str, int]:
    out = subprocess.run([htool("hbal"), "-t", str(path), "-G", group, *flags], capture_output=True, text=True,
                         timeout=60).stdout
    improved = re.search(r"Cluster score improved from \S+ to (\S+)", out)
    initial = re.search(r"Initial score: (\S+)", out)
    return (improved or initial)[1] if (improved or initial) else "", len(re.findall(r"^\s+\d+\. ", out, re.M))


@pytest.mark.parametrize("ignore_soft_errors", [False, True], ids=["default", "ignore-soft-errors"])
def test_on_every_data_set_the_plan_is_no_worse_than_hbal_run_now(ignore_soft_errors: bool):
    if not htool("hbal") or not HTOOLS_DATA.is_dir():
        unavailable("hbal or the data sets are not installed")
    compared = 0
    for path, cluster, group in data_set_groups():
        if not cluster.instances:
            continue
        theirs, their_moves = _hbal(path, group.name, *(["--ignore-soft-errors"] if ignore_soft_errors else []))
        if not theirs:
            continue
        made = plan(cluster, group.uuid, ignore_soft_errors=ignore_soft_errors)
        ours = format_score(made.final)
        assert ours == theirs and len(made.moves) <= their_moves, (path.name, group.name, ours, theirs)
        compared += 1
    assert compared >= 40
