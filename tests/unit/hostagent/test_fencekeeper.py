"""The fence keeper as a real process: it kills the fed QEMU processes once the deadline passes, and only them.

Victims here are `sleep` processes this test starts (stand-ins for QEMU:
the keeper only sees pids and start times); the keeper is started and
stopped by pid.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from hostagent.clock import SYSTEM
from hostagent.node.fencekeeper import Feed, keeper_argv, keeper_running, process_start, write_feed
from hostagent.node.selffence import guarded_names

REPO = Path(__file__).resolve().parents[3]


def wait_until(predicate, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def gone(proc: subprocess.Popen) -> bool:
    return proc.poll() is not None


@pytest.fixture
def victims():
    procs = [subprocess.Popen(["sleep", "300"]) for _ in range(2)]
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


@pytest.fixture
def keeper(tmp_path: Path):
    feed, pidfile = str(tmp_path / "feed.json"), str(tmp_path / "keeper.pid")
    write_feed(feed, Feed(None, (), None))
    proc = subprocess.Popen(keeper_argv(feed, pidfile), cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert wait_until(lambda: keeper_running(pidfile, feed) == proc.pid), "the keeper did not start"
    yield feed, proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=10)


def entry(name: str, proc: subprocess.Popen) -> tuple[str, int, int]:
    start = process_start(proc.pid)
    assert start is not None
    return (name, proc.pid, start)


def test_keeper_kills_the_fed_processes_only_after_the_deadline(keeper, victims):
    feed, _ = keeper
    write_feed(feed, Feed(SYSTEM.boot() + 1.5, (entry("db1", victims[0]),), None))
    time.sleep(0.8)
    assert not gone(victims[0]), "killed before the deadline"
    assert wait_until(lambda: gone(victims[0]), 5), "not killed after the deadline"
    assert victims[0].returncode == -signal.SIGKILL
    assert not gone(victims[1]), "a process it was not fed was killed"


def test_after_the_kill_the_keeper_demotes_the_drbd_devices_once_they_can_be(keeper, victims, tmp_path: Path):
    """The demote command (drbdadm secondary in production) is retried until it succeeds: here it fails while
    the killed process still exists, as DRBD refuses while QEMU holds the device open."""
    feed, _ = keeper
    done = tmp_path / "demoted"
    demote = ("sh", "-c", f"! kill -0 {victims[0].pid} 2>/dev/null || exit 1; echo {victims[0].pid} > {done}")
    write_feed(feed, Feed(SYSTEM.boot() - 1, (entry("db1", victims[0]),), None, {"db1": (demote,)}))
    assert wait_until(lambda: gone(victims[0]), 5)
    assert wait_until(done.exists, 10), "the DRBD devices of the killed instance were not demoted"
    assert done.read_text().strip() == str(victims[0].pid)
    assert not gone(victims[1])


def test_keeper_spares_a_recycled_pid_whose_start_time_does_not_match(keeper, victims):
    feed, _ = keeper
    name, pid, start = entry("db1", victims[0])
    write_feed(feed, Feed(SYSTEM.boot() - 1, ((name, pid, start + 1),), None))
    time.sleep(1.0)
    assert not gone(victims[0])


def test_a_renewed_deadline_keeps_the_processes_alive(keeper, victims):
    feed, _ = keeper
    for _ in range(6):  # the agent renews: the deadline keeps moving ahead
        write_feed(feed, Feed(SYSTEM.boot() + 0.6, (entry("db1", victims[0]),), None))
        time.sleep(0.3)
    assert not gone(victims[0])


def test_no_deadline_means_disarmed_nothing_is_killed(keeper, victims):
    feed, _ = keeper
    write_feed(feed, Feed(None, (entry("db1", victims[0]),), None))
    time.sleep(1.0)
    assert not gone(victims[0])


def test_keeper_pets_the_watchdog_while_safe_and_stops_when_it_must_fence(keeper, victims, tmp_path: Path):
    feed, _ = keeper
    dog = tmp_path / "watchdog"
    dog.write_bytes(b"")
    write_feed(feed, Feed(SYSTEM.boot() + 60, (entry("db1", victims[0]),), str(dog)))
    assert wait_until(lambda: dog.stat().st_size >= 3), "the watchdog was not petted"
    write_feed(feed, Feed(SYSTEM.boot() - 0.1, (entry("db1", victims[0]),), str(dog)))
    assert wait_until(lambda: gone(victims[0]))
    size = dog.stat().st_size
    time.sleep(0.8)
    assert dog.stat().st_size == size, "petted while the node should be fenced"


def test_keeper_closes_the_watchdog_with_the_magic_character_on_a_clean_stop(keeper, tmp_path: Path):
    feed, proc = keeper
    dog = tmp_path / "watchdog"
    dog.write_bytes(b"")
    write_feed(feed, Feed(None, (), str(dog)))
    assert wait_until(lambda: dog.stat().st_size >= 1)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=5)
    assert dog.read_bytes().endswith(b"V")


def test_only_replicated_auto_failover_primaries_of_this_node_are_guarded_and_none_when_disarmed():
    instances = [
        {"name": "a", "primary_node": "n1", "secondary_node": "n2", "disk_template": "mirror", "auto_failover": True},
        {"name": "b", "primary_node": "n1", "secondary_node": "n2", "disk_template": "mirror"},
        {"name": "c", "primary_node": "n1", "disk_template": "file", "auto_failover": True},
        {"name": "d", "primary_node": "n2", "secondary_node": "n1", "disk_template": "mirror", "auto_failover": True},
        {"name": "e", "primary_node": "n1", "secondary_node": "n3", "disk_template": "mirror", "auto_failover": False},
    ]
    assert guarded_names(instances, "n1", {}) == ["a"]
    assert guarded_names(instances, "n1", {"auto_failover": True}) == ["a", "b"]
    assert guarded_names(instances, "n1", {"auto_failover": True, "fencing": "disarmed"}) == []

