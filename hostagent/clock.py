"""The agent's clocks, behind one seam: loops take a Clock, pure decisions take `now`.

Three readings, each for its own job: `time()` (the wall clock) for what is
recorded and compared across nodes (reports, events, jobs); `monotonic()` for
intervals inside this process; `boot()` (CLOCK_BOOTTIME, which counts a
suspend) for the fencing deadlines the agent and the fence keeper share. A
simulation passes a clock it moves itself, so the loops it runs are the
agent's own, at the speed of the test.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def time(self) -> float: ...

    def monotonic(self) -> float: ...

    def boot(self) -> float: ...


class SystemClock:
    """The host's clocks."""

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def boot(self) -> float:
        return time.clock_gettime(time.CLOCK_BOOTTIME)


SYSTEM: Clock = SystemClock()
