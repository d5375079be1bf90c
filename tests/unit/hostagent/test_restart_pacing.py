"""The restart decision's start slots when a node's report lags behind the starts the master ordered."""

from hostagent.master.decide.restarts import Policy, Track, View, decide


def cluster(count: int, report_time: float, running: tuple[str, ...] = ()) -> View:
    instances = tuple({"name": f"vm{i:02d}", "primary_node": "n1", "admin_state": "up", "boot_pattern": "login:"}
                      for i in range(count))
    seen = {name: {"status": "running", "boot": "waiting", "boot_started_at": report_time} for name in running}
    report = {"time": report_time, "instances": seen, "memory_free_mib": 100000, "load_1m": 0.0, "cpus": 4}
    return View(instances, {"n1": report}, frozenset({"n1"}))


def test_starts_answered_but_not_yet_in_a_report_hold_their_slots() -> None:
    """A pass right after four starts were answered, on a report made before them, starts nothing more:
    the benchmark of a 60-guest power loss saw eight boots per node where the policy allows four."""
    first = decide(cluster(10, report_time=100.0), {}, 101.0)
    assert [name for name, _ in first.starts] == ["vm00", "vm01", "vm02", "vm03"]
    again = decide(cluster(10, report_time=100.5), first.tracks, 102.0)
    assert again.starts == []


def test_once_the_report_shows_them_booting_they_count_as_boots_not_as_unseen_starts() -> None:
    first = decide(cluster(10, report_time=100.0), {}, 101.0)
    shown = cluster(10, report_time=102.0, running=("vm00", "vm01", "vm02", "vm03"))
    assert decide(shown, first.tracks, 103.0).starts == []
    done = cluster(10, report_time=104.0, running=("vm01", "vm02", "vm03"))
    done_report = dict(done.reports["n1"])
    done_report["instances"] = {**done_report["instances"], "vm00": {"status": "running", "boot": "up"}}
    after = decide(View(done.instances, {"n1": done_report}, done.alive_nodes), first.tracks, 105.0)
    assert [name for name, _ in after.starts] == ["vm04"]


def test_a_start_the_node_never_reports_frees_its_slot_after_the_boot_slot_time() -> None:
    policy = Policy()
    first = decide(cluster(10, report_time=100.0), {}, 101.0, policy)
    stale = {name: Track(1, 0.0, 101.0) for name in ("vm00", "vm01", "vm02", "vm03")}
    later = decide(cluster(10, report_time=100.0), {**first.tracks, **stale}, 101.0 + policy.boot_slot_max_s, policy)
    assert len(later.starts) == 4


def test_the_load_gate_reads_the_last_10_s_and_the_1_minute_load_only_from_an_older_agent() -> None:
    """A boot storm that ended leaves the 1-minute load high for a minute: the gate goes by the 10 s figure."""
    booting = cluster(10, report_time=100.0, running=("vm00",))
    report = {**booting.reports["n1"], "load_1m": 40.0, "load_10s": 2.0}
    tracks = {"vm00": Track(1, 0.0, 99.0)}
    fresh = decide(View(booting.instances, {"n1": report}, booting.alive_nodes), tracks, 101.0)
    assert len(fresh.starts) == 3
    older = {k: v for k, v in report.items() if k != "load_10s"}
    gated = decide(View(booting.instances, {"n1": older}, booting.alive_nodes), tracks, 101.0)
    assert gated.starts == [] and any("is loaded (10.0 per CPU" in e.message for e in gated.events)
    busy = decide(View(booting.instances, {"n1": {**report, "load_10s": 20.0}}, booting.alive_nodes), tracks, 101.0)
    assert busy.starts == []


def test_a_wait_is_told_once_while_only_its_figures_change_and_again_for_a_new_cause() -> None:
    """The 60-guest benchmark wrote 780 wait events in 110 s: each new load figure was a new message, an etcd
    write and a log line for every waiting instance, on a host already short of CPU."""
    booting = cluster(6, report_time=100.0, running=("vm00",))
    tracks = {"vm00": Track(1, 0.0, 99.0)}

    def loaded(load: float, free: int = 100000) -> View:
        report = {**booting.reports["n1"], "load_10s": load, "memory_free_mib": free}
        return View(booting.instances, {"n1": report}, booting.alive_nodes)
    first = decide(loaded(20.0), tracks, 101.0)
    told = [e.instance for e in first.events if e.kind == "wait"]
    assert first.starts == [] and told == ["vm01", "vm02", "vm03", "vm04", "vm05"]
    again = decide(loaded(24.0), first.tracks, 102.0)
    assert again.starts == [] and again.events == [] and again.tracks == first.tracks
    short = decide(loaded(1.0, free=100), again.tracks, 103.0)
    assert short.starts == [] and [e.instance for e in short.events] == told
    assert all("has 100 MiB free" in e.message for e in short.events)
    started = decide(loaded(1.0), short.tracks, 104.0)
    assert len(started.starts) == 3 and all(started.tracks[n].waits_for == "" for n, _ in started.starts)
