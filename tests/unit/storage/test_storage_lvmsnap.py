"""LVM snapshots' names and tags, and how a volume group's LVs are read back as snapshots (storage.lvmsnap)."""

from __future__ import annotations

import pytest

from storage.errors import InvalidName
from storage.filesnap import SnapshotError
from storage.lvmparse import LvReport, parse_lv_name
from storage.lvmsnap import cow_mib, gather, parse_snapshot_tags, snapshot_lv_name, snapshot_tags

MIB = 2**20


def lv(name: str, size_mib: int, tags: tuple[str, ...] = (), attr: str = "-wi-a-----", origin: str = "") -> LvReport:
    return LvReport(name, "vg0", size_mib * MIB, tags, attr, origin)


def test_a_snapshot_lv_is_named_after_its_disk_and_never_reads_as_a_disk():
    name = snapshot_lv_name("vg0", "web_1", 0, "before_upgrade")
    assert name == "snap-corral-web+1-disk0-before+upgrade"  # '_' is reserved in LV names: written '+'
    assert parse_lv_name(name) is None
    # a snapshot name that looks like a disk's suffix still cannot make the LV read as a disk
    assert parse_lv_name(snapshot_lv_name("vg0", "web1", 0, "x-disk3")) is None


def test_names_too_long_for_lvm_and_bad_snapshot_names_are_refused_with_the_reason():
    with pytest.raises(InvalidName, match="shorter snapshot name"):
        snapshot_lv_name("vg0", "a" * 40, 0, "b-" * 30 + "c")
    with pytest.raises(SnapshotError, match="not valid"):
        snapshot_lv_name("vg0", "web1", 0, "../x")


def test_tags_round_trip_and_foreign_tags_are_not_snapshots():
    tags = snapshot_tags("web1", "s1", 1, 2, 1700000000.7, "filesystems")
    assert parse_snapshot_tags(tags) == ("web1", "s1", 1, 2, 1700000000.0, "filesystems")
    assert parse_snapshot_tags(["corral-instance=web1", "corral-disk=0"]) is None
    assert parse_snapshot_tags(["corral-snapshot=web1/s1/x/2"]) is None
    assert parse_snapshot_tags(["corral-snapshot=web1//0/1"]) is None


def test_a_snapshot_asks_for_its_disks_size_and_lvms_overhead():
    assert cow_mib(64) == 64 + 2 + 4  # LVM's own maximum for 64 MiB measured at 68 MiB: it trims the rest
    assert cow_mib(20480) >= 20480 * 1.003


def test_gather_reads_complete_snapshots_and_names_leftovers_and_invalid_ones():
    origin0, origin1 = lv("corral-web1-disk0", 64), lv("corral-web1-disk1", 32)
    whole = [lv(f"snap-corral-web1-disk{i}-s1", 68 if i == 0 else 36, tuple(snapshot_tags("web1", "s1", i, 2, 100,
                                                                                         "crash")),
                "swi-a-s---", f"corral-web1-disk{i}") for i in (0, 1)]
    half = lv("snap-corral-web1-disk0-s2", 68, tuple(snapshot_tags("web1", "s2", 0, 2, 200, "stopped")), "swi-a-s---",
              "corral-web1-disk0")
    broken = lv("snap-corral-db1-disk0-old", 8, tuple(snapshot_tags("db1", "old", 0, 1, 50, "stopped")), "swi-I-s---",
                "corral-db1-disk0")
    found, problems, leftovers = gather([origin0, origin1, *whole, half, broken, lv("corral-db1-disk0", 64),
                                         lv("swap", 4)], "vg0")
    assert [(s.name, s.consistency, s.disks, s.used_bytes) for s in found["web1"]] == [
        ("s1", "crash", {0: 64 * MIB, 1: 32 * MIB}, (68 + 36) * MIB)]
    assert leftovers == {"web1": ["/dev/vg0/snap-corral-web1-disk0-s2"]}
    assert found["db1"][0].name == "old" and len(problems) == 1 and "'old' of instance 'db1' is invalid" in problems[0]
