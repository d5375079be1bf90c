"""LVM naming and report parsing (pure; no LVM needed).

The report literals were captured from LVM 2.03.16 (Debian 12) on a loop
device with --driverloaded n, during a run of
tests/integration/test_storage_lvm.py's setup: PlainTemplate created web1
disk 0 (64 MiB) and db_tmeta disk 1 (5 MiB, rounded to 8), and by hand
`lvcreate -n renamed-by-hand -L 8m --addtag corral-instance=ghost
--addtag corral-disk=2` and `lvcreate -n swap -L 4m`.
"""

from __future__ import annotations

import pytest

from storage.base import MIB, InvalidDiskSpec, InvalidName, StorageError
from storage.lvm import PlainTemplate, VolumeGroupError
from storage.lvmparse import (
    LvReport,
    VgReport,
    adoption_problem,
    disk_identity,
    disk_tags,
    dm_name,
    lv_name,
    parse_lv_name,
    parse_lvs,
    parse_tags,
    parse_vgs,
)

# lvs --driverloaded n --reportformat json -o lv_name,lv_size,lv_tags,vg_name
#     --units b --nosuffix corraltest5f3a9c1e
LVS_OUTPUT = """\
  {
      "report": [
          {
              "lv": [
                  {"lv_name":"corral-db+tmeta-disk1", "lv_size":"8388608", "lv_tags":"corral-disk=1,corral-instance=db_tmeta", "vg_name":"corraltest5f3a9c1e"},
                  {"lv_name":"corral-web1-disk0", "lv_size":"67108864", "lv_tags":"corral-disk=0,corral-instance=web1", "vg_name":"corraltest5f3a9c1e"},
                  {"lv_name":"renamed-by-hand", "lv_size":"8388608", "lv_tags":"corral-disk=2,corral-instance=ghost", "vg_name":"corraltest5f3a9c1e"},
                  {"lv_name":"swap", "lv_size":"4194304", "lv_tags":"", "vg_name":"corraltest5f3a9c1e"}
              ]
          }
      ]
  }
"""  # noqa: E501

# vgs --driverloaded n --reportformat json -o vg_name,vg_size,vg_free,vg_extent_size
#     --units b --nosuffix corraltest5f3a9c1e   (same moment as LVS_OUTPUT)
VGS_OUTPUT = """\
  {
      "report": [
          {
              "vg": [
                  {"vg_name":"corraltest5f3a9c1e", "vg_size":"532676608", "vg_free":"444596224", "vg_extent_size":"4194304"}
              ]
          }
      ]
  }
"""  # noqa: E501

# The same vgs for a VG that does not exist (exit status 5).
VGS_MISSING_OUTPUT = """\
  {
      "report": [
          {
              "vg": [
              ]
          }
      ]
  }
"""

VG = "corraltest5f3a9c1e"


def test_lv_name_ties_the_volume_to_instance_and_disk_index() -> None:
    assert lv_name("xenvg", "web1.example.com", 3) == "corral-web1.example.com-disk3"


def test_underscores_become_plus_so_lvm_reserved_strings_cannot_appear() -> None:
    name = lv_name("xenvg", "db_tmeta", 0)

    assert name == "corral-db+tmeta-disk0"
    assert "_" not in name


@pytest.mark.parametrize(
    ("instance", "index"),
    [("web1", 0), ("a-disk0", 1), ("x-disk5-disk", 12), ("db_tmeta", 0), ("a.b_c-d", 7)],
)
def test_lv_name_maps_back_to_exactly_its_instance_and_index(
    instance: str, index: int
) -> None:
    assert parse_lv_name(lv_name("vg", instance, index)) == (instance, index)


@pytest.mark.parametrize(
    "name",
    ["swap", "corral-web1", "corral-web1-disk", "corral-web1-disk01", "corral-web1-disk-1",
     "corral-a_b-disk0", "corral--disk0", "corral-.-disk0", "web1-disk0"],
)
def test_names_the_scheme_never_makes_are_not_taken_for_disks(name: str) -> None:
    assert parse_lv_name(name) is None


def test_tags_carry_the_exact_instance_name_and_index() -> None:
    assert disk_tags("db_x.y-z", 4) == ("corral-instance=db_x.y-z", "corral-disk=4")
    assert parse_tags(["other", *disk_tags("db_x.y-z", 4)]) == ("db_x.y-z", 4)


@pytest.mark.parametrize(
    "tags",
    [
        [],
        ["corral-instance=web1"],
        ["corral-disk=0"],
        ["corral-instance=web1", "corral-instance=web2", "corral-disk=0"],
        ["corral-instance=web1", "corral-disk=00"],
        ["corral-instance=../x", "corral-disk=0"],
    ],
)
def test_missing_ambiguous_or_invalid_tags_claim_nothing(tags: list[str]) -> None:
    assert parse_tags(tags) is None


def test_lvs_report_is_parsed_with_exact_byte_sizes_and_tags() -> None:
    lvs = parse_lvs(LVS_OUTPUT)

    assert lvs[1] == LvReport(
        name="corral-web1-disk0",
        vg=VG,
        size_bytes=64 * MIB,
        tags=("corral-disk=0", "corral-instance=web1"),
    )
    assert lvs[3] == LvReport(name="swap", vg=VG, size_bytes=4 * MIB, tags=())


def test_disk_identity_prefers_tags_and_ignores_foreign_volumes() -> None:
    identities = [disk_identity(lv) for lv in parse_lvs(LVS_OUTPUT)]

    assert identities == [("db_tmeta", 1), ("web1", 0), ("ghost", 2), None]


def test_untagged_volume_named_by_the_scheme_is_still_a_disk() -> None:
    lv = LvReport(name="corral-web2-disk1", vg=VG, size_bytes=MIB, tags=())

    assert disk_identity(lv) == ("web2", 1)


def test_vgs_report_gives_sizes_in_mib_rounded_down() -> None:
    [vg] = parse_vgs(VGS_OUTPUT)

    assert vg == VgReport(VG, 532676608, 444596224, 4 * MIB)
    assert (vg.size_mib, vg.free_mib) == (508, 424)


def test_missing_vg_report_has_no_rows() -> None:
    assert parse_vgs(VGS_MISSING_OUTPUT) == []


def test_allocation_is_rounded_up_to_whole_extents() -> None:
    vg = VgReport("vg", 100 * MIB, 100 * MIB, 4 * MIB)

    assert vg.allocated_bytes(5) == 8 * MIB
    assert vg.allocated_bytes(8) == 8 * MIB


@pytest.mark.parametrize("text", ["", "not json", '{"report": 3}', '{"report": [{"lv": [1]}]}'])
def test_unreadable_report_is_a_storage_error_quoting_the_output(text: str) -> None:
    with pytest.raises(StorageError, match="cannot read the LVM report"):
        parse_lvs(text)


def test_lv_row_without_a_size_is_a_storage_error() -> None:
    with pytest.raises(StorageError, match="bad lv row"):
        parse_lvs('{"report": [{"lv": [{"lv_name": "a", "vg_name": "v", "lv_tags": ""}]}]}')


def test_device_mapper_name_doubles_dashes() -> None:
    assert dm_name("my-vg", "corral-web1-disk0") == "my--vg-corral--web1--disk0"


def test_name_too_long_for_the_device_mapper_is_refused_naming_the_limit() -> None:
    longest = "a" * (125 - len(dm_name("xenvg", "corral--disk0")))
    lv_name("xenvg", longest, 0)

    with pytest.raises(InvalidName, match="at most 125"):
        lv_name("xenvg", longest + "a", 0)
    with pytest.raises(InvalidName):
        lv_name("xenvg", longest[:-1] + "-", 0)  # the dash counts twice


def test_path_is_under_dev_vg_and_only_raw_is_stored() -> None:
    template = PlainTemplate("xenvg")

    assert template.path("web1", 0, "raw") == "/dev/xenvg/corral-web1-disk0"
    with pytest.raises(StorageError, match="cannot store format 'qcow2'"):
        template.path("web1", 0, "qcow2")


@pytest.mark.parametrize("name", ["", ".", "..", "-vg", "v g", "vg/x"])
def test_unusable_volume_group_names_are_refused_up_front(name: str) -> None:
    with pytest.raises(VolumeGroupError) as exc:
        PlainTemplate(name)

    assert exc.value.vg == name


def test_negative_index_is_refused_before_naming() -> None:
    with pytest.raises(InvalidDiskSpec):
        lv_name("xenvg", "web1", -1)


def test_only_a_plain_closed_lv_that_is_no_corral_disk_is_adopted():
    def lv(name="root", attr="-wi-a-----", tags=()):
        return LvReport(name, "vg0", 8 * 2**20, tuple(tags), attr)
    assert adoption_problem("root", lv(), "vg0") is None
    assert adoption_problem("root", None, "vg0") == "no logical volume 'root' in volume group vg0 (`lvs vg0` lists them)"
    assert adoption_problem("root", lv(attr="-wi-ao----"), "vg0").startswith("LV vg0/root is open")
    assert adoption_problem("pool", lv(attr="twi-a-tz--"), "vg0").startswith("LV vg0/pool is not a plain logical")
    tagged = lv(tags=("corral-instance=web1", "corral-disk=2"))
    assert adoption_problem("root", tagged, "vg0") == "LV vg0/root is already disk 2 of instance 'web1'"
    assert adoption_problem("corral-web1-disk0", lv("corral-web1-disk0"), "vg0") == (
        "LV vg0/corral-web1-disk0 is already disk 0 of instance 'web1'")

