"""The master election as the agents run it (hostagent.master.role.MasterRole over election.lease), on a
simulated etcd and virtual time: the real loops, their real timers, minutes of cluster life per second.

The harness only powers nodes off or cuts them off from etcd (at once, after the client's timeout, or with
the master's calls stalled past its lease, as a frozen agent's would be) and watches; every virtual tenth of a second
it checks, against what the product's roles say of themselves, that no two nodes act as master at once.
"""

from __future__ import annotations

import asyncio

import pytest
from election.lease import MasterLease
from fakes.clock import FakeClock
from fakes.etcd import FakeEtcd
from fakes.loop import run

from hostagent import model
from hostagent.master.jobs import lock_keys
from hostagent.master.role import MasterRole

TTL = 10
FAULT_AT_S = 30.0


@pytest.mark.parametrize("fault", ["powered-off", "cut-off", "cut-off-silently", "stalled"])
def test_losing_the_master_elects_another_within_its_lease_and_never_two_at_once(fault: str):
    clock = FakeClock()
    etcd = FakeEtcd(clock)
    reaches = {n: True for n in ("n1", "n2", "n3")}
    roles = {}
    for name in reaches:
        silent_s = {"cut-off-silently": 5.0, "stalled": 2.0 * TTL}.get(fault, 0.0)  # stalled: past its lease
        client = etcd.client(lambda name=name: reaches[name], silent_s=silent_s)
        roles[name] = MasterRole(name, client, MasterLease(client, key=model.MASTER_KEY, ttl_s=TTL),  # type: ignore[arg-type]
                                 lock_keys=lock_keys, clock=clock)
    timeline: list[tuple[float, str]] = []
    overlap: list[str] = []

    async def main() -> None:
        stops = {n: asyncio.Event() for n in roles}
        loops = {n: asyncio.create_task(r.run(stops[n])) for n, r in roles.items()}
        start = clock.monotonic()
        for _ in range(1200):  # 120 virtual seconds
            await asyncio.sleep(0.1)
            now = clock.monotonic() - start
            acting = sorted(n for n, r in roles.items() if not loops[n].done() and r.lease_ok())
            if len(acting) > 1:
                overlap.append(f"t={now:.1f}: {acting}")
            if acting and (not timeline or timeline[-1][1] != acting[0]):
                timeline.append((round(now, 1), acting[0]))
            if len(timeline) == 1 and now >= FAULT_AT_S and reaches[timeline[0][1]]:
                lost = timeline[0][1]
                reaches[lost] = False  # either way etcd hears no more keepalives from it
                if fault == "powered-off":
                    loops[lost].cancel()
        for n in roles:
            stops[n].set()
        await asyncio.gather(*loops.values(), return_exceptions=True)
    run(clock, main())
    assert not overlap, overlap
    assert len(timeline) == 2, timeline
    (first_at, first), (second_at, second) = timeline
    assert first_at < 5 and second != first
    assert FAULT_AT_S < second_at <= FAULT_AT_S + TTL + 5, f"a new master {second_at - FAULT_AT_S:.1f} s after"
