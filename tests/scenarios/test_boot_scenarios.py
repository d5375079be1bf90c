"""Guests that start but do not boot, replayed against the master's real restart decisions.

The simulated node judges each boot like hostagent.node.boothealth: a QEMU is
"waiting" after its start, "up" once its guest prints the pattern (after
`boots_in` ticks, if ever), "timeout" when the boot timeout passes first. A
start takes one tick; a stop ordered by the decision removes the QEMU. The
transcript is the list of events; invariants are checked after every tick.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hostagent.master.decide.restarts import Policy, Track, View, decide

POLICY = Policy(max_attempts=5, backoff_s=2.0, max_backoff_s=60.0, stable_s=60.0, max_starts_per_node=4)
CONSOLE = ["[    2.1] EXT4-fs (vda): mounted filesystem", "[    2.3] Run /sbin/init", "waiting for network..."]


@dataclass
class Qemu:
    started_at: float
    boot: str = "waiting"


@dataclass
class Sim:
    instances: list[dict]
    boots_in: dict[str, list[float | None]]  # per instance, per boot: ticks until it prints the pattern (None: never)
    qemus: dict[str, Qemu] = field(default_factory=dict)
    tracks: dict[str, Track] = field(default_factory=dict)
    transcript: list[str] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    given_up: dict[str, tuple[str, ...]] = field(default_factory=dict)  # instance -> console kept
    now: float = 0.0

    def start(self, name: str) -> None:
        self.qemus[name] = Qemu(self.now)
        self.boots_in.setdefault(name, [None])

    def inst(self, name: str) -> dict:
        return next(i for i in self.instances if i["name"] == name)

    def judge(self) -> None:
        for name, qemu in self.qemus.items():
            inst = self.inst(name)
            plan = self.boots_in[name][0]
            if qemu.boot == "waiting" and plan is not None and self.now - qemu.started_at >= plan:
                qemu.boot = "up"
            elif qemu.boot == "waiting" and self.now - qemu.started_at >= inst["boot_timeout_s"]:
                qemu.boot = "timeout"

    def report(self) -> dict:
        return {"time": self.now, "cpus": 2, "load_1m": 0.1, "memory_free_mib": 16000,
                "instances": {name: self.entry(name, q) for name, q in self.qemus.items()}}

    def entry(self, name: str, qemu: Qemu) -> dict:
        inst = self.inst(name)
        if not inst["boot_pattern"]:
            return {"status": "running"}  # not judged: no boot fields
        return {"status": "running", "boot": qemu.boot, "boot_started_at": qemu.started_at,
                "boot_pattern": inst["boot_pattern"], "boot_timeout_s": inst["boot_timeout_s"],
                **({"boot_console": CONSOLE} if qemu.boot == "timeout" else {})}

    def tick(self) -> None:
        self.judge()
        decision = decide(View(tuple(self.instances), {"n1": self.report()}, frozenset({"n1"})),
                          self.tracks, self.now, POLICY)
        self.tracks = decision.tracks
        self.transcript += [f"t={self.now:.0f} {e.kind} {e.instance}" for e in decision.events]
        self.messages += [e.message for e in decision.events]
        self.given_up.update({e.instance: e.console for e in decision.events if e.kind == "give-up"})
        for name, _ in decision.stops:
            assert self.tracks[name].failed, f"{name} stopped without being given up"
            del self.qemus[name]
        for name, _ in decision.starts:
            assert name not in self.qemus or self.qemus[name].boot == "timeout", \
                f"{name} restarted while its boot was {self.qemus[name].boot}"
            if name in self.qemus:
                self.boots_in[name] = self.boots_in[name][1:] or [None]
            self.start(name)  # the restarter stops a QEMU that is still there first
        self.now += 1.0


def web(**extra) -> dict:
    return {"name": "web1", "primary_node": "n1", "admin_state": "up", "memory_mib": 256, "priority": "normal",
            "boot_pattern": "login:", "boot_timeout_s": 4.0, **extra}


def test_a_boot_that_times_out_counts_as_a_failed_start_and_is_given_up_with_its_console():
    sim = Sim([web()], {"web1": [None]})
    sim.start("web1")  # the operator's start: judged like any other
    for _ in range(80):
        sim.tick()
    # each timeout 4 s after its start; the next start when that is past the backoff (2, 4, 8, 16 s)
    assert sim.transcript == ["t=4 restart web1", "t=8 restart web1", "t=12 restart web1", "t=20 restart web1",
                              "t=36 restart web1", "t=40 give-up web1"]
    assert sim.tracks["web1"].failed == ("gave up after 5 start attempts on node 'n1': did not boot: no console "
                                         "line matching 'login:' within 4 s")
    assert sim.given_up == {"web1": tuple(CONSOLE)}
    assert "web1" not in sim.qemus  # the last QEMU was stopped: given up, it holds nothing


def test_a_restart_after_a_boot_timeout_says_why():
    sim = Sim([web()], {"web1": [None, 2.0]})
    sim.start("web1")
    for _ in range(10):
        sim.tick()
    assert sim.messages == ["instance 'web1' is marked up but did not boot: no console line matching 'login:' "
                            "within 4 s: starting it on node 'n1' (attempt 1 of 5)"]
    assert sim.qemus["web1"].boot == "up"


def test_a_boot_still_waiting_is_not_restarted_and_does_not_count_as_recovered():
    slow = web(boot_timeout_s=120.0)  # longer than stable_s: the wait must not reset the count
    sim = Sim([slow], {"web1": [90.0]})  # prints its pattern 90 s after the start
    sim.tracks["web1"] = Track(attempts=2, next_try_at=4.0, last_start_at=0.0, last_error="QEMU exited")
    sim.start("web1")
    for _ in range(90):
        sim.tick()
    assert sim.transcript == [] and sim.tracks["web1"].attempts == 2
    sim.tick()
    assert sim.transcript == ["t=90 recovered web1"]
    assert sim.tracks["web1"] == Track()


def test_a_boot_that_comes_up_after_failed_ones_keeps_the_count_until_it_has_run_stable_s():
    sim = Sim([web()], {"web1": [None, None, 2.0]})
    sim.start("web1")
    for _ in range(30):
        sim.tick()
    assert sim.qemus["web1"].boot == "up"
    assert sim.tracks["web1"].attempts == 2  # an up boot alone forgets nothing
    for _ in range(60):
        sim.tick()
    assert sim.transcript[-1].endswith("recovered web1") and sim.tracks["web1"] == Track()


def test_an_instance_waits_for_the_boot_of_the_one_it_names_in_after():
    app = web(name="app1", after=["web1"], boot_pattern="", boot_timeout_s=0.0)
    sim = Sim([web(), app], {"web1": [3.0]})
    sim.start("web1")
    for _ in range(3):
        sim.tick()  # web1 runs from t=0 but prints its pattern only at t=3
    assert "app1" not in sim.qemus and sim.transcript == ["t=0 wait app1"]
    for _ in range(3):
        sim.tick()
    assert "app1" in sim.qemus and sim.transcript == ["t=0 wait app1", "t=3 restart app1"]
