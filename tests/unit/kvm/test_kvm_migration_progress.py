"""Pure parts of kvm.migration, and the switchover flow against a scripted QMP peer.

The ``query-migrate`` answers are captured from QEMU 7.2 migrating a
32 MiB guest at a 16 MiB/s limit. The scripted peer stands in for the
source QEMU only where real QEMU cannot be steered into the case (a
migration reaching the pause just as the timeout fires, the caller
cancelled, a lost connection).
"""

import asyncio
from typing import cast

import pytest

from kvm.migration import (
    InvalidMigrationAddress,
    MigrationFailed,
    MigrationProgress,
    cancel_migration,
    complete_switchover,
    migrate_to_switchover,
    migration_parameters,
    migration_uri,
    parse_progress,
    parse_result,
)
from kvm.qmp import Qmp, QmpError

MIB = 1024 * 1024

ACTIVE = {
    "expected-downtime": 300, "status": "active", "setup-time": 1, "total-time": 514,
    "ram": {"total": 34086912, "postcopy-requests": 0, "dirty-sync-count": 1,
            "multifd-bytes": 0, "pages-per-second": 4090, "downtime-bytes": 0,
            "page-size": 4096, "remaining": 23871488, "postcopy-bytes": 0,
            "mbps": 134.28432, "transferred": 10071629, "dirty-sync-missed-zero-copy": 0,
            "precopy-bytes": 10071629, "duplicate": 40, "dirty-pages-rate": 0, "skipped": 0,
            "normal-bytes": 10051584, "normal": 2454},
}
COMPLETED = {
    "status": "completed", "setup-time": 1, "downtime": 37, "total-time": 1745,
    "ram": {"total": 34086912, "postcopy-requests": 0, "dirty-sync-count": 3,
            "multifd-bytes": 0, "pages-per-second": 4090, "downtime-bytes": 4474414,
            "page-size": 4096, "remaining": 0, "postcopy-bytes": 0,
            "mbps": 151.77880733944954, "transferred": 33011242,
            "dirty-sync-missed-zero-copy": 0, "precopy-bytes": 28536828, "duplicate": 283,
            "dirty-pages-rate": 0, "skipped": 0, "normal-bytes": 32944128, "normal": 8043},
}
PRE_SWITCHOVER = {
    "expected-downtime": 300, "status": "pre-switchover", "setup-time": 2, "total-time": 1883,
    "ram": {"total": 34086912, "postcopy-requests": 0, "dirty-sync-count": 2,
            "multifd-bytes": 0, "pages-per-second": 3932, "downtime-bytes": 0,
            "page-size": 4096, "remaining": 3231744, "postcopy-bytes": 0,
            "mbps": 129.11953846153847, "transferred": 30215372,
            "dirty-sync-missed-zero-copy": 0, "precopy-bytes": 30215372, "duplicate": 175,
            "dirty-pages-rate": 2, "skipped": 0, "normal-bytes": 30154752, "normal": 7362},
}
FAILED = {"status": "failed",
          "error-desc": "Failed to connect to '127.0.0.1:4445': Connection refused"}


class ScriptedQmp:
    """Answers ``query-migrate`` from a script (last answer repeats); records commands.

    ``cancelled`` becomes the script once ``migrate_cancel`` is sent;
    ``run_state`` is what ``status()`` reports, and ``cont`` sets it to running.
    """

    def __init__(self, answers: list[dict[str, object]],
                 cancelled: list[dict[str, object]] | None = None,
                 run_state: str = "running") -> None:
        self.answers = list(answers)
        self.after_cancel = cancelled
        self.run_state = run_state
        self.commands: list[str] = []
        self.arguments: dict[str, dict[str, object] | None] = {}

    async def execute(self, command: str, arguments: dict[str, object] | None = None) -> object:
        self.commands.append(command)
        self.arguments[command] = arguments
        if command == "migrate_cancel" and self.after_cancel is not None:
            self.answers = list(self.after_cancel)
        if command == "cont":
            self.run_state = "running"
        if command != "query-migrate":
            return {}
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]

    async def status(self) -> str:
        self.commands.append("query-status")
        return self.run_state

    async def next_event(self, timeout_s: float) -> dict[str, object] | None:
        """QEMU's MIGRATION event for each status change still scripted, at once; else the timeout passes."""
        if len(self.answers) > 1:
            return {"event": "MIGRATION", "data": {"status": self.answers[0].get("status")}}
        await asyncio.sleep(timeout_s)
        return None


def as_qmp(fake: ScriptedQmp) -> Qmp:
    return cast(Qmp, fake)


def test_uri_names_the_listening_address():
    assert migration_uri("127.0.0.2", 4444) == "tcp:127.0.0.2:4444"
    assert migration_uri("::1", 4444) == "tcp:[::1]:4444"


@pytest.mark.parametrize("address, port", [("node2", 4444), ("127.0.0.1", 0),
                                           ("127.0.0.1", 65536), ("127.0.0.1:4444", 4444)])
def test_uri_refuses_names_and_ports_qemu_could_not_use(address, port):
    with pytest.raises(InvalidMigrationAddress) as error:
        migration_uri(address, port)
    assert error.value.address == address and error.value.port == port


def test_bandwidth_limit_is_given_to_qemu_in_bytes_per_second():
    assert migration_parameters(1000) == {"max-bandwidth": 1000 * MIB}
    assert migration_parameters(0.5) == {"max-bandwidth": MIB // 2}
    with pytest.raises(ValueError):
        migration_parameters(0)


def test_progress_converts_qemu_megabits_and_bytes_to_mib():
    progress = parse_progress(ACTIVE)
    assert progress.status == "active"
    assert progress.elapsed_s == pytest.approx(0.514)
    assert progress.transferred_mib == pytest.approx(10071629 / MIB)
    assert progress.remaining_mib == pytest.approx(22.77, abs=0.01)
    assert progress.total_mib == pytest.approx(32.51, abs=0.01)
    assert progress.throughput_mib_s == pytest.approx(16.01, abs=0.01)  # the 16 MiB/s limit
    assert progress.eta_s == pytest.approx(22.77 / 16.01, abs=0.01)
    assert progress.passes == 1


def test_progress_of_a_migration_still_setting_up_has_no_eta():
    progress = parse_progress({"status": "setup"})
    assert progress == MigrationProgress("setup", 0.0, 0.0, 0.0, 0.0, 0.0, None, 0)


def test_result_reports_downtime_and_mean_throughput():
    result = parse_result(COMPLETED)
    assert result.total_s == pytest.approx(1.745)
    assert result.downtime_ms == 37
    assert result.transferred_mib == pytest.approx(31.48, abs=0.01)
    assert result.throughput_mib_s == pytest.approx(31.48 / 1.745, abs=0.01)



async def test_every_sample_under_way_reaches_the_callback_until_the_pause():
    qmp = ScriptedQmp([{}, {"status": "setup"}, ACTIVE, ACTIVE, PRE_SWITCHOVER])
    samples: list[MigrationProgress] = []
    paused = await migrate_to_switchover(as_qmp(qmp), "tcp:127.0.0.1:4444", 100,
                                         samples.append, 10, poll_interval_s=0.001)
    assert [s.status for s in samples] == ["setup", "active", "active"]
    assert paused.status == "pre-switchover"
    assert paused.transferred_mib == pytest.approx(30215372 / MIB)
    assert qmp.commands[:4] == ["query-migrate", "migrate-set-capabilities",
                                "migrate-set-parameters", "migrate"]
    assert qmp.arguments["migrate-set-capabilities"] == {"capabilities": [
        {"capability": "pause-before-switchover", "state": True},
        {"capability": "events", "state": True}]}, "a MIGRATION event wakes the poll at the pause"
    assert qmp.arguments["migrate"] == {"uri": "tcp:127.0.0.1:4444"}
    assert "migrate_cancel" not in qmp.commands


async def test_failed_migration_raises_with_qemus_reason_and_needs_no_cancel():
    qmp = ScriptedQmp([{}, FAILED])
    with pytest.raises(MigrationFailed) as failure:
        await migrate_to_switchover(as_qmp(qmp), "tcp:127.0.0.1:4445", 100, None, 10,
                                    poll_interval_s=0.001)
    assert failure.value.status == "failed"
    assert "Connection refused" in failure.value.reason
    assert "migrate_cancel" not in qmp.commands


async def test_timeout_cancels_and_the_source_keeps_the_guest():
    qmp = ScriptedQmp([{}, ACTIVE], cancelled=[{"status": "cancelled"}])
    with pytest.raises(MigrationFailed) as failure:
        await migrate_to_switchover(as_qmp(qmp), "tcp:127.0.0.1:4444", 1, None, 0.05,
                                    poll_interval_s=0.01)
    assert failure.value.status == "cancelled"
    assert "not finished within 0.05 s" in failure.value.reason
    assert "migrate_cancel" in qmp.commands


async def test_reaching_the_pause_while_the_timeout_fires_counts_as_arrived():
    qmp = ScriptedQmp([{}, ACTIVE], cancelled=[PRE_SWITCHOVER])
    paused = await migrate_to_switchover(as_qmp(qmp), "tcp:127.0.0.1:4444", 1, None, 0.05,
                                         poll_interval_s=0.01)
    assert paused.status == "pre-switchover"


async def test_a_migration_already_running_is_left_alone():
    qmp = ScriptedQmp([ACTIVE])
    with pytest.raises(MigrationFailed) as failure:
        await migrate_to_switchover(as_qmp(qmp), "tcp:127.0.0.1:4444", 100, None, 10)
    assert "another migration" in failure.value.reason
    assert qmp.commands == ["query-migrate"]


async def test_cancelled_caller_cancels_the_migration():
    qmp = ScriptedQmp([{}, ACTIVE])
    task = asyncio.create_task(migrate_to_switchover(as_qmp(qmp), "tcp:127.0.0.1:4444", 1,
                                                     None, 60, poll_interval_s=0.01))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert qmp.commands[-1] == "migrate_cancel"


class LosesConnectionAfter(ScriptedQmp):
    """Fails every ``query-migrate`` once ``command`` has been sent."""

    def __init__(self, command: str, answers: list[dict[str, object]]) -> None:
        super().__init__(answers)
        self.breaking_command = command

    async def execute(self, command: str, arguments: dict[str, object] | None = None) -> object:
        if command == "query-migrate" and self.breaking_command in self.commands:
            raise QmpError("/run/q.sock", "query-migrate: connection lost")
        return await super().execute(command, arguments)


async def test_lost_qmp_connection_becomes_migration_failed():
    with pytest.raises(MigrationFailed) as failure:
        await migrate_to_switchover(as_qmp(LosesConnectionAfter("migrate", [{}])),
                                    "tcp:127.0.0.1:4444", 1, None, 5)
    assert "connection lost" in failure.value.reason


async def test_switchover_lets_the_paused_migration_complete_and_reports_downtime():
    qmp = ScriptedQmp([PRE_SWITCHOVER, {**PRE_SWITCHOVER, "status": "device"}, COMPLETED])
    result = await complete_switchover(as_qmp(qmp), poll_interval_s=0.001)
    assert qmp.commands[0] == "migrate-continue"
    assert qmp.arguments["migrate-continue"] == {"state": "pre-switchover"}
    assert result.downtime_ms == 37
    assert result.transferred_mib == pytest.approx(31.48, abs=0.01)


async def test_a_switchover_seen_completed_before_qemu_wrote_its_figures_is_asked_again():
    # QEMU sets the status a moment before total-time and downtime: a result of zeros would be reported
    early = {key: value for key, value in COMPLETED.items() if key not in ("total-time", "downtime")}
    qmp = ScriptedQmp([PRE_SWITCHOVER, early, early, COMPLETED])
    result = await complete_switchover(as_qmp(qmp), poll_interval_s=0.001)
    assert result.downtime_ms == 37 and result.total_s > 0
    assert qmp.commands.count("query-migrate") == 4


async def test_switchover_that_fails_raises_with_qemus_reason():
    qmp = ScriptedQmp([{**FAILED, "error-desc": "Unable to write to socket: Broken pipe"}])
    with pytest.raises(MigrationFailed) as failure:
        await complete_switchover(as_qmp(qmp), poll_interval_s=0.001)
    assert failure.value.status == "failed"
    assert "Broken pipe" in failure.value.reason


async def test_switchover_not_done_within_its_timeout_raises():
    qmp = ScriptedQmp([{**PRE_SWITCHOVER, "status": "device"}])
    with pytest.raises(MigrationFailed) as failure:
        await complete_switchover(as_qmp(qmp), timeout_s=0.05, poll_interval_s=0.01)
    assert "switchover not done within 0.05 s" in failure.value.reason


async def test_switchover_over_a_lost_connection_becomes_migration_failed():
    qmp = LosesConnectionAfter("migrate-continue", [PRE_SWITCHOVER])
    with pytest.raises(MigrationFailed) as failure:
        await complete_switchover(as_qmp(qmp), poll_interval_s=0.001)
    assert "switchover: query-migrate: connection lost" in failure.value.reason


async def test_cancel_resumes_the_guest_paused_at_the_switchover():
    qmp = ScriptedQmp([PRE_SWITCHOVER], cancelled=[{"status": "cancelled"}], run_state="paused")
    assert await cancel_migration(as_qmp(qmp), poll_interval_s=0.001) == "cancelled"
    assert qmp.commands[0] == "migrate_cancel"
    assert "cont" in qmp.commands
    assert qmp.run_state == "running"


async def test_cancel_leaves_a_guest_that_already_runs_alone():
    qmp = ScriptedQmp([{}], cancelled=[{"status": "cancelled"}])
    assert await cancel_migration(as_qmp(qmp), poll_interval_s=0.001) == "cancelled"
    assert "cont" not in qmp.commands


async def test_cancel_waits_for_qemu_to_finish_cancelling():
    cancelling = {**PRE_SWITCHOVER, "status": "cancelling"}
    qmp = ScriptedQmp([PRE_SWITCHOVER], run_state="paused",
                      cancelled=[cancelling, cancelling, {"status": "cancelled"}])
    assert await cancel_migration(as_qmp(qmp), poll_interval_s=0.001) == "cancelled"
    assert qmp.commands.count("query-migrate") == 3
    assert qmp.commands[-1] == "cont"


async def test_cancel_after_completion_never_resumes_the_source():
    qmp = ScriptedQmp([COMPLETED], run_state="paused")
    assert await cancel_migration(as_qmp(qmp), poll_interval_s=0.001) == "completed"
    assert "cont" not in qmp.commands
