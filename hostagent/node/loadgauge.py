"""How loaded this node is now: its runnable and I/O-waiting tasks, averaged over about 10 s.

The restart policy (hostagent.master.decide.restarts) boots one guest at a time on a node past its load
gate. The kernel's 1-minute load average still counts a boot storm a minute after it ended, so a node
recovering from a power loss was held to one boot at a time while its CPUs had room again (the 60-guest
outage bench spent most of its recovery there). This gauge counts the same tasks the load average does,
the moment it samples them, with a 10 s time constant.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable

from hostagent.clock import SYSTEM, Clock

TAU_S = 10.0
PERIOD_S = 1.0
_STAT = "/proc/stat"


def tasks_now(stat_text: str) -> int | None:
    """Runnable plus uninterruptible tasks in a /proc/stat text, not counting the reader itself."""
    found = {}
    for line in stat_text.splitlines():
        key, _, value = line.partition(" ")
        if key in ("procs_running", "procs_blocked") and value.strip().isdigit():
            found[key] = int(value)
    if len(found) < 2:
        return None
    return max(0, found["procs_running"] - 1) + found["procs_blocked"]


def _read_stat() -> str:
    with open(_STAT, encoding="ascii") as f:
        return f.read()


class LoadGauge:
    """An exponential average of `tasks_now`, sampled every PERIOD_S while `run` runs."""

    def __init__(self, clock: Clock = SYSTEM, read: Callable[[], str] = _read_stat, tau_s: float = TAU_S) -> None:
        self._clock = clock
        self._read = read
        self._tau = tau_s
        self._value: float | None = None
        self._at = 0.0

    def sample(self) -> None:
        try:
            now_tasks = tasks_now(self._read())
        except OSError:
            now_tasks = None
        if now_tasks is None:
            return
        now = self._clock.monotonic()
        if self._value is None:
            self._value = float(now_tasks)
        else:
            weight = 1.0 - math.exp(-max(0.0, now - self._at) / self._tau)
            self._value += weight * (now_tasks - self._value)
        self._at = now

    def value(self) -> float | None:
        """The average, None before the first sample (or where /proc/stat cannot tell)."""
        return None if self._value is None else round(self._value, 2)

    async def run(self, stop: asyncio.Event, period_s: float = PERIOD_S) -> None:
        while not stop.is_set():
            self.sample()
            try:
                await asyncio.wait_for(stop.wait(), period_s)
            except asyncio.TimeoutError:
                pass
