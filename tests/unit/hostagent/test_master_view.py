"""The master's cluster view (hostagent.master.view): alive is a fresh report AND the node lease, busy is a
job holding the instance's lock, and the duties of one pass of the master loop share one read of etcd."""

from __future__ import annotations

import asyncio
from typing import Any

from election.etcd import Op
from fakes.clock import FakeClock
from fakes.etcd import FakeEtcd
from fakes.loop import run
from fakes.master import elected

from hostagent import model
from hostagent.master.jobs import JobContext
from hostagent.master.view import JOB_UNSEEN_MAX_S, Views, for_failovers, for_restarts, read
from hostagent.status import REPORT_STALE_AFTER_S


def inst(name: str, primary: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "primary_node": primary, "admin_state": "up", **extra}


def seeded(clock: FakeClock, instances: list[dict[str, Any]]) -> FakeEtcd:
    """n1 reports and holds its lease; n2 reports but its lease is gone; n3 holds its lease, its report stale."""
    etcd = FakeEtcd(clock)
    now = clock.time()
    reports = {"n1": now - 1, "n2": now - 1, "n3": now - REPORT_STALE_AFTER_S - 1}
    ops = [Op.put(model.node_key(n), model.dumps({"name": n})) for n in reports]
    ops += [Op.put(model.report_key(n), model.dumps({"node": n, "time": t, "instances": {}}))
            for n, t in reports.items()]
    ops += [Op.put(model.lease_key(n), model.dumps({"node": n})) for n in ("n1", "n3")]
    ops += [Op.put(model.instance_key(i["name"]), model.dumps(i)) for i in instances]
    etcd.txn([], ops, [])
    return etcd


def test_a_node_is_alive_only_with_a_fresh_report_and_its_lease() -> None:
    clock = FakeClock()
    etcd = seeded(clock, [])

    async def main() -> None:
        master = await elected(etcd)
        view = await read(master.store)
        assert view.fresh == {"n1", "n2"}
        assert view.leases == {"n1", "n3"}
        assert view.alive == {"n1"}
        assert {n["name"] for n in view.nodes} == {"n1", "n2", "n3"}
        assert for_failovers(view).alive == for_restarts(view, ()).alive_nodes == {"n1"}
        await master.close()
    run(clock, main())


def test_an_instance_is_busy_while_a_job_holds_it_then_unseen_until_its_node_reports_again() -> None:
    clock = FakeClock()
    etcd = seeded(clock, [inst("web1", "n1"), inst("web2", "n1")])
    release = asyncio.Event()

    async def hold(ctx: JobContext, args: dict[str, Any]) -> dict[str, Any]:
        await release.wait()
        return {}

    async def main() -> None:
        master = await elected(etcd, {"instance.start": hold})
        await master.role.require().submit("instance.start", {"name": "web1"}, "start instance 'web1'")
        view = await read(master.store)
        assert (view.busy, view.unseen) == ({"web1"}, frozenset())
        release.set()
        await asyncio.sleep(1)  # the job ends after n1's last report: that report cannot show what it did
        view = await read(master.store)
        assert (view.busy, view.unseen) == (frozenset(), {"web1"})
        assert "web1" in for_restarts(view, ()).busy and "web1" not in for_failovers(view).busy
        await etcd.client().put(model.report_key("n1"), model.dumps({"node": "n1", "time": clock.time()}))
        assert (await read(master.store)).unseen == frozenset()
        await master.close()
    run(clock, main())


def test_a_job_that_ended_long_ago_leaves_nothing_unseen() -> None:
    clock = FakeClock()
    etcd = seeded(clock, [inst("web1", "n3")])  # n3's report is stale: it never catches up

    async def done(ctx: JobContext, args: dict[str, Any]) -> dict[str, Any]:
        return {}

    async def main() -> None:
        master = await elected(etcd, {"instance.start": done})
        await master.role.require().submit("instance.start", {"name": "web1"}, "start instance 'web1'")
        await asyncio.sleep(1)
        assert (await read(master.store)).unseen == {"web1"}
        await asyncio.sleep(JOB_UNSEEN_MAX_S)
        assert (await read(master.store)).unseen == frozenset()
        await master.close()
    run(clock, main())


def test_the_duties_of_one_pass_share_one_read_and_the_next_pass_reads_again() -> None:
    clock = FakeClock()
    etcd = seeded(clock, [inst("web1", "n1")])

    async def main() -> None:
        master = await elected(etcd)
        views = Views(master.store)
        first, again = await asyncio.gather(views.current(), views.current())
        assert first is again
        await etcd.client().put(model.instance_key("web2"), model.dumps(inst("web2", "n1")))
        assert await views.current() is first  # same pass: the duties judge one snapshot
        tick = master.role.tick
        while master.role.tick == tick:
            await asyncio.sleep(1)  # the master loop's next pass
        assert {i["name"] for i in (await views.current()).instances} == {"web1", "web2"}
        await master.close()
    run(clock, main())


def test_the_restart_decision_counts_the_starts_in_flight_on_their_node_and_leaves_them_alone() -> None:
    clock = FakeClock()
    etcd = seeded(clock, [inst("web1", "n1"), inst("web2", "n1"), inst("db1", "n2")])

    async def main() -> None:
        master = await elected(etcd)
        decided = for_restarts(await read(master.store), {"web1", "web2", "db1", "gone"})
        assert dict(decided.starting_on) == {"n1": 2, "n2": 1}
        assert decided.busy == {"web1", "web2", "db1", "gone"}
        await master.close()
    run(clock, main())


def test_the_failover_decision_sees_whether_each_copy_is_trusted() -> None:
    clock = FakeClock()
    etcd = seeded(clock, [inst("web1", "n1"), inst("web2", "n1")])
    etcd.txn([], [Op.put(model.replica_key("web1"), model.dumps({"name": "web1", "gen": 1, "in_sync": True}))], [])

    async def main() -> None:
        master = await elected(etcd)
        trust = {i["name"]: i["replica_in_sync"] for i in for_failovers(await read(master.store)).instances}
        assert trust == {"web1": True, "web2": False}
        await master.close()
    run(clock, main())
