"""Restarts as the master's own restart duty makes them, on a simulated cluster (simcluster.py):
the real election, job runner, store and duty, on virtual time."""

from __future__ import annotations

import asyncio

from fakes.clock import FakeClock
from fakes.loop import run
from simcluster import SimCluster, wait_until
from test_scenario_dirs import instances


def test_after_a_power_loss_every_instance_runs_again_and_those_that_cannot_boot_are_given_up(tmp_path):
    """DESIGN.md's outage: 62 instances on 4 nodes come back after a power loss; 3 cannot boot."""
    clock = FakeClock()
    sim = SimCluster(clock, ["n1", "n2", "n3", "n4"], tmp_path)
    sim.seed(instances(62, list(sim.nodes)))
    broken = {"vm07", "vm21", "vm44"}
    for name in broken:
        sim.nodes[f"n{int(name[2:]) % 4 + 1}"].broken.add(name)

    async def main() -> tuple[bool, list[str]]:
        for name in sim.nodes:
            sim.power_on(name)
        t0 = clock.time()
        ok = await wait_until(clock, lambda: len(sim.running()) == 59, within_s=120)
        await asyncio.sleep(120)  # long enough for the broken ones' backoff to run out
        await sim.stop()
        return ok, sim.events(t0)
    ok, events = run(clock, main())
    assert ok, f"only {len(sim.running())} of 59 run again"
    assert not sim.violations, sim.violations
    assert sorted(e.split()[2] for e in events if " give-up " in e) == sorted(broken), events
    assert sum(" restart " in e for e in events) == 59 + 3 * 5, events
