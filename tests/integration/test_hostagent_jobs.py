"""Jobs in a real etcd: submit with reservations, run, and take-over by a new master."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from election.etcd import EtcdClient
from election.lease import MasterLease, NotMaster
from election_support import EtcdMember, etcd_cluster
from hostagent import model
from hostagent.master.jobs import Conflict, JobContext, JobFailed, JobRunner

pytestmark = pytest.mark.integration


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[EtcdClient]:
    async with etcd_cluster(tmp_path) as members:
        member: EtcdMember = members[0]
        async with EtcdClient([member.client_url]) as c:
            yield c


async def job(client: EtcdClient, job_id: int) -> dict:
    kv = await client.get(model.job_key(job_id))
    assert kv is not None
    return model.loads(kv.value)


async def until_final(client: EtcdClient, job_id: int, timeout_s: float = 10) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        j = await job(client, job_id)
        if j["status"] in ("success", "error", "canceled"):
            return j
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} did not end in {timeout_s} s")


async def master(client: EtcdClient, node: str, handlers: dict) -> tuple[MasterLease, JobRunner]:
    lease = MasterLease(client, key=model.MASTER_KEY, ttl_s=5)
    token = await lease.campaign(node)
    assert token is not None
    runner = JobRunner(node, client, lease, token, handlers, lambda j: [j["args"].get("name", "x")])
    await runner.start()
    return lease, runner


async def test_a_job_logs_and_ends_with_its_result_and_frees_its_reservation(client):
    async def work(ctx: JobContext, args: dict) -> dict:
        await ctx.log(f"working on '{args['name']}'")
        return {"done": args["name"]}

    _, runner = await master(client, "n1", {"demo.work": work})
    job_id = await runner.submit("demo.work", {"name": "a"}, "work on 'a'",
                                 reservations=[model.reservation_key("instance", "a")])
    final = await until_final(client, job_id)
    assert final["status"] == "success" and final["result"] == {"done": "a"}
    assert [line for _, line in final["log"]] == ["working on 'a'"]
    assert await client.get(model.reservation_key("instance", "a")) is None
    await runner.stop()


async def test_a_reserved_name_refuses_a_second_submit(client):
    gate = asyncio.Event()

    async def slow(ctx: JobContext, args: dict) -> None:
        await gate.wait()

    _, runner = await master(client, "n1", {"demo.slow": slow})
    first = await runner.submit("demo.slow", {"name": "a"}, "slow", reservations=[model.reservation_key("instance", "a")])
    with pytest.raises(Conflict, match=f"job {first} is already working on 'a'"):
        await runner.submit("demo.slow", {"name": "a"}, "slow", reservations=[model.reservation_key("instance", "a")])
    gate.set()
    assert (await until_final(client, first))["status"] == "success"
    await runner.stop()


async def test_a_failing_job_records_the_reason(client):
    async def fails(ctx: JobContext, args: dict) -> None:
        raise JobFailed("node 'n2' could not start: no space left")

    _, runner = await master(client, "n1", {"demo.fail": fails})
    final = await until_final(client, await runner.submit("demo.fail", {}, "fail"))
    assert final["status"] == "error" and final["error"] == "node 'n2' could not start: no space left"
    await runner.stop()


async def test_a_new_master_ends_the_running_job_of_the_old_one_and_runs_queued_ones(client):
    hang = asyncio.Event()

    async def hangs(ctx: JobContext, args: dict) -> None:
        await hang.wait()

    async def quick(ctx: JobContext, args: dict) -> dict:
        return {"ran_on": "n2"}

    old_lease, old = await master(client, "n1", {"demo.hang": hangs, "demo.quick": quick})
    running = await old.submit("demo.hang", {"name": "a"}, "hang")
    queued = await old.submit("demo.hang", {"name": "a"}, "queued behind the first (same lock)")
    deadline = time.monotonic() + 5
    while (await job(client, running))["status"] != "running" and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await old.stop()  # the old master's process is gone
    await old_lease.resign()

    _, new = await master(client, "n2", {"demo.hang": quick, "demo.quick": quick})
    ended = await job(client, running)
    assert ended["status"] == "error" and ended["error"] == "interrupted by a master change"
    assert "ended by the new master 'n2'" in ended["log"][-1][1]
    assert (await until_final(client, queued))["result"] == {"ran_on": "n2"}
    await new.stop()


async def test_a_deposed_master_cannot_write_jobs(client):
    lease, runner = await master(client, "n1", {"demo.quick": lambda ctx, args: asyncio.sleep(0)})
    await lease.resign()
    other = MasterLease(client, key=model.MASTER_KEY, ttl_s=5)
    assert await other.campaign("n2") is not None
    with pytest.raises(NotMaster):
        await runner.submit("demo.quick", {}, "too late")
    kvs, _ = await client.get_prefix(model.JOBS)
    assert kvs == []


async def test_a_queued_job_can_be_canceled_but_a_running_one_cannot(client):
    gate = asyncio.Event()

    async def slow(ctx: JobContext, args: dict) -> None:
        await gate.wait()

    _, runner = await master(client, "n1", {"demo.slow": slow})
    running = await runner.submit("demo.slow", {"name": "a"}, "first")
    queued = await runner.submit("demo.slow", {"name": "a"}, "waits for the lock on 'a'")
    deadline = time.monotonic() + 20
    while (await job(client, running))["status"] != "running" and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert (await job(client, running))["status"] == "running"
    assert runner.busy("a")
    with pytest.raises(Conflict, match=f"job {running} is already running"):
        await runner.cancel(running)
    await runner.cancel(queued)
    canceled = await job(client, queued)
    assert canceled["status"] == "canceled" and canceled["started"] is None
    gate.set()
    assert (await until_final(client, running))["status"] == "success"
    with pytest.raises(Conflict, match="has already ended"):
        await runner.cancel(running)
    await runner.stop()
