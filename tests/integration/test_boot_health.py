"""Boot health on a real one-node cluster: the node watches each TCG guest's console for its boot pattern.

The test guest prints "CORRAL-GUEST-BOOTED count=N" once it has booted from
its disk (packaging/guest/init). The tests share one cluster and the
instances `good1` and `mute1`, made by fixtures: each test also passes alone.
"""

from __future__ import annotations

import pytest

from conftest import AgentNode, wait_for

pytestmark = pytest.mark.integration
BOOTED = "CORRAL-GUEST-BOOTED count=[0-9]+"


def add(node: AgentNode, name: str, *args: str) -> None:
    node.ok("instance", "add", name, "--os", "busybox-guest", "--memory", "96M", "--disk", "64M", *args)


def refused(node: AgentNode, *args: str) -> str:
    result = node.corral(*args)
    assert result.returncode == 2, f"corral {' '.join(args)} was not refused:\n{result.stdout}{result.stderr}"
    return result.stderr


@pytest.fixture(scope="module")
def good1(one_node) -> str:
    """An instance whose pattern its guest prints."""
    add(one_node, "good1", "--boot-pattern", BOOTED, "--boot-timeout", "60")
    return "good1"


@pytest.fixture(scope="module")
def mute1(one_node) -> str:
    """An instance whose pattern its guest never prints, once the master has given it up."""
    add(one_node, "mute1", "--boot-pattern", "NEVER-PRINTED", "--boot-timeout", "3")
    wait_for(lambda: one_node.instance("mute1")["status"] == "failed", 150, "the master to give mute1 up")
    return "mute1"


def test_a_guest_that_prints_its_boot_pattern_shows_boot_up(one_node, good1):
    row = wait_for(lambda: (r := one_node.instance("good1"))["boot"] == "up" and r, 60, "good1 to boot")
    assert (row["status"], row["reason"], row["boot_pattern"], row["boot_timeout_s"]) == \
        ("running", "", BOOTED, 60.0)
    info = one_node.ok("instance", "info", "good1")
    assert f"boot check:   a console line matching '{BOOTED}' within 60 s (this boot: up)" in info
    assert "auto failover: default (no)" in info


def test_a_guest_that_never_prints_its_pattern_is_restarted_then_failed_with_its_console(one_node, mute1):
    reason = "did not boot: no console line matching 'NEVER-PRINTED' within 3 s"
    info = one_node.json("instance", "info", "mute1")
    assert info["reason"] == f"gave up after 5 start attempts on node 'n1': {reason}"
    # the last boot's own console: firmware first, then (unless the machine is slow) the guest's marker
    assert any(line.startswith("SeaBIOS") or "CORRAL-GUEST-BOOTED" in line for line in info["console_tail"]), \
        info["console_tail"]
    events = one_node.json("events", "--instance", "mute1", "--limit", "0")
    assert [e["kind"] for e in events] == ["restart"] * 5 + ["give-up"], events
    assert events[0]["message"] == (f"instance 'mute1' is marked up but {reason}: starting it on node 'n1' "
                                    "(attempt 1 of 5)")
    wait_for(lambda: one_node.instance("mute1")["pid"] is None, 20, "the given-up QEMU to be stopped")
    result = one_node.corral("cluster", "verify")
    assert result.returncode == 1 and f"instance 'mute1': gave up after 5 start attempts on node 'n1': {reason}" \
        in result.stdout


def test_modify_fixes_the_pattern_and_refuses_what_would_never_start(one_node, good1, mute1):
    out = one_node.ok("instance", "modify", "mute1", "--boot-pattern", BOOTED, "--boot-timeout", "90",
                      "--priority", "high", "--after", "good1", "--auto-failover", "no")
    assert "instance 'mute1': boot_pattern 'NEVER-PRINTED' -> 'CORRAL-GUEST-BOOTED count=[0-9]+'" in out
    one_node.ok("instance", "start", "mute1")
    wait_for(lambda: one_node.instance("mute1")["boot"] == "up", 90, "mute1 to boot with its new pattern")
    info = one_node.json("instance", "info", "mute1")
    assert (info["status"], info["priority"], info["after"], info["auto_failover"], info["boot_timeout_s"]) == \
        ("running", "high", ["good1"], False, 90.0)

    assert "after: good1 -> mute1 -> good1 is a cycle" in refused(one_node, "instance", "modify", "good1",
                                                                  "--after", "mute1")
    assert "boot pattern '(' is not an RE2 regular expression" in refused(
        one_node, "instance", "modify", "good1", "--boot-pattern", "(")
    assert "after: no instance named 'nosuch1'" in refused(one_node, "instance", "modify", "good1",
                                                          "--after", "nosuch1")
    row = one_node.instance("good1")
    assert (row["after"], row["boot_pattern"]) == ([], BOOTED)  # refused: nothing changed
    assert not any(j["op"] == "instance.modify" and "good1" in j["summary"] for j in one_node.json("job", "list"))

    one_node.ok("instance", "modify", "mute1", "--no-after", "--auto-failover", "default", "--boot-pattern", "")
    info = one_node.json("instance", "info", "mute1")
    assert (info["after"], info["auto_failover"], info["boot_pattern"], info["boot_timeout_s"]) == \
        ([], None, "", 0.0)


def test_a_pattern_built_to_backtrack_forever_never_holds_the_agents_loop(one_node):
    """`(.+)+NEVER` against console lines without NEVER takes exponential time in Python's re: the agent's
    loop (lease renewals, answers) would stop. With RE2 the loop's worst lag stays small while the guest boots."""
    add(one_node, "attack1", "--boot-pattern", "(.+)+NEVER", "--boot-timeout", "300")
    console = one_node.root / "log" / "console" / "attack1.console.log"
    wait_for(lambda: console.exists() and "CORRAL-GUEST-BOOTED" in console.read_text(errors="replace"), 150,
             "attack1's guest to boot (every console line matched against the pattern on the way)")
    one_node.wait_fresh_report()
    row = one_node.json("node", "info", "n1")
    assert row["loop_lag_ms"] is not None and row["loop_lag_ms"] < 1000, row
    assert row["lease"] == "held" and not row["problems"], row
    assert one_node.instance("attack1")["boot"] == "waiting"  # no line matched: still waiting, as it should
    one_node.ok("instance", "remove", "attack1")
