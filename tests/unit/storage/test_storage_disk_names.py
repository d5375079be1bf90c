"""File template naming rules (no qemu-img needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from storage.base import InvalidDiskSpec, InvalidName, UnsupportedFormat
from storage.filedisk import FileTemplate


def test_disk_path_is_instance_dir_then_disk_index_and_format(tmp_path: Path) -> None:
    template = FileTemplate(str(tmp_path))

    assert template.path("web1.example.com", 2, "qcow2") == (
        f"{tmp_path}/web1.example.com/disk2.qcow2"
    )
    assert template.path("web1", 0, "raw") == f"{tmp_path}/web1/disk0.raw"


def test_relative_base_dir_is_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)

    assert FileTemplate("storage").path("a", 0, "raw") == f"{tmp_path}/storage/a/disk0.raw"


@pytest.mark.parametrize(
    "name", ["", "..", ".hidden", "a/b", "../etc", "a b", "-x", "a:b", "x" * 201]
)
def test_names_that_could_escape_or_break_tools_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(InvalidName):
        FileTemplate(str(tmp_path)).path(name, 0, "raw")


def test_negative_index_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidDiskSpec):
        FileTemplate(str(tmp_path)).path("web1", -1, "raw")


def test_format_other_than_raw_or_qcow2_is_refused_with_the_choices(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedFormat) as info:
        FileTemplate(str(tmp_path)).path("web1", 0, "vmdk")

    assert "use one of: raw, qcow2" in str(info.value)


async def test_zero_size_is_refused_before_touching_the_disk(tmp_path: Path) -> None:
    template = FileTemplate(str(tmp_path / "storage"))

    with pytest.raises(InvalidDiskSpec):
        await template.create("web1", 0, 0, "raw")

    assert not (tmp_path / "storage").exists()


def test_free_space_is_measured_even_before_the_directory_exists(tmp_path: Path) -> None:
    template = FileTemplate(str(tmp_path / "not" / "yet"))

    assert 0 < template.free_mib() <= template.total_mib()
