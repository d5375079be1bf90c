"""The agent raises its own CPU priority once, and reports the niceness it was started with."""

import os
import subprocess
import sys

import pytest

from hostagent.node.priority import CONTROL_NICE

PROBE = ("import os; from hostagent.node.priority import raise_control_plane; "
         "base = raise_control_plane(); print(base, os.getpriority(os.PRIO_PROCESS, 0))")


def run_probe(start_nice: int) -> list[int]:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True,
                         preexec_fn=lambda: os.setpriority(os.PRIO_PROCESS, 0, start_nice))
    return [int(x) for x in out.stdout.split()]


pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="raising a CPU priority needs root")


def test_an_agent_started_at_the_usual_priority_runs_above_it_and_remembers_it() -> None:
    assert run_probe(0) == [0, CONTROL_NICE]


def test_an_agent_already_above_the_control_priority_is_left_there() -> None:
    assert run_probe(-10) == [-10, -10]
