"""The agent's loops end together: each gets to finish at `stop`, a hung one is cancelled after the grace."""

from __future__ import annotations

import asyncio

from hostagent.node.supervisor import Loops


def test_end_lets_loops_finish_cancels_hung_and_log_only_ones():
    async def scenario() -> list[str]:
        loops, seen = Loops(), []

        async def polite() -> None:
            await loops.stop.wait()
            await asyncio.sleep(0.01)  # finishing what it does
            seen.append("polite finished")

        async def hung() -> None:
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                seen.append("hung cancelled")
                raise

        async def logger() -> None:
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                seen.append("logger cancelled")
                raise

        loops.spawn(polite(), name="polite")
        loops.spawn(hung(), name="hung")
        loops.spawn(logger(), name="logger", cancel_at_end=True)
        await asyncio.sleep(0)
        await loops.end(grace_s=0.1)
        return seen

    assert asyncio.run(scenario()) == ["logger cancelled", "polite finished", "hung cancelled"]


def test_a_finished_task_leaves_the_set():
    async def scenario() -> None:
        loops = Loops()
        task = loops.spawn(asyncio.sleep(0))
        await task
        await asyncio.wait_for(loops.end(grace_s=10), 1)  # nothing left to wait for

    asyncio.run(scenario())
