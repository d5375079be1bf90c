"""The isolate drill: this node behaves for a while as if the network had cut it off."""

from __future__ import annotations

import asyncio
import logging
import os
import signal

from hostagent.clock import SYSTEM, Clock
from hostagent.node.nodelease import NodeLease

log = logging.getLogger(__name__)


class Isolation:
    """While it lasts, the node renews no lease, publishes no report, takes no order and tells the master
    nothing, and its serf and etcd are stopped: so it self-fences and the master acts, as in a real cut."""

    def __init__(self, node_name: str, clock: Clock = SYSTEM) -> None:
        self._node = node_name
        self._clock = clock
        self._until = 0.0  # monotonic

    def begin(self, seconds: float, lease: NodeLease, pids: list[int]) -> None:
        """Cut off now; `pids` (serf, etcd) are frozen until it ends, then the node comes back by itself."""
        log.warning("drill: cutting node '%s' off for %.0f s: no lease renewal, no reports, serf and etcd "
                    "stopped (pids %s)", self._node, seconds, pids)
        self._until = self._clock.monotonic() + seconds
        lease.pause(seconds)
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)

        def back() -> None:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
            log.warning("drill: node '%s' is connected again", self._node)
        asyncio.get_running_loop().call_later(seconds, back)

    def active(self) -> bool:
        return self._clock.monotonic() < self._until
