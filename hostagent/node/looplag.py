"""How late the agent's event loop runs: the worst timer delay over the last minute.

Everything a node does for the cluster (renewing its lease, reporting, the
fence keeper's feed, answering the master) waits on this one loop; a loop held
for seconds by some input is how a node gets fenced for nothing. Each node
reports the figure (`node info`: loop lag) so that it is seen, and tests hold
it against inputs built to stall it.
"""

from __future__ import annotations

import asyncio
from collections import deque

PERIOD_S = 0.1
WINDOW_S = 60.0
WARN_MS = 1000.0  # `node list` names a node whose loop was held this long in the last minute


class LoopLag:
    def __init__(self, period_s: float = PERIOD_S, window_s: float = WINDOW_S) -> None:
        self._period = period_s
        self._window = window_s
        self._samples: deque[tuple[float, float]] = deque()

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()  # lateness of its timers, on the clock they are set by
        while not stop.is_set():
            began = loop.time()
            await asyncio.sleep(self._period)
            now = loop.time()
            self._samples.append((now, max(0.0, now - began - self._period)))
            while self._samples and self._samples[0][0] < now - self._window:
                self._samples.popleft()

    def worst_ms(self) -> float:
        return round(max((late for _, late in self._samples), default=0.0) * 1000, 1)
