"""Outages replayed against the master's real restart decisions (hostagent.master.decide.restarts).

A small simulator stands for the nodes: each tick it feeds `decide` the
reports, applies the starts it orders (a start takes one tick; an instance
in `broken` dies at once, as a guest that cannot boot), and checks the
invariants after every tick. The transcript is the list of events.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hostagent.master.decide.restarts import Policy, Track, View, decide

POLICY = Policy(max_attempts=5, backoff_s=2.0, max_backoff_s=60.0, stable_s=60.0, max_starts_per_node=4)


@dataclass
class Sim:
    nodes: dict[str, int]  # node -> free memory MiB
    instances: list[dict]
    broken: set[str] = field(default_factory=set)
    running: dict[str, str] = field(default_factory=dict)  # instance -> node
    tracks: dict[str, Track] = field(default_factory=dict)
    transcript: list[str] = field(default_factory=list)
    down: set[str] = field(default_factory=set)
    now: float = 0.0

    def reports(self) -> dict[str, dict]:
        return {node: {"time": self.now, "cpus": 2, "load_1m": 0.1, "memory_free_mib": free,
                       "instances": {i: {"status": "running"} for i, n in self.running.items() if n == node}}
                for node, free in self.nodes.items() if node not in self.down}

    def tick(self) -> list[tuple[str, str]]:
        view = View(tuple(self.instances), self.reports(), frozenset(self.nodes) - self.down)
        decision = decide(view, self.tracks, self.now, POLICY)
        self.tracks = decision.tracks
        self.transcript += [f"t={self.now:.0f} {e.kind} {e.instance}" for e in decision.events]
        per_node: dict[str, int] = {}
        for name, node in decision.starts:
            assert node not in self.down, f"{name} started on {node}, which is down"
            assert name not in self.running, f"{name} started while it runs on {self.running[name]}"
            per_node[node] = per_node.get(node, 0) + 1
            if name in self.broken:
                self.tracks[name] = Track(**{**self.tracks[name].to_dict(), "last_error": "QEMU exited at once"})
            else:
                self.running[name] = node
        assert all(count <= POLICY.max_starts_per_node for count in per_node.values())
        self.now += 1.0
        return decision.starts


def cluster(count: int, nodes: int = 4, **extra) -> list[dict]:
    return [{"name": f"vm{i:02d}", "primary_node": f"n{i % nodes + 1}", "admin_state": "up", "memory_mib": 256,
             "priority": "normal", **extra} for i in range(count)]


def test_after_a_power_loss_62_instances_run_again_within_a_minute_and_3_that_cannot_boot_are_given_up():
    """The seeds' outage: Ganeti's watcher took 30 minutes and missed 3 guests that did not boot."""
    sim = Sim({f"n{i}": 16000 for i in range(1, 5)}, cluster(62), broken={"vm07", "vm21", "vm44"})
    for _ in range(120):
        sim.tick()
    assert len(sim.running) == 59
    first_all_running = max(float(line.split()[0][2:]) for line in sim.transcript if " restart " in line
                            and line.split()[2] not in sim.broken)
    assert first_all_running < 60
    for name in sim.broken:
        assert sim.tracks[name].failed.startswith("gave up after 5 start attempts on node")
        assert "QEMU exited at once" in sim.tracks[name].failed
        assert sum(1 for line in sim.transcript if line.endswith(f"restart {name}")) == 5


def test_critical_instances_start_first_and_an_instance_waits_for_the_one_it_names():
    instances = cluster(8, nodes=1)
    instances[5]["priority"] = "critical"
    instances[0]["after"] = ["vm05"]
    sim = Sim({"n1": 16000}, instances)
    first = sim.tick()
    assert first[0] == ("vm05", "n1") and ("vm00", "n1") not in first
    assert "t=0 wait vm00" in sim.transcript
    for _ in range(int(POLICY.boot_window_s) + 2):  # the first four boots hold the node's four start slots
        sim.tick()
    assert "vm00" in sim.running


def test_a_node_short_of_memory_starts_nothing_and_a_down_node_is_left_alone():
    sim = Sim({"n1": 300, "n2": 16000, "n3": 16000}, cluster(3, nodes=3))
    sim.down.add("n3")
    for _ in range(5):
        sim.tick()
    assert sim.running == {"vm01": "n2"}
    assert sim.tracks["vm00"].attempts == 0
    assert sim.tracks["vm00"].last_error == "waits: node 'n1' has 300 MiB free, it needs 512 MiB"
    assert sim.transcript.count("t=0 wait vm00") == 1 and sum("wait vm00" in t for t in sim.transcript) == 1, \
        "the reason is recorded once, not every pass"
    assert "vm02" not in sim.tracks or sim.tracks["vm02"].attempts == 0
    sim.nodes["n1"] = 16000
    sim.tick()
    assert sim.running["vm00"] == "n1"
    assert sim.tracks["vm00"].last_error == "", "a wait is not a failed attempt"


def test_an_instance_that_keeps_crashing_is_given_up_but_one_that_stays_up_starts_counting_again():
    sim = Sim({"n1": 16000}, cluster(2, nodes=1))
    for _ in range(3):
        sim.tick()
        sim.running.pop("vm00", None)  # crashes right after each start
    assert sim.tracks["vm00"].attempts >= 2
    for _ in range(200):
        sim.tick()
        sim.running.pop("vm00", None)
    assert sim.tracks["vm00"].failed
    assert sim.tracks["vm01"] == Track()  # ran past stable_s once: attempts forgotten
    assert sim.transcript.count("t=60 recovered vm01") == 1


def test_an_operator_start_clears_a_given_up_instance():
    sim = Sim({"n1": 16000}, cluster(1, nodes=1), broken={"vm00"})
    for _ in range(100):
        sim.tick()
    assert sim.tracks["vm00"].failed
    del sim.tracks["vm00"]  # what `instance start` does
    sim.broken.clear()
    sim.tick()
    assert sim.running == {"vm00": "n1"}


def _report(now: float, load: float, instances: dict[str, dict]) -> dict:
    return {"time": now, "cpus": 2, "load_1m": load, "memory_free_mib": 16000, "instances": instances}


def test_boots_still_under_way_hold_the_node_start_slots_until_their_pattern_matches():
    instances = cluster(6, nodes=1)
    booting = {f"vm0{i}": {"status": "running", "boot": "waiting"} for i in range(4)}
    tracks = {name: Track(attempts=1, last_start_at=0.0, next_try_at=2.0) for name in booting}
    view = View(tuple(instances), {"n1": _report(100.0, 0.1, booting)}, frozenset({"n1"}))
    assert decide(view, tracks, 100.0, POLICY).starts == [], "four boots awaited: the node's four slots are taken"
    booting["vm00"]["boot"] = "up"
    view = View(tuple(instances), {"n1": _report(101.0, 0.1, booting)}, frozenset({"n1"}))
    assert decide(view, tracks, 101.0, POLICY).starts == [("vm04", "n1")]


def test_a_loaded_node_boots_one_guest_at_a_time_and_never_stops_altogether():
    instances = cluster(3, nodes=1)
    loaded = 20.0  # 10 per CPU: far past the limit of 4, from the guests already running
    first = decide(View(tuple(instances), {"n1": _report(0.0, loaded, {})}, frozenset({"n1"})), {}, 0.0, POLICY)
    assert first.starts == [("vm00", "n1")]
    assert [e.message for e in first.events if e.kind == "wait"] == [
        f"instance '{n}' waits: node 'n1' is loaded (10.0 per CPU, past 4.0): it boots one guest at a time "
        "before it starts" for n in ("vm01", "vm02")]
    running = {"vm00": {"status": "running"}}
    held = decide(View(tuple(instances), {"n1": _report(5.0, loaded, running)}, frozenset({"n1"})),
                  first.tracks, 5.0, POLICY)
    assert held.starts == [], "vm00 started 5 s ago without a boot pattern: its boot is still under way"
    later = POLICY.boot_window_s + 1.0
    nxt = decide(View(tuple(instances), {"n1": _report(later, loaded, running)}, frozenset({"n1"})),
                 held.tracks, later, POLICY)
    assert nxt.starts == [("vm01", "n1")]


def test_a_hung_boot_gives_its_start_slot_back_after_boot_slot_max_s_and_is_judged_at_its_timeout():
    instances = cluster(2, nodes=1)
    hung = {"vm00": {"status": "running", "boot": "waiting", "boot_started_at": 0.0}}
    tracks = {"vm00": Track(attempts=1, last_start_at=0.0, next_try_at=2.0)}
    loaded = 20.0  # one boot at a time
    early = decide(View(tuple(instances), {"n1": _report(30.0, loaded, hung)}, frozenset({"n1"})),
                   tracks, 30.0, POLICY)
    assert early.starts == []
    later = POLICY.boot_slot_max_s + 1.0
    nxt = decide(View(tuple(instances), {"n1": _report(later, loaded, hung)}, frozenset({"n1"})),
                 early.tracks, later, POLICY)
    assert nxt.starts == [("vm01", "n1")], "a boot that hangs must not stall the node's other instances"
