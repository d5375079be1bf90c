"""The API runs one CPU-bound plan (balance, capacity) at a time per agent, in a thread, and refuses a second
rather than queueing it (hostagent.api.cluster.ClusterRoutes._plan)."""

import asyncio
import threading

import pytest

from hostagent.api.cluster import ClusterRoutes
from hostagent.errors import Conflict


def test_a_second_plan_while_one_runs_is_refused_and_the_next_one_runs():
    routes = ClusterRoutes.__new__(ClusterRoutes)
    release = threading.Event()

    def slow(value: int) -> int:
        assert release.wait(10)
        return value

    async def scenario() -> None:
        first = asyncio.create_task(routes._plan(slow, 1))
        await asyncio.sleep(0.05)  # the first holds the slot, in its thread
        with pytest.raises(Conflict, match="already being computed"):
            await routes._plan(slow, 2)
        release.set()
        assert await first == 1
        assert await routes._plan(slow, 3) == 3

    asyncio.run(scenario())
