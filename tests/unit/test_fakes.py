"""The shared doubles' own rules that a real etcd cannot be asked in a test's time: a lease running out."""

from __future__ import annotations

import asyncio

import pytest

from election.etcd import EtcdUnavailable, LeaseExpired
from fakes.clock import FakeClock
from fakes.etcd import FakeEtcd


def test_a_lease_that_runs_out_takes_its_keys_in_one_revision_and_a_keepalive_puts_that_off():
    clock = FakeClock()
    etcd = FakeEtcd(clock)
    client = etcd.client()

    async def run() -> list[object]:
        lease = await client.lease_grant(20)
        await client.put("/l/a", b"1", lease=lease)
        await client.put("/l/b", b"2", lease=lease)
        clock.advance(15)
        await client.lease_keepalive(lease)
        clock.advance(15)
        kept = [kv.key for kv in (await client.get_prefix("/l/"))[0]]
        _, before = await client.get_prefix("/l/")
        clock.advance(5)
        gone, after = await client.get_prefix("/l/")
        with pytest.raises(LeaseExpired):
            await client.lease_keepalive(lease)
        return [kept, gone, after - before]
    assert asyncio.run(run()) == [["/l/a", "/l/b"], [], 1]


def test_a_cut_off_client_is_refused_as_etcd_refuses_an_unreachable_one():
    cut = [False]
    client = FakeEtcd(FakeClock()).client(lambda: not cut[0])
    asyncio.run(client.put("/k", b"v"))
    cut[0] = True
    with pytest.raises(EtcdUnavailable):
        asyncio.run(client.get("/k"))
