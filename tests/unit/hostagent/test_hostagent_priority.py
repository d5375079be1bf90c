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


GROUP_PROBE = ("import os, sys; from hostagent.node.priority import raise_session; "
               "print(raise_session(-5, sys.argv[1]))")


@pytest.mark.parametrize("own_session", [True, False])
def test_the_session_group_is_raised_only_by_an_agent_that_leads_its_session(tmp_path, own_session) -> None:
    """Under systemd the agent leads its session and its group is its own; started from a shell, it is not."""
    group = tmp_path / "autogroup"
    group.write_text("")
    out = subprocess.run([sys.executable, "-c", GROUP_PROBE, str(group)], capture_output=True, text=True,
                         check=True, start_new_session=own_session)
    assert out.stdout.split() == [str(own_session)]
    assert group.read_text() == ("-5" if own_session else "")


@pytest.mark.skipif(not os.path.exists("/proc/self/autogroup"), reason="no autogroups in this kernel")
def test_an_agent_leading_its_session_raises_its_autogroup_with_its_nice() -> None:
    probe = ("from hostagent.node.priority import raise_control_plane; raise_control_plane(); "
             "print(open('/proc/self/autogroup').read())")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                         start_new_session=True)
    assert out.stdout.split()[-1] == str(CONTROL_NICE)
