"""The invariants SimCluster checks against what the product does, shown to fail when it is broken: an
order from a deposed master obeyed, a QEMU started on a node without its lease, a guest moved while the
cluster alert stands. Each is made to happen by going around the product; the real node refuses the first.
The last two are faults these checks found in the product, fixed since."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from fakes.clock import FakeClock
from fakes.loop import run
from simcluster import SimCluster, wait_until
from test_scenario_dirs import instance

from election.etcd import Op
from hostagent import model
from hostagent.orders import OrderFailed

NODES = ["n1", "n2", "n3"]


def master(sim: SimCluster) -> str | None:
    return next((name for name, role in sim.roles.items() if role.lease_ok()), None)


class AdmitsAll:
    """A node that skips the token check (hostagent.node.fencing.TokenGuard) of every order."""

    async def admit(self, *_: Any) -> None:
        return None


def deposed_master_order(tmp_path, guard: Any = None) -> tuple[str, list[str]]:
    """The master is powered off, another takes over; then an order with the old master's token reaches
    n3. What n3 answered, and what the cluster's checks found."""
    clock = FakeClock()
    sim = SimCluster(clock, NODES, tmp_path)
    sim.seed([])
    if guard is not None:
        sim.nodes["n3"].tokens = guard

    async def main() -> str:
        for name in NODES:
            sim.power_on(name)
        assert await wait_until(clock, lambda: master(sim) is not None, 30)
        old = master(sim)
        assert old is not None and old != "n3", old
        token = sim.roles[old].token
        sim.power_off(old)
        assert await wait_until(clock, lambda: master(sim) not in (None, old), 60)
        try:
            await sim.nodes["n3"].receive(old, "node.hello", {}, token)  # type: ignore[arg-type]
            answer = "obeyed"
        except OrderFailed as exc:
            answer = exc.code
        await sim.stop()
        return answer
    return run(clock, main()), sim.violations


def test_an_order_from_a_deposed_master_is_refused_by_the_node(tmp_path):
    answer, violations = deposed_master_order(tmp_path)
    assert (answer, violations) == ("stale-token", [])


def test_a_node_that_obeyed_a_deposed_master_is_caught(tmp_path):
    answer, violations = deposed_master_order(tmp_path, AdmitsAll())
    assert answer == "obeyed"
    assert [v for v in violations if "obeyed node.hello" in v and "not the current master's" in v], violations


@pytest.mark.parametrize("breach", ["no lease", "under the alert"])
def test_a_start_the_product_should_not_have_made_is_caught(tmp_path, breach: str):
    clock = FakeClock()
    sim = SimCluster(clock, NODES, tmp_path)
    web = instance("web1", "file", "n1")
    sim.seed([web])

    async def main() -> None:
        for name in NODES:
            sim.power_on(name)
        assert await wait_until(clock, lambda: sim.running().get("web1") == ["n1"], 30)
        if breach == "no lease":
            sim.freeze_agent("n2")
            await asyncio.sleep(30)  # its lease expires in etcd
        else:
            cluster = model.loads(sim.etcd.kvs[model.CLUSTER_KEY].value)
            sim.etcd.txn([], [Op.put(model.CLUSTER_KEY, model.dumps({**cluster, "alert": {"reason": "test"}}))], [])
        sim.nodes["n2"].order("instance.start", {"instance": web, "hvparams": {}})  # not through the master
        await sim.stop()
    run(clock, main())
    said = "which does not hold its node lease" if breach == "no lease" else "moved from n1 to n2 while"
    assert [v for v in sim.violations if said in v], sim.violations


def test_a_thawed_node_obeys_no_order_queued_by_a_master_deposed_while_it_was_frozen(tmp_path):
    clock = FakeClock()
    sim = SimCluster(clock, NODES, tmp_path)
    sim.seed([])

    async def main() -> None:
        for name in NODES:
            sim.power_on(name)
        assert await wait_until(clock, lambda: master(sim) is not None, 30)
        old = master(sim)
        assert old is not None
        node = next(n for n in NODES if n != old)
        await sim.ops[old].store.order(node, "node.hello", {})  # the node knows this master's token
        sim.freeze_agent(node)
        queued = asyncio.create_task(sim.ops[old].store.order(node, "node.hello", {}))  # waits in its socket
        await asyncio.sleep(1)
        sim.power_off(old)
        assert await wait_until(clock, lambda: master(sim) not in (None, old), 60)
        sim.freeze_agent(node, False)
        await asyncio.gather(queued, return_exceptions=True)
        await sim.stop()
    run(clock, main())
    assert not sim.violations, sim.violations


def test_a_failed_over_instance_is_not_given_back_to_the_lost_node_by_its_stale_report(tmp_path):
    """n2 is cut off; db2 fails over to n3, where its guest dies at once. n2's last report, 20 s old, still
    shows db2 running: db2 must stay n3's (restarted there, or given up), never be handed back to n2,
    which holds no lease, nor start there from its outdated copy when n2 comes back."""
    clock = FakeClock()
    sim = SimCluster(clock, NODES, tmp_path)
    sim.seed([instance("db2", "mirror", "n2:n3", "auto-failover")])
    sim.nodes["n3"].broken.add("db2")
    primaries: list[str] = []  # db2's primary, each time it changed

    async def main() -> None:
        sim.power_on("n1")
        await asyncio.sleep(1)
        sim.power_on("n2")
        sim.power_on("n3")
        await asyncio.sleep(60)  # db2 runs on n2, its copy on n3 in sync
        sim.cut_off("n2")
        for _ in range(600):
            primary = next(i["primary_node"] for i in sim.instances() if i["name"] == "db2")
            if primary != (primaries or [""])[-1]:
                primaries.append(primary)
            await asyncio.sleep(0.1)
        sim.cut_off("n2", False)
        await asyncio.sleep(30)
        await sim.stop()
    run(clock, main())
    assert primaries == ["n2", "n3"], f"db2's primary went {' -> '.join(primaries)} while n2 was cut off"
    assert "n2" not in sim.running().get("db2", []), "db2 started on n2 from its outdated copy"
