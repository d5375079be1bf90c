"""Mirror keeps a real SQLite replica equal to a real etcd member."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from election_support import EtcdMember

from election.etcd import EtcdClient, EtcdError
from election.mirror import Mirror
from election.replica import Replica

pytestmark = pytest.mark.integration

WAIT_S = 10.0


@pytest.fixture
def replica(tmp_path: Path) -> Iterator[Replica]:
    r = Replica(str(tmp_path / "replica.sqlite"))
    yield r
    r.close()


@contextlib.asynccontextmanager
async def running(mirror: Mirror) -> AsyncIterator[Mirror]:
    stop = asyncio.Event()
    task = asyncio.create_task(mirror.run(stop))
    try:
        yield mirror
    finally:
        stop.set()
        await asyncio.wait_for(task, WAIT_S)


async def etcd_checksum(client: EtcdClient, prefix: str) -> str:
    """The checksum a replica holding exactly etcd's keys under `prefix` would have."""
    kvs, revision = await client.get_prefix(prefix)
    reference = Replica(":memory:")
    reference.reset(kvs, revision)
    try:
        return reference.checksum()
    finally:
        reference.close()


async def test_mirror_syncs_then_follows_puts_and_deletes(client: EtcdClient, replica: Replica) -> None:
    await client.put("/corral/nodes/n1", b'{"name": "n1"}')
    await client.put("/outside", b"x")
    applied: list[int] = []
    async with running(Mirror(client, replica, on_applied=applied.append)) as mirror:
        revision = await client.put("/corral/nodes/n2", b'{"name": "n2"}')
        assert await mirror.wait_for_revision(revision, WAIT_S)
        assert replica.prefix_json("/corral/nodes/") == [
            ("/corral/nodes/n1", {"name": "n1"}),
            ("/corral/nodes/n2", {"name": "n2"}),
        ]
        assert replica.get("/outside") is None

        await client.delete("/corral/nodes/n1")
        revision = await client.put("/corral/nodes/n2", b'{"name": "n2", "up": true}')
        assert await mirror.wait_for_revision(revision, WAIT_S)
        assert replica.prefix_json("/corral/") == [("/corral/nodes/n2", {"name": "n2", "up": True})]
        assert not await mirror.wait_for_revision(revision + 100, 0.2)
    assert applied == sorted(applied) and applied[-1] == revision
    assert replica.applied_revision() == revision
    assert replica.last_sync_unix() is not None
    assert replica.checksum() == await etcd_checksum(client, "/corral/")


async def test_mirror_catches_up_on_writes_made_while_it_was_stopped(
    client: EtcdClient, replica: Replica, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="election.mirror")
    async with running(Mirror(client, replica)) as mirror:
        revision = await client.put("/corral/a", b"1")
        assert await mirror.wait_for_revision(revision, WAIT_S)
    stopped_at = replica.applied_revision()

    await client.put("/corral/a", b"2")
    await client.put("/corral/b", b"3")
    await client.delete("/corral/a")
    revision = await client.put("/corral/c", b"4")

    caplog.clear()
    async with running(Mirror(client, replica)) as mirror:
        assert mirror.applied_revision == stopped_at
        assert await mirror.wait_for_revision(revision, WAIT_S)
    assert replica.prefix("/corral/") == [("/corral/b", b"3"), ("/corral/c", b"4")]
    assert "resynced" not in caplog.text  # it caught up through the watch
    assert replica.checksum() == await etcd_checksum(client, "/corral/")


async def test_mirror_resyncs_in_full_when_its_revision_was_compacted(
    client: EtcdClient, replica: Replica, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="election.mirror")
    async with running(Mirror(client, replica)) as mirror:
        revision = await client.put("/corral/gone", b"1")
        await client.put("/corral/kept", b"1")
        assert await mirror.wait_for_revision(revision + 1, WAIT_S)

    await client.delete("/corral/gone")
    await client.put("/corral/kept", b"2")
    latest = await client.put("/corral/new", b"3")
    await client.compact(latest)

    caplog.clear()
    async with running(Mirror(client, replica)) as mirror:
        assert await mirror.wait_for_revision(latest, WAIT_S)
        after = await client.put("/corral/after", b"4")
        assert await mirror.wait_for_revision(after, WAIT_S)
    assert replica.prefix("/corral/") == [("/corral/after", b"4"), ("/corral/kept", b"2"), ("/corral/new", b"3")]
    assert f"compacted to revision {latest}" in caplog.text
    assert f"resynced 2 keys at revision {latest}" in caplog.text
    assert replica.checksum() == await etcd_checksum(client, "/corral/")


async def test_mirror_rides_out_an_etcd_restart(
    tmp_path: Path, member: EtcdMember, client: EtcdClient, replica: Replica
) -> None:
    async with running(Mirror(client, replica, backoff_max_s=0.5)) as mirror:
        revision = await client.put("/corral/a", b"1")
        assert await mirror.wait_for_revision(revision, WAIT_S)
        await member.kill()
        await asyncio.sleep(0.5)  # the mirror now retries against a dead endpoint
        await member.start(f"{member.name}={member.peer_url}", "existing", None)
        deadline = asyncio.get_running_loop().time() + WAIT_S
        while True:
            try:
                revision = await client.put("/corral/b", b"2")
                break
            except EtcdError:
                assert asyncio.get_running_loop().time() < deadline, member.log_tail()
                await asyncio.sleep(0.1)
        assert await mirror.wait_for_revision(revision, WAIT_S)
    assert replica.prefix("/corral/") == [("/corral/a", b"1"), ("/corral/b", b"2")]
