"""The invariants SimCluster checks against what the product does, shown to fail when it is broken: an
order from a deposed master obeyed, a QEMU started on a node without its lease, a guest moved while the
cluster alert stands. Each is made to happen by going around the product; the real node refuses the first."""

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
