"""How a copy under way reads: per disk in `instance info`, in a word in `instance list`, and across the cluster in
`cluster info` (hostagent.status words, hostagent.views standings), from the report's disk states."""

from hostagent.status import (copy_eta_s, copy_rate_mib_s, describe_mirrors, disk_copy_words, eta_words,
                              last_sync_words, short_copy_words)
from hostagent.views import copy_standing, instance_row, redundancy

NOW = 1_000_000.0

# A first (full) copy as kvm.blockmirror reports it: its ETA from two consecutive samples, none before.
FULL = {"index": 0, "status": "syncing", "percent": 45.0, "eta_s": 130.0, "remaining_mib": 2080, "error": "", "gen": 1}
# An incremental catch-up (hostagent.node.resync): its own recent rate.
CATCH_UP = {"index": 0, "status": "syncing", "mode": "incremental", "percent": 40.0, "remaining_mib": 30,
            "rate_mib_s": 12.5, "eta_s": 2.4, "error": "", "gen": 1}
# A DRBD resync (hostagent.node.drbdnode.disk_state): the kernel's ETA and rate.
DRBD = {"index": 0, "status": "syncing", "percent": 11.8, "eta_s": 81.0, "remaining_mib": 63, "error": "", "gen": 4,
        "drbd": "SyncSource", "rate_kib_s": 448}
IN_SYNC = {"index": 0, "status": "in_sync", "percent": 100.0, "eta_s": 0.0, "remaining_mib": 0, "error": "", "gen": 1}


def test_a_disk_being_copied_shows_percent_bytes_left_rate_and_eta():
    assert disk_copy_words(FULL) == "syncing 45.0 %, 2.0 GiB to copy at 16.0 MiB/s, about 2 min left"
    assert disk_copy_words(CATCH_UP) == "resyncing only the changes 40.0 %, 30 MiB to copy at 12.5 MiB/s, " \
                                        "about 2 s left"
    assert disk_copy_words(DRBD) == "syncing 11.8 %, 63 MiB to copy at 0.4 MiB/s, about 81 s left"


def test_a_resyncing_mirror_shows_what_is_left_not_its_percent_which_counts_new_writes():
    state = {"index": 1, "status": "resyncing", "percent": 99.0, "eta_s": 4.0, "remaining_mib": 20, "error": ""}
    assert disk_copy_words(state) == "resyncing, 20 MiB to copy at 5.0 MiB/s, about 4 s left"
    assert describe_mirrors([state]) == "resyncing, 20 MiB to copy, about 4 s left"


def test_without_an_eta_the_rate_and_bytes_left_give_one():
    drbd = {**DRBD, "eta_s": None, "rate_kib_s": 1024}  # events2 without /proc/drbd: no kernel ETA
    assert copy_rate_mib_s(drbd) == 1.0
    assert copy_eta_s(drbd) == 63.0
    assert describe_mirrors([drbd]) == "syncing 11.8 %, about 63 s left"


def test_a_copy_in_its_first_seconds_says_its_eta_is_being_measured_never_unknown():
    first = {**FULL, "eta_s": None}  # one sample so far: no rate yet
    assert describe_mirrors([first]) == "syncing 45.0 %, ETA being measured"
    assert disk_copy_words(first) == "syncing 45.0 %, 2.0 GiB to copy, ETA being measured"
    starting = {**CATCH_UP, "percent": 0.0, "rate_mib_s": 0.0, "eta_s": None}  # before its second sample
    assert disk_copy_words(starting).endswith("ETA being measured")
    assert eta_words(None) == "ETA being measured"
    for state in (first, starting, FULL, CATCH_UP, DRBD):
        assert "unknown" not in disk_copy_words(state) + describe_mirrors([state])


def test_a_copy_whose_rate_fell_to_zero_is_stalled_not_given_an_eta():
    drbd = {**DRBD, "eta_s": None, "rate_kib_s": 0}
    assert describe_mirrors([drbd]) == "syncing 11.8 %, stalled: no progress"
    catch_up = {**CATCH_UP, "rate_mib_s": 0.0, "eta_s": None}  # copied some, then nothing for its rate window
    assert disk_copy_words(catch_up) == "resyncing only the changes 40.0 %, 30 MiB to copy, stalled: no progress"
    assert short_copy_words([catch_up]) == "resync 40% stalled"
    stalled = {"index": 0, "status": "stalled", "percent": 45.0, "eta_s": None, "remaining_mib": 2080, "error": ""}
    assert describe_mirrors([stalled]) == "stalled at 45.0 %, 2.0 GiB to copy: no progress"


def test_a_paused_drbd_resync_says_so():
    paused = {**DRBD, "eta_s": None, "rate_kib_s": 0, "drbd": "PausedSyncS"}
    assert describe_mirrors([paused]) == "syncing 11.8 %, paused: DRBD finishes another resync first"


def test_several_disks_being_copied_give_the_time_until_the_last_is_in_sync():
    slow = {**FULL, "index": 1, "percent": 80.0, "eta_s": 600.0}
    assert describe_mirrors([FULL, slow, IN_SYNC]) == "syncing 45.0 %, about 10 min left"
    assert short_copy_words([FULL, slow]) == "sync 45% 10m"


def test_the_short_words_for_the_instance_list():
    assert short_copy_words([IN_SYNC]) == "in sync"
    assert short_copy_words([FULL]) == "sync 45% 2m"
    assert short_copy_words([{**FULL, "eta_s": None}]) == "sync 45%"
    assert short_copy_words([CATCH_UP]) == "resync 40% 2s"
    assert short_copy_words([{**DRBD, "eta_s": 4000.0}]) == "sync 12% 1h06m"
    assert short_copy_words([{**IN_SYNC, "status": "degraded"}]) == "degraded"
    assert short_copy_words([{**IN_SYNC, "status": "disconnected"}]) == "disconnected"
    assert short_copy_words([]) == "no copy"


def test_the_last_sync_says_its_mode_and_size():
    last = {"mode": "incremental", "copied_mib": 3.2, "seconds": 0.41, "pause_ms": 12}
    assert last_sync_words(last) == "last resync: only the changes, 3.2 MiB in 0.4 s (guest paused 12 ms to join)"
    assert last_sync_words({"mode": "incremental", "failed": "a round failed: EIO"}) == \
        "last resync (only the changes) failed: a round failed: EIO"
    assert last_sync_words(None) == ""


def inst(name="db1", primary="n1", secondary="n2", template="mirror", in_sync=True):
    return {"name": name, "uuid": "u", "os": "img", "disk_template": template, "memory_mib": 256, "vcpus": 1,
            "primary_node": primary, "secondary_node": secondary, "admin_state": "up",
            "disks": [{"index": 0, "size_mib": 4096, "format": "raw", "uuid": "d0"}], "nics": [], "hvparams": {},
            "ctime": 0, "mtime": 0, "replica": {"in_sync": in_sync, "gen": 1, "why": "" if in_sync else "resyncing"}}


def report(node, mirrors=None, running=(), age=1.0):
    return {"node": node, "time": NOW - age, "instances": {n: {"pid": 7, "status": "running"} for n in running},
            "mirrors": mirrors or {}}


def test_instance_info_rows_carry_words_per_disk_and_the_short_column():
    reports = {"n1": report("n1", {"db1": [{**IN_SYNC, "last_sync": {"mode": "incremental", "copied_mib": 3.2,
                                                                     "seconds": 0.4, "pause_ms": 9}}]}, ["db1"]),
               "n2": report("n2")}
    rep = instance_row(inst(), reports, NOW)["replication"]
    assert (rep["summary"], rep["short"], rep["redundant"]) == ("in sync", "in sync", True)
    assert rep["disks"][0]["words"] == "in sync"
    assert rep["disks"][0]["last_sync_words"] == "last resync: only the changes, 3.2 MiB in 0.4 s (guest paused " \
                                                  "9 ms to join)"
    reports["n1"]["mirrors"]["db1"] = [FULL]
    rep = instance_row(inst(in_sync=False), reports, NOW)["replication"]
    assert (rep["short"], rep["redundant"], rep["eta_s"]) == ("sync 45% 2m", False, 130.0)
    assert rep["disks"][0]["eta_s"] == 130.0  # the node's own fields stay as reported


def test_a_copy_in_sync_with_a_record_not_yet_is_joining():
    reports = {"n1": report("n1", {"db1": [IN_SYNC]}, ["db1"]), "n2": report("n2")}
    standing = copy_standing(inst(in_sync=False), reports, NOW)
    assert standing["copying"] and standing["eta_s"] == 0.0 and standing["short"] == "joining"


def test_a_copy_is_not_redundant_with_its_secondary_node_down_and_says_so():
    reports = {"n1": report("n1", {"db1": [IN_SYNC]}, ["db1"]), "n2": report("n2", age=90)}
    standing = copy_standing(inst(), reports, NOW)
    assert (standing["redundant"], standing["copying"], standing["short"]) == (False, False, "n2 down")
    assert standing["why"] == "secondary node 'n2' down: no report for 90 s"


def test_a_stopped_mirror_out_of_date_waits_for_the_instance_to_run():
    reports = {"n1": report("n1"), "n2": report("n2")}
    standing = copy_standing(inst(in_sync=False), reports, NOW)
    assert (standing["copying"], standing["short"]) == (False, "out of date")
    assert standing["why"] == "stopped, its copy not in sync (resyncing): it is brought up to date once the " \
                              "instance runs"
    assert copy_standing(inst(), reports, NOW)["redundant"]  # in sync when last running
    assert copy_standing({**inst(), "secondary_node": None}, reports, NOW) is None


def test_a_disconnected_drbd_disk_is_not_being_copied():
    away = {"index": 0, "status": "disconnected", "percent": None, "eta_s": None, "remaining_mib": 2,
            "error": "DRBD WFConnection, this disk UpToDate, the peer's Outdated", "gen": 4, "drbd": "WFConnection"}
    reports = {"n1": report("n1", {"db1": [away]}), "n2": report("n2")}
    standing = copy_standing(inst(template="drbd", in_sync=False), reports, NOW)
    assert (standing["copying"], standing["short"]) == (False, "disconnected")
    assert standing["why"] == "disk 0 not connected: DRBD WFConnection, this disk UpToDate, the peer's Outdated"


def test_cluster_redundancy_names_those_behind_and_when_the_last_is_in_sync_again():
    instances = [inst("a"), inst("b", in_sync=False), inst("c", in_sync=False), inst("d", secondary="n3"),
                 inst("e", in_sync=False), {**inst("plain1"), "secondary_node": None}]
    reports = {"n1": report("n1", {"a": [IN_SYNC], "b": [FULL], "c": [{**FULL, "eta_s": 30.0}], "d": [IN_SYNC],
                                   "e": [{**FULL, "eta_s": None}]}, ["a", "b", "c", "d", "e"]),
               "n2": report("n2"), "n3": report("n3", age=300)}
    got = redundancy(instances, reports, NOW)
    assert got["replicated"] == 5
    assert got["not_redundant"] == ["b", "c", "d", "e"]
    assert got["copying"] == {"b": "syncing 45.0 %, about 2 min left", "c": "syncing 45.0 %, about 30 s left",
                              "e": "syncing 45.0 %, ETA being measured"}
    assert (got["eta_s"], got["eta_at"], got["measuring"]) == (130.0, NOW + 130.0, ["e"])
    assert got["unknown"] == {"d": "secondary node 'n3' down: no report for 300 s"}


def test_cluster_redundancy_when_all_are_in_sync():
    reports = {"n1": report("n1", {"a": [IN_SYNC]}, ["a"]), "n2": report("n2")}
    got = redundancy([inst("a")], reports, NOW)
    assert (got["not_redundant"], got["eta_s"], got["unknown"]) == ([], None, {})


def test_a_jobs_eta_follows_the_recent_rate_not_the_average_since_the_start():
    from hostagent.master.jobs import recent_eta
    # 100 MiB in the first 10 s, then 10 MiB/s from t=40: the last 30 s say 10 MiB/s, the average says less
    samples = [(0.0, 0.0), (10.0, 100.0), (40.0, 100.0)] + [(40.0 + i, 100.0 + 10 * i) for i in range(1, 11)]
    eta = recent_eta(samples, 1000.0, 0.0, 50.0)
    assert eta is not None
    # the window holds 20..50 s: from 100 at t=40 (the 10 s sample is older than 30 s) to 200 at t=50
    assert 75 <= eta <= 95, eta
    average = 50.0 / 200.0 * 800.0
    assert eta < average


def test_a_jobs_eta_before_a_rate_can_be_measured():
    from hostagent.master.jobs import recent_eta
    assert recent_eta([(5.0, 0.0)], 100.0, 0.0, 5.0) is None, "nothing done: no ETA yet"
    # a second of samples only: the rate since the start (10 done in 2 s → 18 s for the 90 left)
    assert recent_eta([(1.0, 5.0), (2.0, 10.0)], 100.0, 0.0, 2.0) == 18.0
