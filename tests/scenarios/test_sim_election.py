"""The master election as the agents run it (hostagent.master.role.MasterRole over election.lease), on a
simulated etcd and virtual time: the real loops, their real timers, minutes of cluster life per second.

The harness only powers nodes off or cuts them off from etcd (at once, after the client's timeout, or with
the master's calls stalled past its lease, as a frozen agent's would be) and watches; every virtual tenth of a second
it checks, against what the product's roles say of themselves, that no two nodes act as master at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

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


SHORT_TTL = 2  # the production default (hostagent.config.MASTER_LEASE_TTL_S)


def _roles(clock: FakeClock, etcd: FakeEtcd, reaches: dict[str, bool], defer: dict[str, bool],
           said: dict[str, list[str]]) -> dict[str, MasterRole]:
    """A short-lease MasterRole per node; `defer[n]`: node n holds the etcd leader (leaves a free lease to others)."""
    roles = {}
    for name in reaches:
        client = etcd.client(lambda name=name: reaches[name])

        async def holds_leader(name: str = name) -> bool:
            return defer[name]
        roles[name] = MasterRole(name, client, MasterLease(client, key=model.MASTER_KEY, ttl_s=SHORT_TTL),  # type: ignore[arg-type]
                                 lock_keys=lock_keys, clock=clock, defer=holds_leader,
                                 on_change=said.setdefault(name, []).append)
    return roles


def _run_for(clock: FakeClock, roles: dict[str, MasterRole], seconds: float,
             at: dict[float, Callable[[], None]] | None = None) -> None:
    """Run every role's loop for `seconds` of virtual time, calling `at[t]` once t seconds have passed."""
    async def main() -> None:
        stops = {n: asyncio.Event() for n in roles}
        loops = [asyncio.create_task(r.run(stops[n])) for n, r in roles.items()]
        pending = dict(at or {})
        for step in range(int(seconds * 10)):
            await asyncio.sleep(0.1)
            for t in [t for t in pending if t <= step / 10]:
                pending.pop(t)()
        for stop in stops.values():
            stop.set()
        await asyncio.gather(*loops, return_exceptions=True)
    run(clock, main())


def test_a_candidate_holding_the_etcd_leader_leaves_a_free_master_lease_to_another():
    clock = FakeClock()
    etcd = FakeEtcd(clock)
    said: dict[str, list[str]] = {}
    roles = _roles(clock, etcd, {"n1": True, "n2": True}, {"n1": True, "n2": False}, said)
    elected: list[str] = []
    _run_for(clock, roles, 5, at={4.0: lambda: elected.extend(n for n, r in roles.items() if r.is_master)})
    assert elected == ["n2"], said
    assert any("holds the etcd leader, so it lets another candidate try first" in s for s in said["n1"]), said["n1"]


def test_a_lone_candidate_holding_the_etcd_leader_still_becomes_master():
    clock = FakeClock()
    etcd = FakeEtcd(clock)
    said: dict[str, list[str]] = {}
    roles = _roles(clock, etcd, {"n1": True}, {"n1": True}, said)
    elected: list[str] = []
    _run_for(clock, roles, 5, at={4.0: lambda: elected.extend(n for n, r in roles.items() if r.is_master)})
    assert elected == ["n1"], said


def test_a_master_that_misses_a_renewal_while_its_lease_holds_stays_master():
    """etcd between leaders for a moment (every call refused) must not cost a master change."""
    clock = FakeClock()
    etcd = FakeEtcd(clock)
    reaches = {"n1": True, "n2": True}
    said: dict[str, list[str]] = {}
    roles = _roles(clock, etcd, reaches, {"n1": False, "n2": False}, said)
    seen: dict[str, object] = {}

    def cut() -> None:
        seen["master"] = next(n for n, r in roles.items() if r.is_master)
        seen["token"] = roles[str(seen["master"])].token
        reaches[str(seen["master"])] = False

    def heal() -> None:
        reaches[str(seen["master"])] = True

    def look() -> None:
        seen["after"] = [(n, r.token) for n, r in roles.items() if r.is_master]
    # Cut for 0.4 s: at least one renewal fails, but less than the lease's margin of safety is used up.
    _run_for(clock, roles, 8, at={3.0: cut, 3.4: heal, 7.5: look})
    master = str(seen["master"])
    assert seen["after"] == [(master, seen["token"])], said
    assert any("could not renew the master lease" in s for s in said[master]), said[master]
    assert not any("stopped" in s or "no longer master" in s for s in said[master]), said[master]
