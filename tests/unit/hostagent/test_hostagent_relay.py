"""The console relay's bounds: both directions copied, an idle relay closed, a peer that stops reading
dropped without holding anything else, and no more relays at once than the limit."""

import asyncio

import pytest

from hostagent.api.relay import RelayLimit, RelaysFull, bridge


class Pipe:
    """One side of a relay in memory: `incoming` is what it receives; `sent` what the relay sent it.
    `stuck`: it never takes what is sent (a peer that stopped reading)."""

    def __init__(self, stuck: bool = False) -> None:
        self.incoming: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.sent: list[bytes] = []
        self.stuck = stuck
        self.closed = False

    async def receive(self) -> bytes | None:
        return await self.incoming.get()

    async def send(self, data: bytes) -> None:
        if self.stuck:
            await asyncio.Event().wait()
        self.sent.append(data)

    async def close(self) -> None:
        self.closed = True


def test_bytes_flow_both_ways_until_one_side_closes():
    async def run() -> tuple[str, Pipe, Pipe]:
        a, b = Pipe(), Pipe()
        a.incoming.put_nowait(b"key")
        b.incoming.put_nowait(b"RFB 003.008\n")
        task = asyncio.create_task(bridge(a, b, idle_s=5, stall_s=5))
        await asyncio.sleep(0.05)
        a.incoming.put_nowait(None)
        return await task, a, b
    reason, a, b = asyncio.run(run())
    assert reason == "closed"
    assert a.sent == [b"RFB 003.008\n"] and b.sent == [b"key"]
    assert a.closed and b.closed


def test_a_relay_with_nothing_moving_ends_after_the_idle_timeout():
    async def run() -> str:
        a, b = Pipe(), Pipe()
        a.incoming.put_nowait(b"x")  # traffic restarts the clock
        return await asyncio.wait_for(bridge(a, b, idle_s=0.2, stall_s=5), 3)
    assert asyncio.run(run()) == "idle"


def test_a_peer_that_stops_reading_is_dropped_after_the_stall_timeout():
    async def run() -> tuple[str, Pipe]:
        reader_gone, qemu = Pipe(stuck=True), Pipe()
        for _ in range(3):
            qemu.incoming.put_nowait(b"screen update")
        return await asyncio.wait_for(bridge(reader_gone, qemu, idle_s=60, stall_s=0.2), 3), qemu
    reason, qemu = asyncio.run(run())
    assert reason == "stalled" and qemu.closed


def test_no_more_relays_than_the_limit_and_a_slot_comes_back_when_one_ends():
    limit = RelayLimit(2)
    with limit.slot("n1"), limit.slot("n1"):
        with pytest.raises(RelaysFull, match="node 'n1' already relays 2 consoles"):
            with limit.slot("n1"):
                pass
    assert limit.active == 0
    with limit.slot("n1"):
        assert limit.active == 1


def test_one_caller_holds_at_most_its_share_and_an_admin_has_a_reserve():
    limit = RelayLimit(3, per_caller=2, admin_reserve=1)
    with limit.slot("n1", "user 'eve'"), limit.slot("n1", "user 'eve'"):
        with pytest.raises(RelaysFull, match="user 'eve' already has 2 consoles and displays open through node 'n1'"):
            with limit.slot("n1", "user 'eve'"):
                pass
        with limit.slot("n1", "user 'bob'"):
            with pytest.raises(RelaysFull, match="already relays 3"):
                with limit.slot("n1", "user 'carol'"):
                    pass
            with limit.slot("n1", "root", admin=True):
                assert limit.active == 4
    assert limit.active == 0
