"""kvm.blockmirror's pure parts: QMP arguments and the mirror state verdicts.

Job entries are ``query-block-jobs`` answers captured from QEMU 7.2
mirroring a 64 MiB disk to a qemu-storage-daemon NBD export: during the
initial copy, in sync, after the daemon was SIGKILLed (degraded), after it
was SIGSTOPped with a guest write pending (stalled), and after a forced
cancel.
"""

import pytest

from kvm.blockmirror import (
    MirrorError,
    MirrorState,
    mirror_args,
    rate_mib_s,
    mirror_state_from,
    quorum_children,
    stuck_since,
    nbd_target_args,
    tls_client_object_args,
)

SYNCING = {"auto-finalize": True, "io-status": "ok", "device": "m0", "auto-dismiss": False,
           "busy": True, "len": 67108864, "offset": 13631488, "status": "running",
           "paused": False, "speed": 0, "ready": False, "type": "mirror"}
IN_SYNC = {"auto-finalize": True, "io-status": "ok", "device": "m0", "auto-dismiss": False,
           "busy": False, "len": 68157440, "offset": 68157440, "status": "ready",
           "paused": False, "speed": 0, "ready": True, "type": "mirror"}
TARGET_KILLED = {"auto-finalize": True, "io-status": "ok", "device": "m0",
                 "auto-dismiss": False, "busy": True, "len": 70254592, "offset": 68157440,
                 "status": "ready", "paused": False, "speed": 0, "ready": True,
                 "type": "mirror"}
TARGET_HUNG = {"auto-finalize": True, "io-status": "ok", "device": "m0", "auto-dismiss": False,
               "busy": False, "len": 69197824, "offset": 68157440, "status": "ready",
               "paused": False, "speed": 0, "ready": True, "type": "mirror"}
FORCE_CANCELLED = {"auto-finalize": True, "io-status": "ok", "device": "m0",
                   "auto-dismiss": False, "busy": False, "len": 69206016, "offset": 69206016,
                   "status": "concluded", "paused": False, "speed": 0, "ready": False,
                   "type": "mirror", "error": "Operation canceled"}


def sample(job: dict[str, object], at: float, previous: MirrorState | None = None
           ) -> MirrorState:
    return mirror_state_from(job, previous, at, stall_after_s=3.0)


def test_first_sample_of_the_initial_copy_is_syncing_without_eta():
    state = sample(SYNCING, 100.0)
    assert state.status == "syncing" and not state.ready
    assert state.percent == pytest.approx(20.3125)
    assert state.eta_s is None
    assert state.remaining_bytes == 67108864 - 13631488


def test_eta_comes_from_the_copy_rate_after_the_jobs_first_interval():
    """The first interval spans QEMU zeroing the target, unthrottled: it says nothing about the copy's pace."""
    first = sample(SYNCING, 100.0)
    zeroed = sample({**SYNCING, "offset": 13631488 + 40 * 1048576}, 101.0, first)
    assert zeroed.status == "syncing" and zeroed.eta_s is None
    later = sample({**SYNCING, "offset": 13631488 + 50 * 1048576}, 102.0, zeroed)
    assert later.eta_s == pytest.approx((67108864 - 13631488 - 50 * 1048576) / 10485760)


def test_ready_job_with_nothing_left_has_converged_but_is_not_called_in_sync():
    state = sample(IN_SYNC, 100.0)
    assert state.status == "converged" and state.ready
    assert state.percent == 100.0 and state.eta_s == 0.0


def test_any_data_left_on_a_ready_job_is_resyncing_never_in_sync():
    """No heuristic: writes in flight are not waved through as in sync (only a joined copy is)."""
    converged = sample(IN_SYNC, 100.0)
    busy = {**IN_SYNC, "busy": True, "offset": 68157440 + 65536, "len": 68157440 + 3 * 65536}
    assert sample(busy, 101.0, converged).status == "resyncing"
    resync = sample({**IN_SYNC, "offset": 68157440 - 65536}, 100.0)
    assert resync.status == "resyncing"


def test_lost_secondary_is_degraded_only_after_no_progress_for_the_stall_time():
    in_sync = sample(IN_SYNC, 100.0)
    first = sample(TARGET_KILLED, 101.0, in_sync)
    assert first.status == "resyncing", "one sample is too early to call it lost"
    second = sample(TARGET_KILLED, 102.0, first)
    assert second.status == "resyncing"
    third = sample(TARGET_KILLED, 103.5, second)
    assert third.status == "degraded" and third.eta_s is None
    assert third.remaining_bytes == 2 * 1024 * 1024


def test_hung_secondary_is_stalled_when_the_job_idles_in_two_samples():
    first = sample(TARGET_HUNG, 100.0, sample(IN_SYNC, 99.0))
    stalled = sample(TARGET_HUNG, 103.5, first)
    assert stalled.status == "stalled"
    busy_again = sample({**TARGET_HUNG, "busy": True}, 104.0, stalled)
    assert busy_again.status == "degraded"


def test_catching_up_after_a_reconnect_is_resyncing_with_an_eta():
    degraded = sample(TARGET_KILLED, 110.0, sample(TARGET_KILLED, 100.0))
    assert degraded.status == "degraded"
    catching_up = sample({**TARGET_KILLED, "offset": 69206016}, 110.5, degraded)
    assert catching_up.status == "resyncing"
    assert catching_up.eta_s == pytest.approx(0.5)


def test_ended_jobs_are_stopped_or_failed_and_a_missing_one_absent():
    assert sample(FORCE_CANCELLED, 1.0).status == "stopped"
    failed = sample({**FORCE_CANCELLED, "error": "Input/output error"}, 1.0)
    assert failed.status == "failed" and failed.error == "Input/output error"
    assert sample({**FORCE_CANCELLED, "error": None}, 1.0).status == "stopped"
    assert mirror_state_from(None, None, 1.0).status == "absent"


def test_a_new_job_after_a_stopped_one_starts_with_fresh_progress():
    stopped = sample(FORCE_CANCELLED, 100.0)
    fresh = sample({**SYNCING, "offset": 0}, 200.0, stopped)
    assert fresh.status == "syncing"


def test_mirror_copies_everything_then_blocks_writes_and_ignores_target_errors():
    args = mirror_args("disk0", "target0", "mirror0")
    assert args == {
        "job-id": "mirror0", "device": "disk0", "target": "target0", "sync": "full",
        "copy-mode": "write-blocking", "on-target-error": "ignore", "auto-dismiss": False,
    }
    assert mirror_args("disk0", "target0", "mirror0", rate_limit_mib_s=50)["speed"] == 50 << 20


def test_nbd_target_uses_tls_and_fails_requests_at_once_when_disconnected():
    assert nbd_target_args("target0", "10.0.0.2", 10809, "vm1-disk0", "tls0") == {
        "driver": "nbd", "node-name": "target0",
        "server": {"type": "inet", "host": "10.0.0.2", "port": "10809"},
        "export": "vm1-disk0", "tls-creds": "tls0", "reconnect-delay": 0,
    }
    assert tls_client_object_args("tls0", "/var/lib/corral/pki/qemu") == {
        "qom-type": "tls-creds-x509", "id": "tls0", "dir": "/var/lib/corral/pki/qemu",
        "endpoint": "client", "verify-peer": True,
    }


@pytest.mark.parametrize("call", [
    lambda: mirror_args("disk0", "target0", "0mirror"),
    lambda: mirror_args("disk0", "t" * 32, "mirror0"),
    lambda: mirror_args("disk0", "target0", "mirror0", rate_limit_mib_s=-1),
    lambda: nbd_target_args("target,0", "10.0.0.2", 10809, "e", "tls0"),
    lambda: nbd_target_args("target0", "10.0.0.2", 0, "e", "tls0"),
    lambda: tls_client_object_args("tls 0", "/d"),
])
def test_names_and_numbers_qemu_would_reject_are_refused_first(call):
    with pytest.raises(MirrorError):
        call()


def test_long_quiet_in_sync_period_does_not_count_as_no_progress():
    quiet = sample(IN_SYNC, 500.0, sample(IN_SYNC, 100.0))
    lost = sample(TARGET_KILLED, 501.0, quiet)
    assert lost.status == "resyncing"
    assert sample(TARGET_KILLED, 503.0, lost).status == "degraded"


# x-debug-query-block-graph of QEMU 7.2 after a copy joined disk1's quorum in the sink's place
GRAPH = {"edges": [{"name": "children.0", "parent": 4, "child": 6}, {"name": "children.2", "parent": 4, "child": 8},
                   {"name": "file", "parent": 6, "child": 5}, {"name": "root", "parent": 3, "child": 4}],
         "nodes": [{"name": "mirror-target1", "type": "block-driver", "id": 8},
                   {"name": "disk1", "type": "block-driver", "id": 4},
                   {"name": "disk1-sink", "type": "block-driver", "id": 7},
                   {"name": "disk1-local", "type": "block-driver", "id": 6},
                   {"name": "disk1-file", "type": "block-driver", "id": 5},
                   {"name": "/machine/peripheral-anon/device[1]/virtio-backend", "type": "block-backend", "id": 3}]}


def test_quorum_children_are_read_from_the_block_graph_with_their_child_names():
    assert quorum_children(GRAPH, "disk1") == {"disk1-local": "children.0", "mirror-target1": "children.2"}
    assert quorum_children(GRAPH, "disk0") == {}
    assert quorum_children({}, "disk1") == {}


def test_requests_waiting_with_none_completing_count_as_stuck_from_the_first_such_sample():
    idle = ((0, 40), (0, 12))
    waiting = ((1, 40), (0, 12))
    more = ((3, 40), (0, 12))
    assert stuck_since([]) is None
    assert stuck_since([(1.0, idle), (2.0, idle)]) is None, "nothing in flight"
    assert stuck_since([(1.0, idle), (2.0, waiting), (3.0, more), (4.0, more)]) == 2.0
    moved = ((1, 41), (0, 12))
    assert stuck_since([(1.0, waiting), (2.0, moved)]) == 2.0, "a completion restarts the clock"
    assert stuck_since([(1.0, waiting), (2.0, moved), (3.0, ((0, 41), (0, 12)))]) is None


def test_a_throttled_copy_that_moves_in_bursts_keeps_a_steady_eta():
    """QEMU's rate limit lets a copy move in bursts: between two samples it may copy nothing, then twice
    the limit. The ETA follows the smoothed rate, so it neither vanishes nor leaps to hours."""
    mib, limit = 1 << 20, 16
    length, offset, at = 256 * mib, 0, 100.0
    state = sample({**SYNCING, "len": length, "offset": offset}, at)
    etas = []
    for step in range(24):  # samples 1 s apart: 32 MiB every other second, nothing in between
        at += 1.0
        offset += 2 * limit * mib if step % 2 == 0 else mib // 16
        state = sample({**SYNCING, "len": length, "offset": offset}, at, state)
        if offset < length:
            etas.append((state.eta_s, (length - offset) / (limit * mib)))
    assert etas[0][0] is None and all(eta is not None for eta, _ in etas[1:])
    for eta, truth in etas[4:]:
        assert eta is not None and 0.5 * truth <= eta <= 2.0 * truth + 1.0, etas


def test_a_job_started_anew_under_the_same_id_measures_its_rate_anew():
    started = sample({**SYNCING, "offset": 30 << 20}, 100.0, sample({**SYNCING, "offset": 20 << 20}, 99.0))
    copying = sample({**SYNCING, "offset": 40 << 20}, 101.0, started)
    assert copying.rate_bps == pytest.approx(10 << 20)
    restarted = sample({**SYNCING, "offset": 1 << 20}, 102.0, copying)
    assert restarted.rate_bps is None and restarted.eta_s is None


def test_the_reported_rate_spans_the_last_seconds_not_an_early_report_after_a_burst():
    """A report sent right after an order must not turn one 16 MiB burst into twice the limit."""
    mib = 1 << 20
    state = sample({**SYNCING, "len": 512 * mib, "offset": 0}, 100.0)
    for at, offset in ((101.0, 8), (102.0, 16), (103.0, 32), (103.2, 48)):  # 8 MiB/s, then a burst
        state = sample({**SYNCING, "len": 512 * mib, "offset": offset * mib}, at, state)
    assert rate_mib_s(state) == pytest.approx((48 - 8) / 2.2, abs=0.1)  # between two reports only: 80 MiB/s
    assert rate_mib_s(sample({**SYNCING, "offset": 1 << 20}, 104.0, state)) is None, "a new job measures anew"
