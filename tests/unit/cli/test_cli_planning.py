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


def test_capacity_on_an_htools_file_says_how_many_fit_where_and_what_runs_out():
    """hspace 3.0.2 on this file (--standard-alloc=10240,1024,1): 23 drbd instances, then memory (FailMem)."""
    file = str(BUNDLED / "corral-unbalanced.data")
    done = corral("cluster", "capacity", "--from-htools", file, "--spec", "memory=1G,disk=10G,vcpus=1",
                  "--disk-template", "drbd", "--json")
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert (answer["instances"], answer["reason"], answer["runs_out"]) == (23, "FailMem", "memory")
    assert sum(answer["primaries"].values()) == 23 and set(answer["primaries"]) == {"n1", "n2", "n3"}
    human = corral("cluster", "capacity", "--from-htools", file, "--spec", "memory=1G,disk=10G,vcpus=1",
                   "--disk-template", "plain")
    assert "23 more instance(s) of 1G memory, 10G disk, 1 vCPU(s) fit (plain, N+1 kept)" in human.stdout, human
    assert "runs out first: N+1 redundancy" in human.stdout, human


@pytest.mark.parametrize("spec, said", [
    ("memory=1G,cpus=2", "give memory=SIZE,disk=SIZE,vcpus=N"),
    ("memory=lots", "--spec memory=lots:"),
    ("vcpus=0", "more than 0"),
    ("memory=1G,memory=2G", "each once"),
])
def test_capacity_refuses_a_bad_spec_with_the_reason(spec, said):
    done = corral("cluster", "capacity", "--from-htools", str(BUNDLED / "corral-unbalanced.data"), "--spec", spec)
    assert done.returncode == 2 and said in done.stderr, done
