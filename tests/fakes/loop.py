"""An asyncio event loop on virtual time: when nothing is ready, time jumps to the next timer.

Every sleep, timeout and `loop.time()` of the code under test reads the FakeClock, so the agent's own
loops (election, leases, fencing, duties) run minutes of cluster life in milliseconds, in the order their
timers say, and a test moves time only through them. Fit for code that does no real I/O: a socket or a
subprocess would wait in virtual time while the world it waits for runs in real time.
"""

from __future__ import annotations

import asyncio
import selectors
from typing import Any

from fakes.clock import FakeClock


class _VirtualSelector(selectors.DefaultSelector):
    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self._clock = clock

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)  # the loop's own self-pipe: call_soon_threadsafe, signals
        if not ready and timeout is not None and timeout > 0:
            self._clock.advance(timeout)
        return ready


def virtual_loop(clock: FakeClock) -> asyncio.AbstractEventLoop:
    """A new loop whose time is `clock.monotonic()`; `asyncio.sleep(60)` returns at once, 60 s later."""
    loop = asyncio.SelectorEventLoop(_VirtualSelector(clock))
    loop.time = clock.monotonic  # type: ignore[method-assign]
    return loop


def run(clock: FakeClock, main: Any) -> Any:
    """asyncio.run on virtual time."""
    loop = virtual_loop(clock)
    try:
        return loop.run_until_complete(main)
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
