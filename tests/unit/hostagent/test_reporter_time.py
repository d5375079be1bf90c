"""A node's report is dated when its QEMUs were listed, however long the report then takes."""

from __future__ import annotations

import os
from types import SimpleNamespace

from fakes.clock import FakeClock
from storage.osdef import OsCatalog

from hostagent.node import reporter


class SlowQemu:
    """One QEMU (this test's own process) whose status query takes `query_s` on the clock."""

    def __init__(self, clock: FakeClock, run_dir: str, query_s: float) -> None:
        self._clock, self.run_dir, self._query_s = clock, run_dir, query_s
        self.kernel_dirs = None

    def discover(self) -> dict[str, int]:
        return {"web1": os.getpid()}

    def paths(self, name: str) -> SimpleNamespace:
        return SimpleNamespace(vnc_socket=os.path.join(self.run_dir, name, "vnc.sock"))

    async def status(self, name: str) -> str:
        self._clock.advance(self._query_s)
        return "running"


class NoDisks:
    base_dir = "/nonexistent/file-storage"  # no snapshots either

    async def list_volumes(self) -> list[object]:
        return []

    async def logical_volumes(self) -> list[object]:
        return []

    def total_mib(self) -> int:
        return 1024

    def free_mib(self) -> int:
        return 512


async def test_the_report_time_is_when_the_qemus_were_listed_not_when_the_report_was_done(tmp_path):
    clock = FakeClock()
    listed = clock.time()
    report = await reporter.collect("n1", SlowQemu(clock, str(tmp_path), query_s=4.0), NoDisks(),  # type: ignore[arg-type]
                                    lambda: OsCatalog({}, []), {}, clock=clock)
    assert clock.time() == listed + 4.0
    assert report["time"] == listed  # a QEMU started during those 4 s must not look absent from this report
    assert report["instances"]["web1"]["status"] == "running"


class CountingLvm:
    """A volume group that counts how often it is read (each read is two LVM commands on a real node)."""

    vg = "vg0"

    def __init__(self) -> None:
        self.reads = 0

    async def vg_info(self) -> tuple[int, int]:
        self.reads += 1
        return 1024, 1024 - 8 * self.reads

    async def list_volumes(self) -> list[object]:
        return []

    async def logical_volumes(self) -> list[object]:
        return []


async def test_the_volume_group_is_read_again_only_after_an_order_or_once_its_reading_is_old():
    clock, lvm = FakeClock(), CountingLvm()
    seen = reporter.LvmSeen(lvm, clock)  # type: ignore[arg-type]
    first, _, _ = await seen.state()
    clock.advance(reporter.LVM_REFRESH_S - 1)
    assert (await seen.state())[0] == first and lvm.reads == 1  # reports in between reuse the reading
    seen.changed()  # an order ran: it may have made or removed a volume
    assert (await seen.state())[0]["free_mib"] == 1024 - 16 and lvm.reads == 2
    clock.advance(reporter.LVM_REFRESH_S)
    await seen.state()
    assert lvm.reads == 3  # an LV made by hand shows within LVM_REFRESH_S
