"""The balancer's estimates from shared parts (hostagent.master.decide.htools_estimate) change no plan.

Why: the estimator only skips moves it shows cannot beat the best; the plan must be the one every move's own
trial gives, move for move and score for score, on Ganeti's data sets (locations, exclusion tags, forthcoming
instances, migration tags, offline nodes) and on a generated unbalanced cluster where most moves are skipped.
"""

import sys
from pathlib import Path

import pytest
from ganeti_data import HTOOLS_DATA, data_set_groups, unavailable

from hostagent.master.decide import balance, htools

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from bench.balance import generated  # noqa: E402


def _plans(cluster: htools.HtoolsCluster, group: str, max_moves: int = 1000) -> list[balance.Plan]:
    made = []
    for threshold in (10**9, 0):  # never estimated; estimated at any size
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(balance, "ESTIMATE_FROM", threshold)
            made.append(balance.plan(cluster, group, max_moves))
    return made


def test_on_every_data_set_the_estimates_change_no_move():
    if not HTOOLS_DATA.is_dir():
        unavailable("the htools data sets are not installed")
    compared = 0
    for path, cluster, group in data_set_groups():
        try:
            plain, estimated = _plans(cluster, group.uuid)
        except ValueError:
            continue  # a group the balancer refuses (no instances), either way
        assert (plain.moves, plain.final) == (estimated.moves, estimated.final), (path.name, group.name)
        compared += 1
    assert compared >= 40, f"only {compared} groups compared"


def test_on_a_generated_cluster_the_estimates_change_no_move():
    cluster = htools.read_text(generated(10, 100, seed=10100))
    plain, estimated = _plans(cluster, cluster.groups[0].uuid, max_moves=25)
    assert len(plain.moves) == 25
    assert (plain.moves, plain.final) == (estimated.moves, estimated.final)
