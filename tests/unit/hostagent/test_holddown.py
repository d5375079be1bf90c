"""The drill's hold-down: a node powered off by a drill stays down until its time, whoever restarts its agent."""

import json
import socket

from hostagent.node import holddown
from hostagent.node.notify import Notifier


class Clock:
    """A fake wall clock that only moves when the code under test sleeps."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self.slept: list[float] = []

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_without_a_hold_the_agent_starts_at_once(tmp_path):
    clock = Clock()
    assert holddown.wait_out(str(tmp_path), Notifier(""), clock.time, clock.sleep) == 0.0
    assert clock.slept == []


def test_a_held_down_node_waits_until_its_time_then_forgets_the_hold(tmp_path):
    clock = Clock()
    holddown.hold(str(tmp_path), 30, clock.now - 5, "a node-loss drill")  # killed 5 s ago, held for 30
    assert holddown.wait_out(str(tmp_path), Notifier(""), clock.time, clock.sleep) == 25.0
    assert sum(clock.slept) == 25.0 and max(clock.slept) <= holddown.CHECK_EVERY_S
    assert not (tmp_path / holddown.FILE_NAME).exists()
    assert holddown.wait_out(str(tmp_path), Notifier(""), clock.time, clock.sleep) == 0.0


def test_an_expired_hold_is_removed_without_waiting(tmp_path):
    clock = Clock()
    holddown.hold(str(tmp_path), 10, clock.now - 60, "a node-loss drill")
    assert holddown.wait_out(str(tmp_path), Notifier(""), clock.time, clock.sleep) == 0.0
    assert not (tmp_path / holddown.FILE_NAME).exists()


def test_removing_the_file_ends_the_hold_early(tmp_path):
    clock = Clock()
    holddown.hold(str(tmp_path), 60, clock.now, "a node-loss drill")

    def sleep(seconds: float) -> None:
        clock.sleep(seconds)
        if clock.now >= 1003:
            (tmp_path / holddown.FILE_NAME).unlink(missing_ok=True)

    assert holddown.wait_out(str(tmp_path), Notifier(""), clock.time, sleep) == 3.0


def test_a_hold_is_bounded_even_with_a_clock_stepped_back_or_a_garbled_file(tmp_path):
    clock = Clock()
    holddown.hold(str(tmp_path), 86400, clock.now, "a clock an hour off")
    assert holddown.wait_out(str(tmp_path), Notifier(""), clock.time, clock.sleep) == holddown.MAX_HOLD_S
    (tmp_path / holddown.FILE_NAME).write_text("{not json")
    assert holddown.wait_out(str(tmp_path), Notifier(""), clock.time, clock.sleep) == 0.0
    (tmp_path / holddown.FILE_NAME).write_text(json.dumps({"seconds": 5}))
    assert holddown.remaining_s(str(tmp_path), clock.now) == 0.0


def test_while_held_down_the_agent_keeps_extending_systemd_s_start_timeout(tmp_path):
    path = str(tmp_path / "notify.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    server.settimeout(5)
    clock = Clock()
    holddown.hold(str(tmp_path), 3, clock.now, "a node-loss drill")
    notifier = Notifier(path)
    try:
        holddown.wait_out(str(tmp_path), notifier, clock.time, clock.sleep)
        got = [server.recv(4096).decode() for _ in range(3)]
    finally:
        notifier.close()
        server.close()
    assert got[0] == "STATUS=held down by a drill for 3 more s\nEXTEND_TIMEOUT_USEC=11000000"
    assert all("EXTEND_TIMEOUT_USEC=" in g for g in got)
