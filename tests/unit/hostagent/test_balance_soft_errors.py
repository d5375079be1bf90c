"""hbal's soft errors in Corral's balancer (hostagent.master.decide.balance, htools_checks): by default a move
must pass hbal's soft checks on every node it adds to, even a node already over its policy (which then takes
nothing more); with ignore_soft_errors only the hard checks (memory, disk) apply, as `hbal
--ignore-soft-errors`.

Known answers: what Debian's hbal 3.0.2 printed (`hbal -t FILE -G GROUP [--ignore-soft-errors]`: "No solution
found", or "Cluster score improved from X to Y" and the solution's length) on the data sets of its
ganeti-testsuite whose nodes violate their policy ("The cluster contains N policy-violating nodes") or fail
N+1. The live test runs hbal --ignore-soft-errors again on every data set when it is installed.
"""

import json
import subprocess
import sys

import pytest
from ganeti_data import HTOOLS_DATA, unavailable

from hostagent.master.decide import htools
from hostagent.master.decide.balance import plan, rules_of
from hostagent.master.decide.htools_checks import MoveChecks
from hostagent.master.decide.htools_score import format_score
from hostagent.master.decide.htools_search import Search

# file -> hbal's (initial score) with no move by default, and (final score, moves) with --ignore-soft-errors
KNOWN = {
    "hbal-soft-errors.data": ("39.36461987", ("0.23138069", 18)),  # 3 nodes over the spindle ratio (32 x 1)
    "hbal-soft-errors2.data": ("3.21875000", ("0.03125000", 1)),  # 2 nodes over the spindle ratio (1 x 1)
    "n1-failure.data": ("22.37526844", ("3.57768081", 8)),  # 4 nodes failing N+1, with no free memory
}


def load(name: str) -> htools.HtoolsCluster:
    path = HTOOLS_DATA / name
    if not path.exists():
        unavailable(f"Debian's ganeti-testsuite data sets are not there (no {path})")
    return htools.read_text(path.read_text())


@pytest.mark.parametrize("name", sorted(KNOWN))
def test_by_default_nodes_over_their_policy_take_nothing_more_so_nothing_moves(name):
    made = plan(load(name))
    assert not made.moves and format_score(made.final) == KNOWN[name][0]


@pytest.mark.parametrize("name", sorted(KNOWN))
def test_ignoring_soft_errors_ends_at_hbals_score_with_no_more_moves(name):
    score, moves = KNOWN[name][1]
    made = plan(load(name), ignore_soft_errors=True)
    assert format_score(made.final) == score and len(made.moves) <= moves, (made.moves, format_score(made.final))


def test_a_replace_primary_first_needs_the_memory_on_the_old_secondary():
    # new-0 runs on node-01-004 with its copy on node-01-003, which has no free memory: hbal's replace-primary
    # fails it over to node-01-003 first, so it is refused, soft errors ignored or not (a hard check)
    cluster = load("n1-failure.data")
    state = Search(cluster, cluster.groups[0].uuid)
    inst = state.instances["new-0"]
    for force in (False, True):
        checks = MoveChecks(state, inst, rules_of(cluster, cluster.groups[0]), force)
        assert checks.refusal("replace-primary", "node-02-001") == "memory"
        assert checks.refusal("failover-and-replace", "node-02-001") == "memory"
    # a replace-and-failover takes the memory on the target: only the old primary's new secondary role is a
    # soft error there (it keeps less free memory than the instance's)
    assert MoveChecks(state, inst, rules_of(cluster, cluster.groups[0]), False).refusal(
        "replace-and-failover", "node-02-001") == "memory"
    assert MoveChecks(state, inst, rules_of(cluster, cluster.groups[0]), True).refusal(
        "replace-and-failover", "node-02-001") == ""


def test_a_node_over_its_spindle_ratio_takes_no_more_local_disks_but_gives_them_away():
    cluster = load("hbal-soft-errors.data")  # 54 drbd instances of spindle use 1 on nodes of 1 spindle
    state = Search(cluster, cluster.groups[0].uuid)
    rules = rules_of(cluster, cluster.groups[0])
    inst = state.instances["seq1"]  # on dv-02, its copy on dv-04
    assert MoveChecks(state, inst, rules, False).refusal("failover", "") == "disk"
    assert MoveChecks(state, inst, rules, True).refusal("failover", "") == ""


def test_the_cli_option_on_an_htools_file():
    path = HTOOLS_DATA / "hbal-soft-errors2.data"
    if not path.exists():
        unavailable(f"Debian's ganeti-testsuite data sets are not there (no {path})")
    answers = []
    for extra in ((), ("--ignore-soft-errors",)):
        done = subprocess.run([sys.executable, "-m", "cli.main", "cluster", "balance", "--from-htools", str(path),
                               "--json", *extra], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        answers.append(json.loads(done.stdout))
    assert (answers[0]["final_score"], answers[0]["moves"]) == ("3.21875000", [])
    assert (answers[1]["final_score"], len(answers[1]["moves"])) == ("0.03125000", 1)
