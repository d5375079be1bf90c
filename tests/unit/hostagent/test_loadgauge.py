"""hostagent.node.loadgauge: the node's load over the last 10 s, from /proc/stat's task counts."""

import pytest

from hostagent.node.loadgauge import LoadGauge, tasks_now

STAT = "cpu  1 2 3 4\nctxt 99\nprocs_running {r}\nprocs_blocked {b}\n"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now


def test_task_counts_are_runnable_and_blocked_without_the_reader() -> None:
    assert tasks_now(STAT.format(r=5, b=2)) == 6
    assert tasks_now(STAT.format(r=1, b=0)) == 0
    assert tasks_now("cpu 1 2 3\n") is None


def test_the_gauge_follows_a_boot_storm_within_tens_of_seconds_both_ways() -> None:
    """Where the 1-minute load average still shows most of a storm a minute after it, the gauge has let go."""
    clock, tasks = Clock(), {"r": 1, "b": 0}
    gauge = LoadGauge(clock, read=lambda: STAT.format(**tasks))
    assert gauge.value() is None
    gauge.sample()
    assert gauge.value() == 0.0
    tasks["r"] = 13  # twelve boots running
    for _ in range(20):
        clock.now += 1.0
        gauge.sample()
    assert gauge.value() == pytest.approx(12 * (1 - 2.718281828 ** -2), abs=0.05)
    tasks["r"] = 1
    for _ in range(30):
        clock.now += 1.0
        gauge.sample()
    assert gauge.value() is not None and gauge.value() < 12 * 0.06


def test_an_unreadable_stat_keeps_the_last_value() -> None:
    clock, text = Clock(), {"t": STAT.format(r=3, b=0)}
    gauge = LoadGauge(clock, read=lambda: text["t"])
    gauge.sample()
    text["t"] = "garbage"
    clock.now += 5
    gauge.sample()
    assert gauge.value() == 2.0
