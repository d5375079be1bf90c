"""PlainTemplate when LVM fails in ways the real tools cannot be made to fail
on cue (lost races, a killed lvcreate), via a fake at the command seam.

The stderr texts were captured from LVM 2.03.16 (Debian 12) with
--driverloaded n on a loop device, VG corraltest5f3a9c1e.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from storage.base import DiskExists, NoSpace
from storage.errors import CommandFailed, CommandTimeout
from storage.lvm import PlainTemplate, VolumeGroupNotFound
from storage.runner import CommandResult

from test_storage_lvm_parse import LVS_OUTPUT, VG, VGS_MISSING_OUTPUT, VGS_OUTPUT

ACTIVATION_WARNING = (
    "  WARNING: Activation disabled. No device-mapper interaction will be attempted.\n"
)
LVCREATE_NO_SPACE = (
    ACTIVATION_WARNING
    + "  WARNING: Skipping zeroing and wipping, compiled without activation support.\n"
    + f'  Volume group "{VG}" has insufficient free space (106 extents): 250 required.\n'
)
LVCREATE_EXISTS = (
    ACTIVATION_WARNING
    + f'  Logical Volume "corral-web3-disk0" already exists in volume group "{VG}"\n'
)
LVEXTEND_NO_SPACE = (
    ACTIVATION_WARNING + "  Insufficient free space: 234 extents needed, but only 106 available\n"
)
VG_MISSING = (
    ACTIVATION_WARNING
    + f'  Volume group "{VG}" not found\n'
    + f"  Cannot process volume group {VG}\n"
)


class FakeLvm:
    """Answers reports from captured output; fails one program as told."""

    def __init__(self, fail: dict[str, BaseException] | None = None) -> None:
        self.fail = fail or {}
        self.calls: list[list[str]] = []

    async def __call__(
        self, argv: Sequence[str], *, timeout_s: float, check: bool = True
    ) -> CommandResult:
        self.calls.append(list(argv))
        program = argv[0]
        if program in self.fail:
            raise self.fail[program]
        stdout = {"lvs": LVS_OUTPUT, "vgs": VGS_OUTPUT}.get(program, "")
        return CommandResult(tuple(argv), 0, stdout, ACTIVATION_WARNING)

    def programs(self) -> list[str]:
        return [argv[0] for argv in self.calls]


def failed(program: str, stderr: str) -> CommandFailed:
    return CommandFailed([program, "--driverloaded", "n"], 5, stderr)


async def test_lvcreate_losing_the_space_to_another_command_raises_no_space() -> None:
    lvm = FakeLvm({"lvcreate": failed("lvcreate", LVCREATE_NO_SPACE)})

    with pytest.raises(NoSpace) as exc:
        await PlainTemplate(VG, run=lvm).create("web3", 0, 100, "raw")

    assert (exc.value.needed_mib, exc.value.free_mib) == (100, 424)
    assert exc.value.path == f"volume group {VG}"


async def test_lvcreate_losing_the_name_to_another_command_raises_disk_exists() -> None:
    lvm = FakeLvm({"lvcreate": failed("lvcreate", LVCREATE_EXISTS)})

    with pytest.raises(DiskExists) as exc:
        await PlainTemplate(VG, run=lvm).create("web3", 0, 8, "raw")

    assert exc.value.path == f"/dev/{VG}/corral-web3-disk0"


async def test_lvextend_losing_the_space_raises_no_space_for_the_extra_mib() -> None:
    lvm = FakeLvm({"lvextend": failed("lvextend", LVEXTEND_NO_SPACE)})

    with pytest.raises(NoSpace) as exc:
        await PlainTemplate(VG, run=lvm).grow("web1", 0, 164)

    assert exc.value.needed_mib == 100


async def test_other_lvcreate_failures_pass_through_unchanged() -> None:
    error = failed("lvcreate", ACTIVATION_WARNING + "  Something else went wrong.\n")
    lvm = FakeLvm({"lvcreate": error})

    with pytest.raises(CommandFailed) as exc:
        await PlainTemplate(VG, run=lvm).create("web3", 0, 8, "raw")

    assert exc.value is error


async def test_lvcreate_killed_by_timeout_removes_what_it_may_have_committed() -> None:
    lvm = FakeLvm({"lvcreate": CommandTimeout(["lvcreate"], 60.0)})

    with pytest.raises(CommandTimeout):
        await PlainTemplate(VG, lvm_args=("--driverloaded", "n"), run=lvm).create(
            "web3", 0, 8, "raw"
        )

    assert lvm.calls[-1] == ["lvremove", "--driverloaded", "n", "-f", f"{VG}/corral-web3-disk0"]


async def test_cancelled_create_removes_what_lvcreate_may_have_committed() -> None:
    lvm = FakeLvm({"lvcreate": asyncio.CancelledError()})

    with pytest.raises(asyncio.CancelledError):
        await PlainTemplate(VG, run=lvm).create("web3", 0, 8, "raw")

    assert lvm.programs()[-2:] == ["lvcreate", "lvremove"]


async def test_missing_volume_group_is_named_with_how_to_fix_it() -> None:
    lvm = FakeLvm({"vgs": failed("vgs", VG_MISSING), "lvs": failed("lvs", VG_MISSING)})
    template = PlainTemplate(VG, run=lvm)

    with pytest.raises(VolumeGroupNotFound, match="vgcreate") as exc:
        await template.vg_info()
    with pytest.raises(VolumeGroupNotFound):
        await template.list_volumes()

    assert exc.value.vg == VG


async def test_vgs_answering_without_the_group_is_volume_group_not_found() -> None:
    async def run(argv: Sequence[str], *, timeout_s: float, check: bool = True) -> CommandResult:
        return CommandResult(tuple(argv), 0, VGS_MISSING_OUTPUT, "")

    with pytest.raises(VolumeGroupNotFound):
        await PlainTemplate(VG, run=run).vg_info()


async def test_every_command_gets_the_lvm_args_and_the_timeout() -> None:
    seen: list[tuple[list[str], float]] = []

    async def run(argv: Sequence[str], *, timeout_s: float, check: bool = True) -> CommandResult:
        seen.append((list(argv), timeout_s))
        stdout = {"lvs": LVS_OUTPUT, "vgs": VGS_OUTPUT}.get(argv[0], "")
        return CommandResult(tuple(argv), 0, stdout, "")

    template = PlainTemplate(VG, lvm_args=("--driverloaded", "n"), timeout_s=7.0, run=run)
    await template.create("web3", 0, 8, "raw")
    await template.grow("web1", 0, 128)
    await template.remove("web1", 0)

    assert [argv[0] for argv, _ in seen] == [
        "vgs", "lvs", "lvcreate", "lvs", "vgs", "lvextend", "lvs", "lvremove",
    ]
    assert all(argv[1:3] == ["--driverloaded", "n"] for argv, _ in seen)
    assert {timeout for _, timeout in seen} == {7.0}
