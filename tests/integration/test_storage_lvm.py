"""The plain (LVM) disk template with the real LVM tools on a loop device.

This machine has no device-mapper, so every LVM command runs with
`--driverloaded n`: metadata is real, LVs are never activated, and no test
writes into a volume.
"""

from __future__ import annotations

import json

import pytest
from conftest import LVM_ARGS, PV_MIB, lvm

from storage.base import MIB, Volume
from storage.errors import DiskExists, DiskNotFound, InvalidName, NoSpace, ShrinkRefused
from storage.lvm import PlainTemplate, VolumeGroupNotFound
from storage.lvmparse import dm_name

pytestmark = pytest.mark.integration

def lvs(vg: str) -> dict[str, dict[str, str]]:
    """Every LV of vg as LVM itself reports it, by name."""
    out = lvm(
        "lvs", "--reportformat", "json", "-o", "lv_name,lv_size,lv_tags",
        "--units", "b", "--nosuffix", vg,
    ).stdout
    return {row["lv_name"]: row for row in json.loads(out)["report"][0]["lv"]}


@pytest.fixture
def template(vg: str) -> PlainTemplate:
    return PlainTemplate(vg, lvm_args=LVM_ARGS)


async def test_create_makes_a_tagged_volume_of_the_requested_size(
    template: PlainTemplate, vg: str
) -> None:
    path = await template.create("web1", 0, 64, "raw")

    assert path == f"/dev/{vg}/corral-web1-disk0" == template.path("web1", 0, "raw")
    lv = lvs(vg)["corral-web1-disk0"]
    assert int(lv["lv_size"]) == 64 * MIB
    assert set(lv["lv_tags"].split(",")) == {"corral-instance=web1", "corral-disk=0"}
    assert await template.exists("web1", 0)
    assert await template.size_mib("web1", 0) == 64


async def test_size_is_rounded_up_to_whole_extents_and_regrowing_to_it_changes_nothing(
    template: PlainTemplate, vg: str
) -> None:
    await template.create("web1", 0, 5, "raw")

    await template.grow("web1", 0, 5)
    await template.grow("web1", 0, 7)

    assert await template.size_mib("web1", 0) == 8
    assert int(lvs(vg)["corral-web1-disk0"]["lv_size"]) == 8 * MIB


async def test_create_refuses_an_existing_disk_and_keeps_it(
    template: PlainTemplate, vg: str
) -> None:
    await template.create("web1", 0, 16, "raw")

    with pytest.raises(DiskExists) as exc:
        await template.create("web1", 0, 32, "raw")

    assert exc.value.path == template.path("web1", 0, "raw")
    assert int(lvs(vg)["corral-web1-disk0"]["lv_size"]) == 16 * MIB


async def test_create_larger_than_the_free_space_is_refused_and_leaves_nothing(
    template: PlainTemplate, vg: str
) -> None:
    _, free_mib = await template.vg_info()

    with pytest.raises(NoSpace) as exc:
        await template.create("web1", 0, free_mib + 4, "raw")

    assert (exc.value.needed_mib, exc.value.free_mib) == (free_mib + 4, free_mib)
    assert lvs(vg) == {}


async def test_grow_extends_the_volume(template: PlainTemplate, vg: str) -> None:
    await template.create("web1", 1, 16, "raw")

    await template.grow("web1", 1, 48)

    assert await template.size_mib("web1", 1) == 48
    assert int(lvs(vg)["corral-web1-disk1"]["lv_size"]) == 48 * MIB


async def test_shrink_is_refused_with_both_sizes(template: PlainTemplate) -> None:
    await template.create("web1", 0, 32, "raw")

    with pytest.raises(ShrinkRefused) as exc:
        await template.grow("web1", 0, 16)

    assert (exc.value.current_mib, exc.value.requested_mib) == (32, 16)
    assert await template.size_mib("web1", 0) == 32


async def test_grow_beyond_the_free_space_is_refused(template: PlainTemplate) -> None:
    await template.create("web1", 0, 16, "raw")
    _, free_mib = await template.vg_info()

    with pytest.raises(NoSpace) as exc:
        await template.grow("web1", 0, 16 + free_mib + 4)

    assert exc.value.needed_mib == free_mib + 4
    assert await template.size_mib("web1", 0) == 16


async def test_grow_or_size_of_a_missing_disk_is_disk_not_found(
    template: PlainTemplate,
) -> None:
    with pytest.raises(DiskNotFound):
        await template.grow("web1", 0, 16)
    with pytest.raises(DiskNotFound):
        await template.size_mib("web1", 0)


async def test_remove_deletes_the_volume_and_is_idempotent(
    template: PlainTemplate, vg: str
) -> None:
    await template.create("web1", 0, 8, "raw")
    await template.create("web1", 1, 8, "raw")

    await template.remove("web1", 0)
    await template.remove("web1", 0)
    await template.remove("never-there", 3)

    assert not await template.exists("web1", 0)
    assert list(lvs(vg)) == ["corral-web1-disk1"]


async def test_list_volumes_reports_corral_volumes_including_orphans_by_tag(
    template: PlainTemplate, vg: str
) -> None:
    await template.create("web1", 0, 64, "raw")
    await template.create("db_tmeta", 1, 8, "raw")
    lvm("lvcreate", "-n", "renamed-by-hand", "-L", "8m",
        "--addtag", "corral-instance=ghost", "--addtag", "corral-disk=2", vg)
    lvm("lvcreate", "-n", "swap", "-L", "4m", vg)

    volumes = await template.list_volumes()

    assert volumes == [
        Volume("db_tmeta", 1, f"/dev/{vg}/corral-db+tmeta-disk1", 8, "raw"),
        Volume("ghost", 2, f"/dev/{vg}/renamed-by-hand", 8, "raw"),
        Volume("web1", 0, f"/dev/{vg}/corral-web1-disk0", 64, "raw"),
    ]


async def test_vg_info_reports_size_and_free_space(
    template: PlainTemplate, vg: str
) -> None:
    size_before, free_before = await template.vg_info()
    await template.create("web1", 0, 100, "raw")

    size_after, free_after = await template.vg_info()

    assert PV_MIB - 8 <= size_before < PV_MIB  # LVM keeps some for metadata
    assert free_before == size_before
    assert (size_after, free_after) == (size_before, free_before - 100)


async def test_longest_name_that_fits_is_accepted_by_lvm(
    template: PlainTemplate, vg: str
) -> None:
    longest = "a" * (125 - len(dm_name(vg, "corral--disk0")))

    await template.create(longest, 0, 4, "raw")

    with pytest.raises(InvalidName):
        await template.create(longest + "a", 0, 4, "raw")
    assert list(lvs(vg)) == [f"corral-{longest}-disk0"]


async def test_missing_volume_group_is_reported_as_such(vg: str) -> None:
    template = PlainTemplate(vg + "x", lvm_args=LVM_ARGS)

    with pytest.raises(VolumeGroupNotFound):
        await template.create("web1", 0, 8, "raw")
    with pytest.raises(VolumeGroupNotFound):
        await template.list_volumes()


async def test_adopt_renames_and_tags_an_lv_made_by_hand_and_release_gives_it_back(
    template: PlainTemplate, vg: str
) -> None:
    lvm("lvcreate", "--yes", "-n", "ganeti-root", "-L", "12m", vg)
    lvm("lvcreate", "--yes", "-n", "taken", "-L", "4m", "--addtag", "corral-instance=db1",
        "--addtag", "corral-disk=0", vg)
    answers = await template.adoptable(["ganeti-root", "taken", "nothere"])
    assert answers["ganeti-root"] == (12, None)
    assert answers["taken"][1] == f"LV {vg}/taken is already disk 0 of instance 'db1'"
    assert answers["nothere"] == (0, f"no logical volume 'nothere' in volume group {vg} (`lvs {vg}` lists them)")

    path = await template.adopt("ganeti-root", "web1", 0)
    assert path == f"/dev/{vg}/corral-web1-disk0"
    assert await template.adopt("ganeti-root", "web1", 0) == path  # a re-sent order changes nothing
    row = lvs(vg)["corral-web1-disk0"]
    assert set(row["lv_tags"].split(",")) == {"corral-instance=web1", "corral-disk=0", "corral-adopted=ganeti-root"}
    assert "ganeti-root" not in lvs(vg) and await template.size_mib("web1", 0) == 12

    assert await template.release("web1", 0) == "ganeti-root"
    assert lvs(vg)["ganeti-root"]["lv_tags"] == "" and "corral-web1-disk0" not in lvs(vg)
    assert await template.release("web1", 0) is None


async def test_rename_moves_a_disk_to_the_new_name_with_its_tags_once_and_never_over_another(
    template: PlainTemplate, vg: str
) -> None:
    await template.create("web1", 0, 8, "raw")
    await template.create("web1", 1, 8, "raw")
    await template.create("db9", 0, 8, "raw")
    for index in (0, 1):
        assert await template.rename_disk("web1", "web2", index)
    assert not await template.rename_disk("web1", "web2", 0)  # a re-sent order finds it done
    rows = lvs(vg)
    assert {"corral-web2-disk0", "corral-web2-disk1"} <= set(rows) and "corral-web1-disk0" not in rows
    assert set(rows["corral-web2-disk1"]["lv_tags"].split(",")) == {"corral-instance=web2", "corral-disk=1"}
    assert {(v.instance, v.index) for v in await template.list_volumes()} == {("web2", 0), ("web2", 1), ("db9", 0)}
    with pytest.raises(DiskExists):
        await template.rename_disk("web2", "db9", 0)
    assert set(lvs(vg)) >= {"corral-web2-disk0", "corral-db9-disk0"}
