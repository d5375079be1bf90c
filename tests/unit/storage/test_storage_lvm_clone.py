"""PlainTemplate.clone_image (an image copied onto a new LV) through a fake at the command seam: the copy
itself is proven on real LVM in tests/integration/test_nodevm_plain.py; here, what happens when it cannot be."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest

from storage.errors import CommandFailed, DiskSmallerThanImage
from storage.lvm import PlainTemplate
from storage.runner import CommandResult

from test_storage_lvm_parse import LVS_OUTPUT, VG, VGS_OUTPUT

IMAGE = "/var/lib/corral/images/debian.qcow2"


class FakeTools:
    """LVM reports from captured output, `qemu-img info` of a 64 MiB image; `qemu-img convert` fails if told."""

    def __init__(self, convert_fails: bool = False) -> None:
        self.convert_fails = convert_fails
        self.calls: list[list[str]] = []

    async def __call__(self, argv: Sequence[str], *, timeout_s: float, check: bool = True,
                       log_path: str | None = None) -> CommandResult:
        self.calls.append(list(argv))
        if argv[:2] == ["qemu-img", "convert"] and self.convert_fails:
            raise CommandFailed(list(argv), 1, "qemu-img: error while writing at byte 0: No space left on device")
        stdout = {"lvs": LVS_OUTPUT, "vgs": VGS_OUTPUT,
                  "qemu-img": json.dumps({"virtual-size": 64 * 2**20})}.get(argv[0], "")
        return CommandResult(tuple(argv), 0, stdout, "")

    def programs(self) -> list[str]:
        return [" ".join(argv[:2]) if argv[0] == "qemu-img" else argv[0] for argv in self.calls]


async def test_an_image_is_copied_onto_a_new_volume_as_raw() -> None:
    tools = FakeTools()
    path = await PlainTemplate(VG, run=tools).clone_image("web9", 0, IMAGE, 128, "raw")
    assert path == f"/dev/{VG}/corral-web9-disk0"
    assert tools.calls[-1] == ["qemu-img", "convert", "-q", "-n", "-f", "qcow2", "-O", "raw", IMAGE, path]


async def test_an_image_larger_than_the_disk_is_refused_before_a_volume_is_made() -> None:
    tools = FakeTools()
    with pytest.raises(DiskSmallerThanImage, match="needs a disk of at least 64 MiB, 32 MiB was requested"):
        await PlainTemplate(VG, run=tools).clone_image("web9", 0, IMAGE, 32, "raw")
    assert "lvcreate" not in tools.programs()


async def test_a_failed_copy_removes_the_volume_it_made() -> None:
    tools = FakeTools(convert_fails=True)
    with pytest.raises(CommandFailed):
        await PlainTemplate(VG, run=tools).clone_image("web9", 0, IMAGE, 128, "raw")
    assert tools.programs()[-3:] == ["lvcreate", "qemu-img convert", "lvremove"]
    assert tools.calls[-1][-1] == f"{VG}/corral-web9-disk0"
