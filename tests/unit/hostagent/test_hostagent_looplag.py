"""The loop lag monitor sees a loop held by blocking work, and `node list` names the node."""

from __future__ import annotations

import asyncio
import time

from hostagent.node.looplag import LoopLag
from hostagent.views import node_row


def test_a_blocked_loop_shows_as_lag():
    async def scenario() -> float:
        lag, stop = LoopLag(period_s=0.01), asyncio.Event()
        task = asyncio.create_task(lag.run(stop))
        await asyncio.sleep(0.05)
        time.sleep(0.3)  # blocking work on the loop, as a catastrophic regex would be
        await asyncio.sleep(0.05)
        stop.set()
        await task
        return lag.worst_ms()

    assert 250 <= asyncio.run(scenario()) < 2000


def test_node_list_names_a_node_whose_loop_was_held():
    node = {"name": "n1", "address": "127.0.0.1", "candidate": False}
    now = time.time()
    row = node_row(node, {"time": now, "loop_lag_ms": 4200.0}, None, {}, [], True, now)
    assert row["loop_lag_ms"] == 4200.0
    assert any("event loop was held 4.2 s" in p for p in row["problems"]), row["problems"]
    calm = node_row(node, {"time": now, "loop_lag_ms": 12.0}, None, {}, [], True, now)
    assert calm["problems"] == []
