"""Every scenario directory, replayed on the simulated cluster and compared with its golden events."""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from pathlib import Path

import pytest
from expectations import unmet
from fakes.clock import FakeClock
from fakes.loop import run
from simcluster import SimCluster

from hostagent.master import cluster_settings

HERE = Path(__file__).parent
SCENARIOS = sorted(p.parent.name for p in HERE.glob("*/scenario"))


def instances(count: int, nodes: list[str]) -> list[dict]:
    return [{"name": f"vm{i:02d}", "primary_node": nodes[i % len(nodes)], "admin_state": "up", "memory_mib": 256,
             "priority": "normal", "disk_template": "file", "disks": [{"size_mib": 64}], "nics": [],
             "hvparams": {}} for i in range(count)]


def instance(name: str, template: str, nodes: str, *flags: str) -> dict:
    """`instance db1 mirror n1:n2 auto-failover priority=critical`: one instance record as `instance add` makes."""
    primary, _, secondary = nodes.partition(":")
    record = {"name": name, "primary_node": primary, "admin_state": "up", "memory_mib": 512, "priority": "normal",
              "disk_template": template, "disks": [{"index": 0, "size_mib": 64}], "nics": [], "hvparams": {},
              "port_base": 11000}
    if secondary:
        record["secondary_node"] = secondary
    for flag in flags:
        key, _, value = flag.partition("=")
        record[key.replace("-", "_")] = value.split(",") if key == "after" else _value(value) if value else True
    return record


def _value(text: str) -> object:
    """`60`, `false`: as JSON (numbers and flags as `instance add` stores them); `critical`: as the word."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def flags(words: list[str]) -> dict[str, str]:
    """`boots=30,hang crashes-after=5 ok` -> {"boots": "30,hang", "crashes-after": "5", "ok": ""}."""
    return {key: value for key, _, value in (w.partition("=") for w in words)}


def replay(directory: Path) -> list[str]:
    """Build the cluster the scenario names, run its commands at their times, return the product's events."""
    lines = [ln.split("#")[0].split() for ln in (directory / "scenario").read_text().splitlines()]
    lines = [ln for ln in lines if ln]
    spec = {ln[0]: ln[1:] for ln in lines if not ln[0].startswith("t=")}
    named = [instance(*ln[1:]) for ln in lines if ln[0] == "instance"]
    timed = sorted(((float(ln[0][2:]), ln[1:]) for ln in lines if ln[0].startswith("t=")), key=lambda c: c[0])
    clock = FakeClock()
    root = tempfile.TemporaryDirectory(prefix="sim-")
    sim = SimCluster(clock, spec["nodes"], Path(root.name))
    settings = dict(kv.split("=", 1) for kv in spec.get("cluster", []))
    sim.seed(instances(int(spec.get("instances", ["0"])[0]), spec["nodes"]) + named,
             {k: _value(v) for k, v in settings.items()})
    for node in sim.nodes.values():
        node.never_in_sync.update(spec.get("copy-not-in-sync", []))
    by_name = {f"vm{i:02d}": spec["nodes"][i % len(spec["nodes"])] for i in range(int(spec.get("instances", ["0"])[0]))}
    for name in spec.get("broken", []):
        sim.nodes[by_name[name]].broken.add(name)
    for verb, name, *rest in (ln for ln in lines if ln[0] in ("guest", "node")):
        (sim.guest if verb == "guest" else sim.node)(name, flags(rest))
    failed: list[str] = []  # `expect` lines that did not hold, operator commands no master took

    async def main() -> list[str]:
        t0 = clock.time()
        for at, (verb, *args) in timed:
            await asyncio.sleep(max(0.0, t0 + at - clock.time()))
            targets = list(sim.nodes) if args == ["all"] else args
            if verb == "power-on":
                for n in targets:
                    sim.power_on(n)
            elif verb == "power-off":
                for n in targets:
                    sim.power_off(n)
            elif verb in ("cut-off", "reconnect"):
                for n in targets:
                    sim.cut_off(n, verb == "cut-off")
            elif verb in ("freeze-agent", "thaw-agent"):
                for n in targets:
                    sim.freeze_agent(n, verb == "freeze-agent")
            elif verb in ("freeze-node", "thaw-node"):
                for n in targets:
                    sim.freeze_node(n, verb == "freeze-node")
            elif verb in OPERATOR:
                if not await sim.operator(OPERATOR[verb]):
                    failed.append(f"t={at:.0f} {verb}: no master took it")
            elif verb in ("guest", "node"):
                (sim.guest if verb == "guest" else sim.node)(args[0], flags(args[1:]))
            elif verb == "start":
                refused = await sim.start(args[0])
                assert not refused, f"{directory.name}: t={at:.0f} start {args[0]} was refused: {refused}"
            elif verb == "expect":
                if miss := unmet(sim, args):
                    failed.append(f"t={at:.0f} expect {' '.join(args)}: {miss}")
            elif verb != "end":
                raise AssertionError(f"{directory.name}: unknown command {verb!r}")
        await sim.stop()
        assert not sim.violations, f"{directory.name}: " + "; ".join(sim.violations[:5])
        assert not failed, f"{directory.name}: " + "; ".join(failed)
        return sim.events(t0)
    try:
        return run(clock, main())  # type: ignore[no-any-return]
    finally:
        root.cleanup()


# The operator's commands, as the API has the master run them.
OPERATOR = {"disarm": lambda store: cluster_settings.set_fencing(store, False),
            "arm": lambda store: cluster_settings.set_fencing(store, True),
            "alert-clear": cluster_settings.clear_alert}


@pytest.mark.parametrize("name", SCENARIOS)
def test_a_scenario_writes_its_golden_events(name: str) -> None:
    events = replay(HERE / name)
    golden = HERE / name / "events.golden"
    if os.environ.get("CORRAL_REGEN_GOLDENS"):
        golden.write_text("\n".join(events) + "\n")
    assert golden.exists(), f"{name} has no events.golden: run with CORRAL_REGEN_GOLDENS=1 (tests/scenarios/README.md)"
    assert events == golden.read_text().splitlines(), f"{name}: the events differ from its golden"


def test_a_replay_is_the_same_every_time() -> None:
    assert replay(HERE / "frozen-agent") == replay(HERE / "frozen-agent")
