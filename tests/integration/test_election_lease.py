"""MasterLease campaigns and fencing against a real etcd member."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from election_support import EtcdMember, etcd_cluster

from election.etcd import Compare, EtcdClient, Op, OutcomeUnknown
from election.lease import FencingToken, MasterLease, NotMaster

pytestmark = pytest.mark.integration


@pytest.fixture
async def member(tmp_path: Path) -> AsyncIterator[EtcdMember]:
    async with etcd_cluster(tmp_path) as members:
        yield members[0]


@pytest.fixture
async def clients(member: EtcdMember) -> AsyncIterator[tuple[EtcdClient, EtcdClient]]:
    """Two separate clients, as two agents would have."""
    async with EtcdClient([member.client_url]) as a, EtcdClient([member.client_url]) as b:
        yield a, b


async def test_of_two_simultaneous_contenders_exactly_one_wins(clients: tuple[EtcdClient, EtcdClient]) -> None:
    a, b = MasterLease(clients[0]), MasterLease(clients[1])
    won = await asyncio.gather(a.campaign("n1"), b.campaign("n2"))
    winners = [token for token in won if token is not None]
    assert len(winners) == 1
    node, token = await a.current()  # type: ignore[misc]
    assert token == winners[0]
    assert node == ("n1" if won[0] else "n2")
    assert (a.token, b.token) == tuple(won)


async def test_campaigning_again_while_master_returns_the_same_token(
    clients: tuple[EtcdClient, EtcdClient],
) -> None:
    lease = MasterLease(clients[0])
    first = await lease.campaign("n1")
    assert first is not None
    assert await lease.campaign("n1") == first
    assert await lease.keepalive()


async def test_after_the_master_resigns_the_other_wins_with_a_greater_token(
    clients: tuple[EtcdClient, EtcdClient],
) -> None:
    a, b = MasterLease(clients[0]), MasterLease(clients[1])
    old = await a.campaign("n1")
    assert old is not None
    assert await b.campaign("n2") is None
    await a.resign()
    assert await a.current() is None
    new = await b.campaign("n2")
    assert new is not None and new > old
    assert await a.current() == ("n2", new)
    assert not await a.keepalive()


async def test_after_the_master_lease_expires_the_other_wins(clients: tuple[EtcdClient, EtcdClient]) -> None:
    a, b = MasterLease(clients[0], ttl_s=2), MasterLease(clients[1], ttl_s=2)
    old = await a.campaign("n1")
    assert old is not None
    # n1 stops renewing (as a hung agent would); n2 keeps trying, bounded.
    deadline = time.monotonic() + 10
    new = None
    while new is None:
        assert time.monotonic() < deadline, "n2 did not become master within 10 s of n1's 2 s lease"
        new = await b.campaign("n2")
        if new is None:
            await asyncio.sleep(0.2)
    assert new > old
    assert not await a.keepalive()
    assert a.token is None


async def test_guarded_txn_with_a_stale_token_raises_not_master_and_writes_nothing(
    clients: tuple[EtcdClient, EtcdClient],
) -> None:
    a, b = MasterLease(clients[0]), MasterLease(clients[1])
    old = await a.campaign("n1")
    assert old is not None
    await a.guarded_txn(old, [Op.put("/corral/config/x", b"from n1")])
    await a.resign()
    new = await b.campaign("n2")
    assert new is not None

    with pytest.raises(NotMaster) as raised:
        await a.guarded_txn(old, [Op.put("/corral/config/x", b"stale"), Op.delete("/corral/config/y")])
    assert raised.value.master_hint == "n2"
    assert raised.value.token == old
    assert (await clients[0].get("/corral/config/x")).value == b"from n1"  # type: ignore[union-attr]

    # A token with the right revision but another lease is stale too.
    forged = FencingToken(revision=new.revision, lease_id=new.lease_id + 1)
    with pytest.raises(NotMaster):
        await a.guarded_txn(forged, [Op.put("/corral/config/x", b"forged")])
    await b.resign()
    with pytest.raises(NotMaster) as nobody:
        await b.guarded_txn(new, [Op.put("/corral/config/x", b"late")])
    assert nobody.value.master_hint is None
    assert (await clients[0].get("/corral/config/x")).value == b"from n1"  # type: ignore[union-attr]


async def test_guarded_txn_reports_failed_extra_compares_as_a_result_not_as_not_master(
    clients: tuple[EtcdClient, EtcdClient],
) -> None:
    lease = MasterLease(clients[0])
    token = await lease.campaign("n1")
    assert token is not None
    created = await lease.guarded_txn(
        token,
        [Op.put("/corral/config/x", b"1")],
        extra_compares=[Compare.create_revision("/corral/config/x", "=", 0)],
    )
    assert created.succeeded
    again = await lease.guarded_txn(
        token,
        [Op.put("/corral/config/x", b"2")],
        extra_compares=[Compare.create_revision("/corral/config/x", "=", 0)],
        failure_ops=[Op.get("/corral/config/x")],
    )
    assert not again.succeeded
    ((held,),) = again.responses
    assert held.value == b"1"


class _LosesOneAnswer(EtcdClient):
    """A real client whose second txn (the first after the campaign) loses its answer, after or before etcd applied it."""

    def __init__(self, url: str, *, applied: bool) -> None:
        super().__init__([url])
        self._applied = applied
        self.txns = 0

    async def txn(self, compares, success, failure=()):  # type: ignore[no-untyped-def]
        self.txns += 1
        if self.txns == 2:
            if self._applied:
                await super().txn(compares, success, failure)
            raise OutcomeUnknown([self.endpoints[0]], "timed out")
        return await super().txn(compares, success, failure)


@pytest.mark.parametrize("applied", [True, False], ids=["answer-lost-after-apply", "request-lost"])
async def test_a_write_whose_answer_is_lost_is_applied_exactly_once(member: EtcdMember, applied: bool) -> None:
    async with _LosesOneAnswer(member.client_url, applied=applied) as client:
        lease = MasterLease(client)
        token = await lease.campaign("n1")
        assert token is not None
        result = await lease.guarded_txn(
            token,
            [Op.put("/corral/config/once", b"1")],
            extra_compares=[Compare.create_revision("/corral/config/once", "=", 0)],
        )
        assert result.succeeded
        held = await client.get("/corral/config/once")
        assert held is not None and held.value == b"1" and held.version == 1
        assert client.txns == (2 if applied else 3)  # campaign, lost write, then the re-send only if needed


async def test_a_lost_write_whose_compare_fails_on_resend_reports_the_failure(member: EtcdMember) -> None:
    async with _LosesOneAnswer(member.client_url, applied=False) as client:
        lease = MasterLease(client)
        token = await lease.campaign("n1")
        assert token is not None
        await client.put("/corral/config/taken", b"other")
        result = await lease.guarded_txn(
            token,
            [Op.put("/corral/config/taken", b"mine")],
            extra_compares=[Compare.create_revision("/corral/config/taken", "=", 0)],
            failure_ops=[Op.get("/corral/config/taken")],
        )
        assert not result.succeeded
        ((held,),) = result.responses
        assert held.value == b"other"
