"""Snapshots of `file` disks (storage.filesnap) with the real qemu-img: copies kept beside the disks."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from conftest import read_image_mib

from storage.base import MIB
from storage.filedisk import FileTemplate
from storage.filesnap import FileSnapshots, SnapshotError

pytestmark = pytest.mark.integration


def write(path: str, fmt: str, offset_mib: int, byte: int) -> None:
    subprocess.run(["qemu-io", "-f", fmt, "-c", f"write -P {byte} {offset_mib}M 1M", path], check=True,
                   capture_output=True, timeout=30)


@pytest.fixture
async def made(tmp_path: Path) -> tuple[FileTemplate, FileSnapshots, str, str]:
    template = FileTemplate(str(tmp_path / "disks"))
    raw = await template.create("web1", 0, 32, "raw")
    qcow = await template.create("web1", 1, 16, "qcow2")
    return template, FileSnapshots(template), raw, qcow


async def test_a_stopped_instance_s_disks_go_back_to_the_snapshot_in_their_own_format(made):
    template, snaps, raw, qcow = made
    write(raw, "raw", 3, 0x11)
    write(qcow, "qcow2", 7, 0x22)
    sizes = await snaps.copy_stopped("web1", "before", [0, 1])
    taken = await snaps.commit("web1", "before", sizes, created=1000.0, consistency="stopped")
    assert (taken.name, taken.consistency, taken.disks) == ("before", "stopped", {0: 32 * MIB, 1: 16 * MIB})
    assert 2 * MIB <= taken.used_bytes < 8 * MIB, "sparse copies: the written MiBs, not the disks' sizes"
    write(raw, "raw", 3, 0x33)
    write(qcow, "qcow2", 7, 0x44)
    await snaps.revert("web1", "before")
    assert (read_image_mib(raw, "raw", 3), read_image_mib(qcow, "qcow2", 7)) == (bytes([0x11]) * MIB, bytes([0x22]) * MIB)
    assert template.locate("web1", 0) == (raw, "raw") and template.locate("web1", 1) == (qcow, "qcow2")
    assert [s.name for s in snaps.snapshots("web1")] == ["before"], "a revert keeps the snapshot"
    assert [v.index for v in await template.list_volumes()] == [0, 1], "snapshots are not volumes"


async def test_a_disk_grown_since_keeps_its_size_and_gets_the_snapshot_s_data(made):
    template, snaps, raw, _ = made
    write(raw, "raw", 30, 0x55)
    await snaps.commit("web1", "small", await snaps.copy_stopped("web1", "small", [0]), 1.0, "stopped")
    await template.grow("web1", 0, 48)
    write(raw, "raw", 30, 0x66)
    await snaps.revert("web1", "small")
    assert os.path.getsize(raw) == 48 * MIB
    assert read_image_mib(raw, "raw", 30) == bytes([0x55]) * MIB


async def test_names_leftovers_and_removal(made):
    template, snaps, _, _ = made
    for bad in ("", "../x", ".hidden", "a/b", "x" * 64):
        with pytest.raises(SnapshotError, match="is not valid"):
            await snaps.copy_stopped("web1", bad, [0])
    await snaps.commit("web1", "one", await snaps.copy_stopped("web1", "one", [0]), 1.0, "stopped")
    with pytest.raises(SnapshotError, match="already has a snapshot named 'one'"):
        await snaps.copy_stopped("web1", "one", [0])
    await snaps.prepare("web1", "cut", {0: 32 * MIB})  # a copy cut short: never listed, swept by the next try
    assert [s.name for s in snaps.snapshots("web1")] == ["one"]
    found, problems, leftovers = snaps.everything()
    assert ([s.name for s in found["web1"]], problems) == (["one"], [])
    assert leftovers == {"web1": [os.path.join(snaps.directory("web1"), ".cut.partial")]}
    await snaps.commit("web1", "cut", await snaps.copy_stopped("web1", "cut", [0]), 2.0, "crash")
    assert [s.name for s in snaps.snapshots("web1")] == ["one", "cut"]
    with pytest.raises(SnapshotError, match="no snapshot named 'nope'"):
        await snaps.revert("web1", "nope")
    assert snaps.remove("web1", "one") is True and snaps.remove("web1", "one") is False
    assert [s.name for s in snaps.snapshots("web1")] == ["cut"]
    assert snaps.used_bytes("web1") > 0
    snaps.remove_all("web1")
    assert snaps.snapshots("web1") == [] and snaps.used_bytes("web1") == 0
    await template.remove("web1", 0)
    await template.remove("web1", 1)
    assert not os.path.exists(template.instance_dir("web1")), "nothing left of the instance"
