"""A scenario's `expect` lines: what must hold at their time that the golden events do not show.

    t=60 expect 59 running              instances running, on any node
    t=60 expect vm03 running [n2]       vm03 runs (on n2)
    t=60 expect vm03 stopped            vm03 runs nowhere
    t=60 expect order db1 before web1   db1's first start began before web1's
    t=60 expect n1 boots-at-once 1      the most judged boots under way at once on n1 so far
    t=60 expect vm03 said TEXT          an event the product wrote about vm03 says TEXT
    t=60 expect vm03 console TEXT       the console kept when vm03 was given up has a line holding TEXT
"""

from __future__ import annotations

from simcluster import SimCluster


def unmet(sim: SimCluster, words: list[str]) -> str:
    """"" if the expectation holds now, else what was expected and what is."""
    running = sim.running()
    match words:
        case [count, "running"] if count.isdigit():
            return "" if len(running) == int(count) else f"{len(running)} running"
        case [name, "running", *node]:
            return "" if name in running and node in ([], running[name]) else f"{name} runs on {running.get(name)}"
        case [name, "stopped"]:
            return f"{name} runs on {running[name]}" if name in running else ""
        case ["order", first, "before", then]:
            began = {}
            for node in sim.nodes.values():
                for at, name in node.starts:
                    began[name] = min(at, began.get(name, at))
            if first not in began or then not in began:
                return f"started: {sorted(began)}"
            return "" if began[first] < began[then] else f"{first} at {began[first]:.0f}, {then} at {began[then]:.0f}"
        case [node, "boots-at-once", count]:
            most = sim.nodes[node].most_booting
            return "" if most == int(count) else f"at most {most} at once"
        case [name, "said", *text]:
            said = sim.said(name)
            return "" if any(" ".join(text) in m for m in said) else f"{name}'s events said: {said}"
        case [name, "console", *text]:
            console = sim.track(name).get("console", [])
            return "" if any(" ".join(text) in line for line in console) else f"console kept: {console}"
    raise AssertionError(f"unknown expectation: expect {' '.join(words)}")
