"""EtcdClient against real etcd 3.4 members started by the tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest
from election_support import HOST, EtcdMember, etcd_cluster, free_port, make_pki

from election.etcd import (
    Compacted,
    Compare,
    EtcdClient,
    EtcdUnavailable,
    LeaseExpired,
    Op,
    WatchBatch,
)
from election.member import wait_healthy

pytestmark = pytest.mark.integration

T = TypeVar("T")


async def next_batches(watch: AsyncIterator[WatchBatch], events_wanted: int) -> list[WatchBatch]:
    """Read batches until `events_wanted` events arrived (bounded by a timeout)."""
    batches: list[WatchBatch] = []
    async with asyncio.timeout(10):
        while sum(len(b.events) for b in batches) < events_wanted:
            batches.append(await anext(watch))
    return batches


async def retry_while_unavailable(call: Callable[[], Awaitable[T]], timeout_s: float) -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return await call()
        except EtcdUnavailable:
            assert time.monotonic() < deadline, f"etcd still unavailable after {timeout_s} s"
            await asyncio.sleep(0.2)


async def test_put_get_and_delete_round_trip_bytes(client: EtcdClient) -> None:
    revision = await client.put("/corral/a", b'{"x": 1}\x00\xff')
    kv = await client.get("/corral/a")
    assert kv is not None
    assert kv.value == b'{"x": 1}\x00\xff'
    assert kv.create_revision == kv.mod_revision == revision
    assert kv.version == 1 and kv.lease == 0
    assert await client.delete("/corral/a") == 1
    assert await client.get("/corral/a") is None
    assert await client.delete("/corral/a") == 0


async def test_get_prefix_returns_only_the_prefix_sorted_with_its_revision(client: EtcdClient) -> None:
    for key in ["/corral/b", "/corral/a", "/corral/c/d", "/corralx", "/other"]:
        last = await client.put(key, key.encode())
    kvs, revision = await client.get_prefix("/corral/")
    assert [kv.key for kv in kvs] == ["/corral/a", "/corral/b", "/corral/c/d"]
    assert revision == last


async def test_txn_takes_the_branch_its_compares_choose(client: EtcdClient) -> None:
    created = await client.txn(
        [Compare.create_revision("/corral/k", "=", 0)],
        [Op.put("/corral/k", b"v1"), Op.put("/corral/other", b"o")],
        [Op.get("/corral/k")],
    )
    assert created.succeeded
    again = await client.txn(
        [Compare.create_revision("/corral/k", "=", 0)],
        [Op.put("/corral/k", b"v2")],
        [Op.get("/corral/k"), Op.get_prefix("/corral/")],
    )
    assert not again.succeeded
    assert again.revision == created.revision
    (held,), everything = again.responses
    assert held.value == b"v1"
    assert [kv.key for kv in everything] == ["/corral/k", "/corral/other"]

    swapped = await client.txn(
        [Compare.value("/corral/k", "=", b"v1"), Compare.mod_revision("/corral/k", "=", created.revision)],
        [Op.put("/corral/k", b"v2"), Op.delete_prefix("/corral/o")],
    )
    assert swapped.succeeded and swapped.responses == [None, 1]
    assert (await client.get("/corral/k")).value == b"v2"  # type: ignore[union-attr]
    assert await client.get("/corral/other") is None


async def test_revoking_a_lease_deletes_its_keys_and_ends_keepalives(client: EtcdClient) -> None:
    lease = await client.lease_grant(30)
    await client.put("/corral/leased", b"x", lease=lease)
    assert (await client.get("/corral/leased")).lease == lease  # type: ignore[union-attr]
    assert 0 < await client.lease_keepalive(lease) <= 30
    assert 0 < await client.lease_time_to_live(lease) <= 30
    await client.lease_revoke(lease)
    assert await client.get("/corral/leased") is None
    with pytest.raises(LeaseExpired) as raised:
        await client.lease_keepalive(lease)
    assert raised.value.lease_id == lease
    with pytest.raises(LeaseExpired):
        await client.lease_time_to_live(lease)
    with pytest.raises(LeaseExpired):
        await client.put("/corral/leased", b"x", lease=lease)
    await client.lease_revoke(lease)  # already gone: no error


async def test_watch_delivers_puts_and_deletes_in_revision_order(client: EtcdClient) -> None:
    start = await client.put("/corral/w/a", b"1")
    await client.put("/elsewhere", b"not watched")
    await client.put("/corral/w/b", b"2")
    deleted_at_revision = await client.put("/corral/w/a", b"3")
    await client.delete("/corral/w/a")
    watch = client.watch("/corral/w/", start)
    try:
        batches = await next_batches(watch, 4)
        # Later changes arrive on the same stream.
        await client.put("/corral/w/c", b"4")
        batches += await next_batches(watch, 1)
    finally:
        await watch.aclose()  # type: ignore[attr-defined]
    events = [(e.type, e.kv.key, e.kv.value) for b in batches for e in b.events]
    assert events == [
        ("put", "/corral/w/a", b"1"),
        ("put", "/corral/w/b", b"2"),
        ("put", "/corral/w/a", b"3"),
        ("delete", "/corral/w/a", b""),
        ("put", "/corral/w/c", b"4"),
    ]
    (delete,) = [e for b in batches for e in b.events if e.type == "delete"]
    assert delete.kv.mod_revision == deleted_at_revision + 1
    assert all(b.revision >= max((e.kv.mod_revision for e in b.events), default=0) for b in batches)


async def test_watch_from_a_compacted_revision_raises_compacted(client: EtcdClient) -> None:
    first = await client.put("/corral/x", b"1")
    await client.put("/corral/x", b"2")
    latest = await client.put("/corral/x", b"3")
    await client.compact(latest)
    await client.compact(first)  # already compacted: no error
    with pytest.raises(Compacted) as raised:
        async for _ in client.watch("/corral/", first):
            pass
    assert raised.value.compact_revision == latest


async def test_status_and_member_list_describe_the_member(client: EtcdClient, member: EtcdMember) -> None:
    status = await client.status()
    assert status["leader"] == status["member_id"] != 0
    assert status["raft_term"] >= 1 and status["db_size"] > 0 and status["revision"] >= 1
    assert status["version"].startswith("3.4")
    (listed,) = await client.member_list()
    assert listed.id == status["member_id"]
    assert listed.name == member.name
    assert listed.client_urls == [member.client_url]
    assert listed.peer_urls == [member.peer_url]


async def test_nothing_listening_raises_etcd_unavailable_naming_the_endpoints() -> None:
    endpoints = [f"http://{HOST}:{free_port()}", f"http://{HOST}:{free_port()}"]
    async with EtcdClient(endpoints, timeout_s=1.0) as client:
        started = time.monotonic()
        with pytest.raises(EtcdUnavailable) as raised:
            await client.get("/corral/x")
        with pytest.raises(EtcdUnavailable):
            async for _ in client.watch("/corral/", 1):
                pass
    assert time.monotonic() - started < 5
    assert raised.value.endpoints == endpoints
    assert all(e in str(raised.value) for e in endpoints)


async def test_wait_healthy_gives_up_after_its_timeout_with_the_reason() -> None:
    async with EtcdClient([f"http://{HOST}:{free_port()}"], timeout_s=1.0) as client:
        started = time.monotonic()
        with pytest.raises(EtcdUnavailable) as raised:
            await wait_healthy(client, timeout_s=0.5)
    assert time.monotonic() - started < 2
    assert "not healthy within 0.5 s" in raised.value.reason
    assert "Cannot connect" in raised.value.reason


async def test_client_skips_a_dead_endpoint_for_reads_writes_txns_and_watches(member: EtcdMember) -> None:
    dead = f"http://{HOST}:{free_port()}"
    async with EtcdClient([dead, member.client_url]) as client:
        revision = await client.put("/corral/k", b"v")
        assert (await client.get("/corral/k")).value == b"v"  # type: ignore[union-attr]
        assert (await client.txn([], [Op.delete("/corral/k")])).succeeded
        watch = client.watch("/corral/", revision)
        try:
            batches = await next_batches(watch, 2)
        finally:
            await watch.aclose()  # type: ignore[attr-defined]
    assert [e.type for b in batches for e in b.events] == ["put", "delete"]


async def test_client_fails_over_when_the_leader_member_is_killed(tmp_path: Path) -> None:
    async with etcd_cluster(tmp_path, count=3) as members:
        async with EtcdClient([m.client_url for m in members]) as probe:
            leader_id = (await probe.status())["leader"]
            leader_url = next(m.client_urls[0] for m in await probe.member_list() if m.id == leader_id)
        leader = next(m for m in members if m.client_url == leader_url)
        # The leader's endpoint first: the client uses it until it dies. A short
        # timeout, because followers hold requests until they notice the leader is gone.
        endpoints = [leader_url] + [m.client_url for m in members if m is not leader]
        async with EtcdClient(endpoints, timeout_s=1.0) as client:
            await client.put("/corral/before", b"1")
            # etcd refuses reconfiguration until every member has been connected for 5 s.
            added = await retry_while_unavailable(
                lambda: client.member_add([f"http://{HOST}:{free_port()}"]), timeout_s=10
            )
            assert added.id in {m.id for m in await client.member_list()}
            await client.member_remove(added.id)
            assert added.id not in {m.id for m in await client.member_list()}

            await leader.kill()
            started = time.monotonic()
            # The survivors need an election first; until then they answer "no leader" at once.
            await retry_while_unavailable(lambda: client.put("/corral/after", b"2"), timeout_s=10)
            assert time.monotonic() - started < 8
            kvs, _ = await client.get_prefix("/corral/")
            assert [(kv.key, kv.value) for kv in kvs] == [("/corral/after", b"2"), ("/corral/before", b"1")]
            status = await client.status()
            assert status["leader"] not in (0, leader_id)


async def test_tls_client_with_a_certificate_works_and_without_one_fails_cleanly(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    good = pki.client_context(with_cert=True)
    async with etcd_cluster(tmp_path / "cluster", tls=pki.etcd_tls(), client_ssl=good) as members:
        url = members[0].client_url
        assert url.startswith("https://")
        async with EtcdClient([url], ssl=good) as client:
            await client.put("/corral/secure", b"yes")
            assert (await client.get("/corral/secure")).value == b"yes"  # type: ignore[union-attr]
        async with EtcdClient([url], ssl=pki.client_context(with_cert=False), timeout_s=2.0) as client:
            with pytest.raises(EtcdUnavailable) as no_cert:
                await client.get("/corral/secure")
            with pytest.raises(EtcdUnavailable):
                await client.txn([], [Op.put("/corral/secure", b"no")])
        async with EtcdClient([url], timeout_s=2.0) as client:
            with pytest.raises(EtcdUnavailable) as untrusted:
                await client.get("/corral/secure")
        async with EtcdClient([url], ssl=good) as client:
            assert (await client.get("/corral/secure")).value == b"yes"  # type: ignore[union-attr]
    assert "client certificate" in no_cert.value.reason
    assert "not trusted" in untrusted.value.reason


async def test_watch_batch_revision_is_complete_when_etcd_splits_a_long_catch_up(client: EtcdClient) -> None:
    first = await client.put("/corral/many/0", b"0")
    for chunk in range(11):
        await asyncio.gather(*(client.put(f"/corral/many/{chunk}-{i}", b"x") for i in range(100)))
    latest = await client.put("/corral/many/last", b"1")
    watch = client.watch("/corral/many/", first)
    try:
        batches = await next_batches(watch, latest - first + 1)
    finally:
        await watch.aclose()  # type: ignore[attr-defined]
    assert len(batches) >= 2, "etcd delivered 1100+ revisions in one response; the split case was not exercised"
    # A batch's revision never claims changes that only a later batch carries.
    for batch, later in zip(batches, batches[1:]):
        assert all(e.kv.mod_revision > batch.revision for e in later.events)
    assert batches[-1].revision == latest
