"""tests/fakes/etcd.py against a real etcd: the same calls give the same answers.

The scenario tests run the master's real duties on the fake; this is what lets them trust it. Revisions
are compared relative to the first one each store reports, since a fresh etcd and the fake start apart.
"""

from __future__ import annotations

from typing import Any

import pytest

from election.etcd import Compare, EtcdClient, LeaseExpired, Op
from fakes.clock import FakeClock
from fakes.etcd import FakeEtcd

pytestmark = pytest.mark.integration


async def transcript(client: Any) -> list[Any]:
    """What a store answers to the calls the master and the nodes make, revisions made relative."""
    said: list[Any] = []
    _, base = await client.get_prefix("/c/")

    def kv(k: Any) -> Any:
        return None if k is None else (k.key, k.value, k.create_revision - base, k.mod_revision - base, k.version,
                                       bool(k.lease))

    said.append(await client.put("/c/a", b"1") - base)
    said.append(await client.put("/c/a", b"2") - base)
    said.append(kv(await client.get("/c/a")))
    said.append(kv(await client.get("/c/missing")))
    create_b = ([Compare.create_revision("/c/b", "=", 0)], [Op.put("/c/b", b"x")], [Op.get("/c/a")])
    first = await client.txn(*create_b)
    again = await client.txn(*create_b)
    said.append((first.succeeded, first.revision - base, first.responses))
    said.append((again.succeeded, again.revision - base, [[kv(k) for k in r] if isinstance(r, list) else r
                                                          for r in again.responses]))
    said.append((await client.txn([Compare.value("/c/none", "=", b"")], [Op.get("/c/a")], [])).succeeded)
    said.append((await client.txn([Compare.mod_revision("/c/a", "<", base + 100),
                                   Compare.version("/c/a", "=", 2)], [Op.delete_prefix("/c/b")], [])).responses)
    lease = await client.lease_grant(30)
    said.append(await client.put("/c/leased", b"l", lease=lease) - base)
    said.append(kv(await client.get("/c/leased")))
    await client.lease_revoke(lease)
    said.append(kv(await client.get("/c/leased")))
    kvs, revision = await client.get_prefix("/c/")
    said.append(([kv(k) for k in kvs], revision - base))
    try:
        await client.put("/c/late", b"x", lease=lease)
        said.append("put on a revoked lease taken")
    except LeaseExpired:
        said.append("put on a revoked lease refused")
    try:
        await client.lease_keepalive(lease)
        said.append("keepalive of a revoked lease taken")
    except LeaseExpired:
        said.append("keepalive of a revoked lease refused")
    said.append(await client.delete("/c/a"))
    said.append(await client.delete("/c/a"))
    said.append(await client.last_key("/c/"))
    return said


async def test_the_fake_answers_as_a_real_etcd_does(client: EtcdClient) -> None:
    real = await transcript(client)
    fake = await transcript(FakeEtcd(FakeClock()).client())
    assert fake == real
    assert "put on a revoked lease refused" in real  # the scenario reaches what it means to compare
