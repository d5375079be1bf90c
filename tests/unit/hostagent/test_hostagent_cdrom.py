"""CD-ROMs: what --cdrom accepts, when a change waits for the next start, which files a node gives a guest,
and the drive and VNC settings a node adds to each QEMU it starts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kvm.cmdline import DiskSpec, InstanceSpec
from kvm.hvparams import HvParams
from kvm.process import QemuManager

from hostagent.master import pending
from hostagent.master.decide.checks import ClusterView, cdrom_requested, check_add, check_modify
from hostagent.config import ConfigError, parse_config
from hostagent.errors import BadRequest
from hostagent.node.media import NodeMedia

UUID = "6f1c2a44-0d1b-4a5e-9a61-2f6bb0f7d0c1"
INST = {"name": "web1", "uuid": UUID, "disk_template": "file", "primary_node": "n1", "memory_mib": 128,
        "vcpus": 1, "disks": [], "nics": [], "hvparams": {}, "priority": "normal", "after": [],
        "boot_pattern": "", "boot_timeout_s": 0.0, "auto_failover": None}


def test_cdrom_takes_an_absolute_path_or_none():
    problems: list[str] = []
    assert cdrom_requested("/var/lib/corral/iso/d.iso", problems) == "/var/lib/corral/iso/d.iso"
    assert cdrom_requested("none", problems) == "" and cdrom_requested("NONE", problems) == ""
    assert not problems
    for bad in ("d.iso", "/iso/../etc/shadow", "//iso/d.iso", "", 3):
        problems = []
        cdrom_requested(bad, problems)
        assert problems and "absolute path of an ISO file" in problems[0] and "none to eject" in problems[0], bad


def test_modify_and_add_record_the_cdrom_and_refuse_a_bad_one_naming_it():
    assert check_modify(INST, {"cdrom": "/i/d.iso"}, (INST,), {})["cdrom"] == "/i/d.iso"
    assert check_modify({**INST, "cdrom": "/i/d.iso"}, {"cdrom": "none"}, (INST,), {})["cdrom"] == ""
    assert "cdrom" not in check_modify(INST, {"cdrom": "none"}, (INST,), {})  # no drive: nothing to eject, none added
    with pytest.raises(BadRequest, match="cdrom 'd.iso' is not a path"):
        check_modify(INST, {"cdrom": "d.iso"}, (INST,), {})
    view = ClusterView(cluster_hv={"accel": "tcg"}, nodes={"n1": {"name": "n1", "address": "127.0.0.1"}},
                       reports={"n1": {"node": "n1", "time": 0.0, "memory_total_mib": 4096, "memory_free_mib": 3000,
                                       "disk_free_mib": 100_000, "os": {"img": "image"}}},
                       instances=set(), used_macs=set())
    assert check_add({"name": "new1", "os": "img", "cdrom": "/i/d.iso"}, view, now=0).cdrom == "/i/d.iso"
    assert check_add({"name": "new1", "os": "img"}, view, now=0).cdrom is None


def test_a_running_instance_without_a_drive_gets_its_cdrom_at_the_next_start():
    new = pending.split(INST, {**INST, "cdrom": "/i/d.iso"}, running=True)
    assert new["pending"] == {"cdrom": "/i/d.iso"} and new.get("cdrom") is None
    started, changed = pending.apply(new)
    assert started["cdrom"] == "/i/d.iso" and changed == {"cdrom": (None, "/i/d.iso")}


def test_a_running_instance_with_a_drive_changes_its_medium_now():
    with_drive = {**INST, "cdrom": ""}
    new = pending.split(with_drive, {**with_drive, "cdrom": "/i/d.iso"}, running=True)
    assert new["cdrom"] == "/i/d.iso" and "pending" not in new
    assert pending.split(INST, {**INST, "cdrom": "/i/d.iso"}, running=False)["cdrom"] == "/i/d.iso"


@pytest.fixture
def isos(tmp_path: Path) -> tuple[NodeMedia, Path]:
    iso_dir = tmp_path / "iso"
    iso_dir.mkdir()
    (iso_dir / "d.iso").write_bytes(b"\0" * 2048)
    (iso_dir / "sub").mkdir()
    (tmp_path / "secret").write_text("root:x")
    (iso_dir / "escape.iso").symlink_to(tmp_path / "secret")
    (iso_dir / "inside.iso").symlink_to(iso_dir / "d.iso")
    node = NodeMedia("n1", "192.0.2.11", QemuManager(str(tmp_path / "run")), (str(iso_dir),),
                     lambda uuid: "pw-of-" + uuid[:2])
    return node, iso_dir


def test_a_node_gives_a_guest_only_regular_files_inside_its_iso_directories(isos, tmp_path):
    node, iso_dir = isos
    assert node.iso_problem(str(iso_dir / "d.iso")) == ""
    assert node.iso_problem(str(iso_dir / "inside.iso")) == ""
    assert "is not a file in the ISO directories of node 'n1'" in node.iso_problem(str(tmp_path / "secret"))
    assert "iso_dirs in [paths]" in node.iso_problem("/etc/shadow")
    assert "is a link to" in node.iso_problem(str(iso_dir / "escape.iso"))
    assert node.iso_problem(str(iso_dir / "gone.iso")) == f"'{iso_dir}/gone.iso' does not exist on node 'n1'"
    assert "is not a regular file" in node.iso_problem(str(iso_dir / "sub"))


def spec(**hv: object) -> InstanceSpec:
    return InstanceSpec(name="web1", uuid=UUID, memory_mib=128, vcpus=1, hv=HvParams(**hv),  # type: ignore[arg-type]
                        disks=(DiskSpec("/d/disk0.raw", "raw"),), nics=())


def test_a_node_adds_the_cdrom_drive_and_leaves_it_empty_when_the_file_is_not_there(isos):
    node, iso_dir = isos
    assert node.dress(spec(), INST).disks == spec().disks  # no drive
    dressed = node.dress(spec(), {**INST, "cdrom": str(iso_dir / "inside.iso")})
    assert dressed.disks[-1] == DiskSpec(os.path.realpath(iso_dir / "d.iso"), "raw", "cdrom")
    assert node.dress(spec(), {**INST, "cdrom": "/etc/shadow"}).disks[-1] == DiskSpec("", "raw", "cdrom")
    assert node.dress(spec(), {**INST, "cdrom": ""}).disks[-1] == DiskSpec("", "raw", "cdrom")


def test_vnc_tcp_listens_on_the_node_address_with_the_instance_password(isos):
    node, _ = isos
    local = node.dress(spec(vnc="localhost"), INST)
    assert (local.vnc_host, local.vnc_password) == ("", "")
    dressed = node.dress(spec(vnc="tcp"), INST)
    assert (dressed.vnc_host, dressed.vnc_password) == ("192.0.2.11", "pw-of-6f")


def test_iso_dirs_must_be_absolute_directories_other_than_root():
    base = {"node": {"name": "n1", "address": "127.0.0.1"}}
    assert parse_config({**base, "paths": {"iso_dirs": ["/srv/iso"]}}).iso_dirs == ("/srv/iso",)
    assert parse_config(base).iso_dirs == ("/var/lib/corral/iso",)
    with pytest.raises(ConfigError, match="paths.iso_dirs: '/' must be an absolute directory"):
        parse_config({**base, "paths": {"iso_dirs": ["/", "iso"]}})
