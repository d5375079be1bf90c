"""Random failure sequences on the simulated cluster (simcluster.py): the real master and node loops,
faults thrown at random, then healed. After every virtual tenth of a second no instance may run on two
nodes (checked by the cluster); once the faults stop, every instance marked up must run again, on its
primary, within LIVENESS_S. The run says how many seeds exercised each rule, so a reader sees it is not
stuck on one path. `make test` runs CORRAL_SIM_SEEDS (200) seeds; `make test-fast` a few.
"""

from __future__ import annotations

import asyncio
import collections
import os
import random
import tempfile
from pathlib import Path

from fakes.clock import FakeClock
from fakes.loop import run
from simcluster import SimCluster
from test_scenario_dirs import instance

SEEDS = int(os.environ.get("CORRAL_SIM_SEEDS", "6"))
FAST_DIR = "/dev/shm" if os.path.isdir("/dev/shm") else None
FAULTS_UNTIL_S = 200.0
LIVENESS_S = 150.0
NODES = ["n1", "n2", "n3", "n4"]
# Each rule, by the kind of event the product writes when it applies (an operator's change: the alert cleared).
RULES = {"node-lost": "node-lost", "fail-over": "fail-over", "refusal": "refuse", "alert": "alert",
         "alert cleared": "operator", "node back": "node-back", "restart": "restart"}


def story(seed: int) -> list[tuple[float, str, str]]:
    """Faults at random times: a node powered off or on, cut off or reconnected; an operator clearing the alert."""
    rng = random.Random(seed)
    at, steps = 20.0, []
    while True:
        at += rng.uniform(5, 60)
        if at >= FAULTS_UNTIL_S:
            return steps
        steps.append((at, rng.choice(["power-off", "power-on", "cut-off", "reconnect", "alert-clear"]),
                      rng.choice(NODES)))


def one_seed(seed: int, root: Path) -> tuple[list[str], list[str], list[str]]:
    clock = FakeClock()
    sim = SimCluster(clock, NODES, root)
    sim.seed([instance("db1", "mirror", "n1:n2", "auto-failover", "priority=critical"),
              instance("db2", "mirror", "n2:n3", "auto-failover"), instance("db3", "mirror", "n3:n4"),
              instance("web1", "file", "n1"), instance("web4", "file", "n4")])

    async def main() -> list[str]:
        t0 = clock.time()
        for name in NODES:
            sim.power_on(name)
        for at, verb, node in story(seed):
            await asyncio.sleep(max(0.0, t0 + at - clock.time()))
            if verb == "power-off" and sim.nodes[node].powered:
                sim.power_off(node)
            elif verb == "power-on" and not sim.nodes[node].powered:
                sim.power_on(node)
            elif verb in ("cut-off", "reconnect"):
                sim.cut_off(node, verb == "cut-off")
            elif verb == "alert-clear":
                await sim.clear_alert()
        await asyncio.sleep(max(0.0, t0 + FAULTS_UNTIL_S - clock.time()))
        for name, node in sim.nodes.items():  # the faults stop: every node up and connected
            sim.cut_off(name, False)
            if not node.powered:
                sim.power_on(name)
        await asyncio.sleep(30)
        await sim.clear_alert()
        await asyncio.sleep(LIVENESS_S)
        late = []
        for inst in sim.instances():
            where = sim.running().get(inst["name"], [])
            if inst.get("admin_state") == "up" and where != [inst["primary_node"]]:
                late.append(f"{inst['name']} (primary {inst['primary_node']}) runs on {where or 'no node'}")
        await sim.stop()
        return late
    late = run(clock, main())
    return sim.violations, late, sim.events()


def test_random_failures_never_run_an_instance_twice_and_everything_runs_again_once_they_stop(capsys):
    exercised: collections.Counter[str] = collections.Counter()
    for seed in range(SEEDS):
        with tempfile.TemporaryDirectory(prefix="corral-sim-", dir=FAST_DIR) as root:  # the fences' feed files
            violations, late, events = one_seed(seed, Path(root))
        assert not violations, f"seed {seed}: {violations[:3]}; story {story(seed)}"
        assert not late, f"seed {seed}: {LIVENESS_S:.0f} s after the faults stopped: {late}; story {story(seed)}"
        exercised.update({rule for rule, kind in RULES.items() if any(f" {kind} " in e for e in events)})
    with capsys.disabled():
        print(f"\n{SEEDS} random failure sequences; seeds that exercised each rule: "
              + ", ".join(f"{k} {exercised[k]}" for k in RULES))
    assert exercised["fail-over"] and exercised["node-lost"], "the sequences never lost a node: they test nothing"
