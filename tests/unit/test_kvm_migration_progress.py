"""Pure parts of kvm.migration, and ``migrate`` against a scripted QMP peer.

The ``query-migrate`` answers are captured from QEMU 7.2 migrating a
32 MiB guest at a 16 MiB/s limit. The scripted peer stands in for the
source QEMU only where real QEMU cannot be steered into the case (a
migration completing just as the timeout fires, the caller cancelled).
"""

import asyncio
from typing import cast

import pytest

from kvm.migration import (
    InvalidMigrationAddress,
    MigrationFailed,
    MigrationProgress,
    migrate,
    migration_argv_incoming,
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
FAILED = {"status": "failed",
          "error-desc": "Failed to connect to '127.0.0.1:4445': Connection refused"}


class ScriptedQmp:
    """Answers ``query-migrate`` from a script (last answer repeats); records commands."""

    def __init__(self, answers: list[dict[str, object]], cancelled: dict[str, object] | None =
                 None) -> None:
        self.answers = list(answers)
        self.after_cancel = cancelled
        self.commands: list[str] = []

    async def execute(self, command: str, arguments: dict[str, object] | None = None) -> object:
        self.commands.append(command)
        if command == "migrate_cancel" and self.after_cancel is not None:
            self.answers = [self.after_cancel]
        if command != "query-migrate":
            return {}
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


def as_qmp(fake: ScriptedQmp) -> Qmp:
    return cast(Qmp, fake)


def test_uri_and_incoming_argv_name_the_listening_address():
    assert migration_uri("127.0.0.2", 4444) == "tcp:127.0.0.2:4444"
    assert migration_uri("::1", 4444) == "tcp:[::1]:4444"
    assert migration_argv_incoming("10.1.2.3", 49152) == ["-incoming", "tcp:10.1.2.3:49152"]


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


async def test_every_sample_under_way_reaches_the_callback():
    qmp = ScriptedQmp([{}, {"status": "setup"}, ACTIVE, ACTIVE, COMPLETED])
    samples: list[MigrationProgress] = []
    result = await migrate(as_qmp(qmp), "tcp:127.0.0.1:4444", 100, samples.append, 10,
                           poll_interval_s=0.001)
    assert [s.status for s in samples] == ["setup", "active", "active"]
    assert result.downtime_ms == 37
    assert qmp.commands[:4] == ["query-migrate", "migrate-set-capabilities", "migrate-set-parameters", "migrate"]
    assert "migrate_cancel" not in qmp.commands


async def test_failed_migration_raises_with_qemus_reason_and_needs_no_cancel():
    qmp = ScriptedQmp([{}, FAILED])
    with pytest.raises(MigrationFailed) as failure:
        await migrate(as_qmp(qmp), "tcp:127.0.0.1:4445", 100, None, 10,
                      poll_interval_s=0.001)
    assert failure.value.status == "failed"
    assert "Connection refused" in failure.value.reason
    assert "migrate_cancel" not in qmp.commands


async def test_timeout_cancels_and_the_source_keeps_the_guest():
    qmp = ScriptedQmp([{}, ACTIVE], cancelled={"status": "cancelled"})
    with pytest.raises(MigrationFailed) as failure:
        await migrate(as_qmp(qmp), "tcp:127.0.0.1:4444", 1, None, 0.05,
                      poll_interval_s=0.01)
    assert failure.value.status == "cancelled"
    assert "migrate_cancel" in qmp.commands


async def test_completion_racing_the_timeout_counts_as_success():
    qmp = ScriptedQmp([{}, ACTIVE], cancelled=COMPLETED)
    result = await migrate(as_qmp(qmp), "tcp:127.0.0.1:4444", 1, None, 0.05,
                           poll_interval_s=0.01)
    assert result.downtime_ms == 37


async def test_a_migration_already_running_is_left_alone():
    qmp = ScriptedQmp([ACTIVE])
    with pytest.raises(MigrationFailed) as failure:
        await migrate(as_qmp(qmp), "tcp:127.0.0.1:4444", 100, None, 10)
    assert "another migration" in failure.value.reason
    assert qmp.commands == ["query-migrate"]


async def test_cancelled_caller_cancels_the_migration():
    qmp = ScriptedQmp([{}, ACTIVE])
    task = asyncio.create_task(migrate(as_qmp(qmp), "tcp:127.0.0.1:4444", 1, None, 60,
                                       poll_interval_s=0.01))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert qmp.commands[-1] == "migrate_cancel"


async def test_lost_qmp_connection_becomes_migration_failed():
    class Broken(ScriptedQmp):
        async def execute(self, command: str, arguments: dict[str, object] | None = None) -> object:
            if command == "query-migrate" and "migrate" in self.commands:
                raise QmpError("/run/q.sock", "query-migrate: connection lost")
            return await super().execute(command, arguments)

    with pytest.raises(MigrationFailed) as failure:
        await migrate(as_qmp(Broken([{}])), "tcp:127.0.0.1:4444", 1, None, 5)
    assert "connection lost" in failure.value.reason
