"""Reports asked for while one is under way: one more after it, not one per ask (hostagent.node.coalesce)."""

import asyncio

from hostagent.node.coalesce import Coalesced


async def test_asks_during_a_run_make_one_more_run_after_it_and_an_ask_later_a_new_one() -> None:
    started: list[int] = []
    release = asyncio.Event()

    async def work() -> None:
        started.append(len(started))
        await release.wait()

    runs = Coalesced(work)
    runs.ask(asyncio.create_task)
    runs.ask(asyncio.create_task)  # before the run began: it is covered by that run
    await asyncio.sleep(0)
    for _ in range(4):
        runs.ask(asyncio.create_task)
    await asyncio.sleep(0)
    assert started == [0]  # one run; the four asks during it wait for it
    release.set()
    for _ in range(10):
        await asyncio.sleep(0)
    assert started == [0, 1]  # exactly one more, begun after the asks
    runs.ask(asyncio.create_task)
    for _ in range(10):
        await asyncio.sleep(0)
    assert started == [0, 1, 2]


async def test_a_run_that_fails_does_not_stop_the_next_ask() -> None:
    calls = 0

    async def work() -> None:
        nonlocal calls
        calls += 1
        raise OSError("etcd gone")

    runs = Coalesced(work)
    runs.ask(asyncio.create_task)
    await asyncio.sleep(0.01)
    runs.ask(asyncio.create_task)
    await asyncio.sleep(0.01)
    assert calls == 2
