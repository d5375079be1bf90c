"""The file disk template with the real qemu-img."""

from __future__ import annotations

import json
import os
import struct
import subprocess
from pathlib import Path

import pytest

from storage.base import MIB, Volume
from storage.errors import (
    CommandFailed,
    DiskExists,
    DiskNotFound,
    DiskSmallerThanImage,
    NoSpace,
    ShrinkRefused,
)
from storage.filedisk import FileTemplate

pytestmark = pytest.mark.integration


def qemu_img(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["qemu-img", *args], check=True, capture_output=True, text=True, timeout=60
    )


def info(path: str) -> dict[str, object]:
    return json.loads(qemu_img("info", "-U", "--output=json", path).stdout)


def make_image(directory: Path, size_mib: int = 16) -> tuple[Path, Path]:
    """A qcow2 image with known bytes at 0 and 5 MiB, plus its raw source."""
    directory.mkdir(parents=True, exist_ok=True)
    raw = directory / "source.raw"
    with open(raw, "wb") as f:
        f.truncate(size_mib * MIB)
        f.write(b"BOOT SECTOR" * 10)
        f.seek(5 * MIB)
        f.write(os.urandom(64 * 1024))
    image = directory / "base.qcow2"
    qemu_img("convert", "-f", "raw", "-O", "qcow2", str(raw), str(image))
    return image, raw


def same_content(a: str, a_fmt: str, b: str, b_fmt: str) -> bool:
    result = subprocess.run(
        ["qemu-img", "compare", "-q", "-f", a_fmt, "-F", b_fmt, a, b],
        capture_output=True, timeout=60,
    )
    return result.returncode == 0


@pytest.fixture
def template(tmp_path: Path) -> FileTemplate:
    return FileTemplate(str(tmp_path / "file-storage"))


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
async def test_create_makes_a_disk_of_the_requested_format_and_size(
    template: FileTemplate, fmt: str
) -> None:
    path = await template.create("web1", 0, 64, fmt)

    assert path == template.path("web1", 0, fmt)
    assert info(path)["format"] == fmt
    assert info(path)["virtual-size"] == 64 * MIB
    assert await template.size_mib("web1", 0) == 64
    assert await template.exists("web1", 0)
    assert os.stat(path).st_mode & 0o777 == 0o600


async def test_raw_disk_is_sparse(template: FileTemplate) -> None:
    path = await template.create("web1", 0, 256, "raw")

    assert os.stat(path).st_blocks * 512 < MIB


async def test_create_refuses_an_existing_disk_in_any_format(template: FileTemplate) -> None:
    await template.create("web1", 0, 8, "raw")

    with pytest.raises(DiskExists) as exc:
        await template.create("web1", 0, 8, "qcow2")

    assert exc.value.path == template.path("web1", 0, "raw")
    assert not os.path.exists(template.path("web1", 0, "qcow2"))


async def test_create_larger_than_free_space_is_refused_and_leaves_nothing(
    template: FileTemplate,
) -> None:
    absurd = template.free_mib() + 1024 * 1024

    with pytest.raises(NoSpace) as exc:
        await template.create("web1", 0, absurd, "raw")

    assert exc.value.needed_mib == absurd
    assert exc.value.free_mib < absurd
    assert not os.path.exists(template.instance_dir("web1"))


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
async def test_grow_enlarges_the_disk(template: FileTemplate, fmt: str) -> None:
    path = await template.create("web1", 0, 16, fmt)

    await template.grow("web1", 0, 48)

    assert info(path)["virtual-size"] == 48 * MIB
    assert await template.size_mib("web1", 0) == 48


async def test_grow_to_the_current_size_changes_nothing(template: FileTemplate) -> None:
    await template.create("web1", 0, 16, "qcow2")

    await template.grow("web1", 0, 16)

    assert await template.size_mib("web1", 0) == 16


async def test_shrink_is_refused_with_both_sizes(template: FileTemplate) -> None:
    await template.create("web1", 0, 32, "qcow2")

    with pytest.raises(ShrinkRefused) as exc:
        await template.grow("web1", 0, 16)

    assert (exc.value.current_mib, exc.value.requested_mib) == (32, 16)
    assert await template.size_mib("web1", 0) == 32


async def test_grow_beyond_free_space_is_refused(template: FileTemplate) -> None:
    await template.create("web1", 0, 16, "raw")

    with pytest.raises(NoSpace):
        await template.grow("web1", 0, template.free_mib() + 1024 * 1024)

    assert await template.size_mib("web1", 0) == 16


async def test_grow_or_size_of_a_missing_disk_is_disk_not_found(template: FileTemplate) -> None:
    with pytest.raises(DiskNotFound):
        await template.grow("web1", 0, 16)
    with pytest.raises(DiskNotFound):
        await template.size_mib("web1", 3)


async def test_remove_is_idempotent_and_removes_the_empty_instance_dir(
    template: FileTemplate,
) -> None:
    await template.create("web1", 0, 8, "raw")

    await template.remove("web1", 0)
    await template.remove("web1", 0)
    await template.remove("never-existed", 4)

    assert not await template.exists("web1", 0)
    assert not os.path.exists(template.instance_dir("web1"))


async def test_remove_keeps_the_other_disks_of_the_instance(template: FileTemplate) -> None:
    await template.create("web1", 0, 8, "raw")
    await template.create("web1", 1, 8, "qcow2")

    await template.remove("web1", 0)

    assert not await template.exists("web1", 0)
    assert await template.exists("web1", 1)


async def test_remove_sweeps_scratch_files_of_the_disk(template: FileTemplate) -> None:
    scratch = await template.create_scratch("web1", 0, 8)

    await template.remove("web1", 0)

    assert not os.path.exists(scratch)
    assert not os.path.exists(template.instance_dir("web1"))


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
async def test_clone_copies_the_image_and_grows_it(
    template: FileTemplate, tmp_path: Path, fmt: str
) -> None:
    image, raw = make_image(tmp_path / "images")

    path = await template.clone_image("web1", 0, str(image), 64, fmt)

    assert info(path)["format"] == fmt
    assert info(path)["virtual-size"] == 64 * MIB
    assert "backing-filename" not in info(path)
    assert same_content(str(raw), "raw", path, fmt)


async def test_clone_does_not_depend_on_the_image(template: FileTemplate, tmp_path: Path) -> None:
    image, raw = make_image(tmp_path / "images")
    path = await template.clone_image("web1", 0, str(image), None, "qcow2")

    image.unlink()

    assert info(path)["virtual-size"] == 16 * MIB
    assert same_content(str(raw), "raw", path, "qcow2")


async def test_clone_into_a_disk_smaller_than_the_image_is_refused(
    template: FileTemplate, tmp_path: Path
) -> None:
    image, _ = make_image(tmp_path / "images")

    with pytest.raises(DiskSmallerThanImage) as exc:
        await template.clone_image("web1", 0, str(image), 8, "raw")

    assert (exc.value.image_mib, exc.value.requested_mib) == (16, 8)
    assert not os.path.exists(template.instance_dir("web1"))


def corrupt_first_cluster(image: Path) -> None:
    """Point guest cluster 0 at an unaligned offset: info still works, reads fail."""
    with open(image, "r+b") as f:
        (l1_offset,) = struct.unpack(">Q", f.read(48)[40:48])
        f.seek(l1_offset)
        (l2_entry,) = struct.unpack(">Q", f.read(8))
        f.seek(l2_entry & 0x00FFFFFFFFFFFE00)
        f.write(struct.pack(">Q", (1 << 63) | 0x200))


async def test_failed_clone_leaves_no_disk_and_no_temporary_file(
    template: FileTemplate, tmp_path: Path
) -> None:
    image, _ = make_image(tmp_path / "images")
    corrupt_first_cluster(image)
    await template.create("web1", 1, 8, "raw")

    with pytest.raises(CommandFailed) as exc:
        await template.clone_image("web1", 0, str(image), 32, "raw")

    assert "Input/output error" in exc.value.stderr_tail
    assert os.listdir(template.instance_dir("web1")) == ["disk1.raw"]


async def test_list_volumes_reports_complete_disks_only(template: FileTemplate) -> None:
    await template.create("web1", 0, 8, "raw")
    await template.create("web1", 1, 16, "qcow2")
    await template.create("db1", 0, 24, "raw")
    await template.create_scratch("db1", 1, 8)

    volumes = await template.list_volumes()

    assert volumes == [
        Volume("db1", 0, template.path("db1", 0, "raw"), 24, "raw"),
        Volume("web1", 0, template.path("web1", 0, "raw"), 8, "raw"),
        Volume("web1", 1, template.path("web1", 1, "qcow2"), 16, "qcow2"),
    ]


async def test_list_volumes_of_an_unused_storage_dir_is_empty(template: FileTemplate) -> None:
    assert await template.list_volumes() == []
