"""Which copy each side of a `mirror` disk holds (hostagent.node.resync): the ids that decide whether a copy
back from an outage may get only the blocks written meanwhile, and the progress a catch-up reports."""

from pathlib import Path

import pytest

from hostagent.node.resync import MIB, Catchup, Resyncs
from kvm.blockmirror import MirrorError


def test_a_copy_keeps_its_id_until_it_is_made_anew_or_claimed(tmp_path: Path) -> None:
    image = str(tmp_path / "disk0.raw")
    first = Resyncs.copy_id(image)
    assert first and Resyncs.copy_id(image) == first, "the same copy, the same id"
    Resyncs.disown(image)
    again = Resyncs.copy_id(image)
    assert again != first, "an image made anew (or written by a guest) is another copy"
    Resyncs.claim(image, "m0123")
    assert Resyncs.copy_id(image) == "m0123"
    Resyncs.disown(image)
    Resyncs.disown(image)  # idempotent


def test_an_id_from_another_node_that_could_not_name_a_bitmap_is_refused(tmp_path: Path) -> None:
    with pytest.raises(MirrorError, match="copy id"):
        Resyncs.claim(str(tmp_path / "disk0.raw"), "../x y")
    assert not (tmp_path / "disk0.raw.copy").exists()


def test_the_primary_remembers_which_copy_each_peer_holds_until_its_qemu_goes(tmp_path: Path) -> None:
    resyncs = Resyncs(str(tmp_path))
    resyncs._set_peer_copy("db1", 0, "c0")
    resyncs._set_peer_copy("db1", 1, "c1")
    assert Resyncs(str(tmp_path)).peer_copies("db1") == {0: "c0", 1: "c1"}, "kept across an agent restart"
    (tmp_path / "web.copies").write_text("not json")
    assert resyncs.peer_copies("web") == {}
    resyncs.forget_instance("db1")
    assert resyncs.peer_copies("db1") == {}


def test_a_catch_up_reports_percent_bytes_left_rate_and_eta() -> None:
    resyncs = Resyncs("/nonexistent")
    job = Catchup("c0", began_s=0.0, rate_limit_mib_s=0.0, left=30 * MIB)
    job.sample(0.0)
    resyncs._active[("db1", 0)] = job
    state = resyncs.state("db1", 0)
    assert state is not None and state.pop("elapsed_s") >= 0
    assert state == {"status": "syncing", "mode": "incremental", "percent": 0.0,
                                       "remaining_mib": 30, "rate_mib_s": 0.0, "eta_s": None, "error": ""}
    job.offset, job.left = 10 * MIB, 20 * MIB
    job.sample(2.0)
    state = resyncs.state("db1", 0)
    assert state is not None
    assert (state["percent"], state["remaining_mib"], state["rate_mib_s"], state["eta_s"]) == (33.3, 20, 5.0, 4.0)
    assert resyncs.state("db1", 1) is None


def test_the_rate_comes_from_the_recent_window_only() -> None:
    job = Catchup("c0", began_s=0.0, rate_limit_mib_s=0.0)
    job.sample(0.0)  # a slow start...
    job.copied = 1 * MIB
    job.sample(10.0)
    job.copied = 41 * MIB  # ...then 10 MiB/s
    job.sample(14.0)
    assert job.rate() == pytest.approx(10 * MIB)


class NoBitmaps:
    """A QEMU with no dirty bitmaps, for the decisions taken before any is made."""

    async def execute(self, command: str, args: dict | None = None) -> list:
        assert command == "query-named-block-nodes", command
        return []


async def test_a_bad_copy_id_from_the_secondary_means_a_full_copy_and_never_blocks_a_leave(tmp_path: Path) -> None:
    resyncs = Resyncs(str(tmp_path))
    assert await resyncs.begin(NoBitmaps(), "db1", 0, "../../x y", "mirror-target0", 0.0) is None  # type: ignore[arg-type]
    assert resyncs.peer_copies("db1") == {}, "an id that cannot name a bitmap is not kept"
    (tmp_path / "db1.copies").write_text('{"0": "bad id!"}')  # written by an older or damaged agent
    await resyncs.before_leave(NoBitmaps(), "db1", 0)  # type: ignore[arg-type]
