"""Random failure sequences on the simulated cluster (simcluster.py): the real master and node loops,
faults thrown at random, then healed. The cluster checks its invariants all along (no instance on two
nodes, no QEMU started without its node's lease, no order obeyed from a deposed master, nothing moved
under the alert or disarm); once the faults stop, every instance marked up must run again, on its
primary, within LIVENESS_S. Failback is on (FAILBACK_S), so instances failed over go home again. The run
says how many seeds exercised each rule, so a reader sees it is not stuck on one path. `make test` runs
CORRAL_SIM_SEEDS (200) seeds; `make test-fast` a few.

Coverage (`make test`) traces the first TRACED_SEEDS, the seeds `make test-fast` runs; the rest run untraced, on
every core (a seed is a second or two of CPU and shares nothing): tracing doubled their time and they run the same
lines as the first ones and tests/scenarios' directories.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import multiprocessing
import os
import random
import tempfile
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import coverage

from fakes.clock import FakeClock
from fakes.loop import run
from simcluster import SimCluster
from test_scenario_dirs import OPERATOR, instance

SEEDS = int(os.environ.get("CORRAL_SIM_SEEDS", "6"))
TRACED_SEEDS = 6
FAST_DIR = "/dev/shm" if os.path.isdir("/dev/shm") else None
FAULTS_UNTIL_S = 200.0
LIVENESS_S = 150.0
FAILBACK_S = 20
NODES = ["n1", "n2", "n3", "n4"]
# Each rule, by the kind of event the product writes when it applies.
RULES = {"node-lost": "node-lost", "fail-over": "fail-over", "refusal": "refuse", "alert": "alert",
         "node back": "node-back", "restart": "restart", "fail-back": "fail-back"}
# The operator's commands, counted when a master took them.
COMMANDS = {"alert cleared": "alert-clear", "disarmed": "disarm", "armed": "arm"}


def story(seed: int) -> list[tuple[float, str, str]]:
    """Faults at random times: a node powered off or on, cut off or reconnected, its agent frozen or thawed;
    an operator clearing the alert, or disarming fencing for a while."""
    rng = random.Random(seed)
    at, steps = 20.0, []
    while True:
        at += rng.uniform(5, 60)
        if at >= FAULTS_UNTIL_S:
            return sorted(steps)
        verb = rng.choice(["power-off", "power-on", "cut-off", "reconnect", "freeze-agent", "thaw-agent",
                           "alert-clear", "disarm"])
        steps.append((at, verb, rng.choice(NODES)))
        if verb == "disarm":  # for a while, as an operator working on the network would
            steps.append((min(at + rng.uniform(5, 60), FAULTS_UNTIL_S - 1), "arm", ""))


def one_seed(seed: int, root: Path) -> tuple[list[str], list[str], list[str], set[str]]:
    clock = FakeClock()
    sim = SimCluster(clock, NODES, root)
    sim.seed([instance("db1", "mirror", "n1:n2", "auto-failover", "priority=critical"),
              instance("db2", "mirror", "n2:n3", "auto-failover"), instance("db3", "mirror", "n3:n4"),
              instance("web1", "file", "n1"), instance("web4", "file", "n4")], {"failback_after_s": FAILBACK_S})
    done: set[str] = set()

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
            elif verb in ("freeze-agent", "thaw-agent") and sim.nodes[node].powered:
                sim.freeze_agent(node, verb == "freeze-agent")
            elif verb in OPERATOR and await sim.operator(OPERATOR[verb]):
                done.add(verb)
        await asyncio.sleep(max(0.0, t0 + FAULTS_UNTIL_S - clock.time()))
        for name, node in sim.nodes.items():  # the faults stop: every node up, connected and awake
            sim.cut_off(name, False)
            sim.freeze_agent(name, False)
            if not node.powered:
                sim.power_on(name)
        await asyncio.sleep(30)
        await sim.clear_alert()
        await sim.operator(OPERATOR["arm"])
        await asyncio.sleep(LIVENESS_S)
        late = []
        for inst in sim.instances():
            where = sim.running().get(inst["name"], [])
            if inst.get("admin_state") == "up" and where != [inst["primary_node"]]:
                late.append(f"{inst['name']} (primary {inst['primary_node']}) runs on {where or 'no node'}")
        await sim.stop()
        return late
    late = run(clock, main())
    return sim.violations, late, sim.events(), done


def judged(seed: int) -> tuple[str | None, set[str]]:
    """One seed's failure (None when it kept every invariant and everything ran again), and the rules it exercised."""
    with tempfile.TemporaryDirectory(prefix="corral-sim-", dir=FAST_DIR) as root:  # the fences' feed files
        violations, late, events, done = one_seed(seed, Path(root))
    if late:
        violations.append(f"{LIVENESS_S:.0f} s after the faults stopped: {late}")
    failure = f"seed {seed}: {violations[:3]}; story {story(seed)}" if violations else None
    return failure, ({rule for rule, kind in RULES.items() if any(f" {kind} " in e for e in events)}
                     | {rule for rule, verb in COMMANDS.items() if verb in done})


@contextlib.contextmanager
def untraced() -> Iterator[None]:
    """Coverage paused meanwhile, when this process records it (`make test`)."""
    cov = coverage.Coverage.current()
    if cov is None:
        yield
        return
    cov.stop()
    try:
        yield
    finally:
        cov.start()


def test_random_failures_never_run_an_instance_twice_and_everything_runs_again_once_they_stop(capsys):
    outcomes = [judged(seed) for seed in range(min(SEEDS, TRACED_SEEDS))]
    if SEEDS > TRACED_SEEDS:
        with untraced(), ProcessPoolExecutor(len(os.sched_getaffinity(0)),
                                             mp_context=multiprocessing.get_context("fork")) as pool:
            outcomes += pool.map(judged, range(TRACED_SEEDS, SEEDS))
    failed = [failure for failure, _ in outcomes if failure]
    exercised = collections.Counter(rule for _, rules in outcomes for rule in rules)
    with capsys.disabled():
        print(f"\n{SEEDS} random failure sequences; seeds that exercised each rule: "
              + ", ".join(f"{k} {exercised[k]}" for k in [*RULES, *COMMANDS]))
    assert not failed, "\n".join(failed)
    assert exercised["fail-over"] and exercised["node-lost"], "the sequences never lost a node: they test nothing"
