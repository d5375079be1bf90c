"""`corral cluster balance --from-htools FILE`: the plan on a file, with no cluster (cli.planning)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BUNDLED = Path(__file__).resolve().parents[2] / "data" / "htools"
CORRAL = [sys.executable, "-m", "cli.main"]


def corral(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CORRAL, *args], capture_output=True, text=True, timeout=60)


def test_a_plan_on_an_htools_file_prints_the_moves_and_the_scores():
    """Five copies on n1:n2 and an empty n3: the plan hbal 3.0.2 prints for this file, move for move."""
    done = corral("cluster", "balance", "--from-htools", str(BUNDLED / "corral-unbalanced.data"), "--json")
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert (answer["initial_score"], answer["final_score"]) == ("10.21626848", "2.04739794")
    assert [(m["instance"], m["was"], f"{m['primary']}:{m['secondary']}") for m in answer["moves"]] == [
        ("web1", "n1:n2", "n3:n2"), ("web2", "n1:n2", "n2:n3"), ("web3", "n1:n2", "n3:n1"), ("web4", "n1:n2", "n2:n1")]
    assert answer["moves"][0]["operations"] == ["switchover", "replace-secondary n3", "switchover"]
    human = corral("cluster", "balance", "--from-htools", str(BUNDLED / "corral-unbalanced.data"), "--max-moves", "1")
    assert "Final score: 7.38202780 after 1 move(s)" in human.stdout, human


@pytest.mark.parametrize("args, said", [
    (("--from-htools", "/nonexistent/x.data"), "cannot read /nonexistent/x.data"),
    (("--from-htools", __file__), "is not an htools cluster file"),
    (("--group", "other"), "this cluster has one node group, default"),
    (("--max-moves", "-1"), "a number of moves, 0 or more"),
])
def test_bad_input_is_refused_with_the_reason(args, said):
    done = corral("cluster", "balance", *args)
    assert done.returncode == 2 and said in done.stderr, done
