"""A node with a volume group reports its size and free space, and cluster verify finds orphan LVs.

Real agent, real LVM tools on a loop device (with `--driverloaded n`: this
machine has no device-mapper, so LVs are recorded but never activated).
"""

from __future__ import annotations

import asyncio

import pytest
from conftest import LVM_ARGS, PV_MIB, AgentNode, wait_for

from storage.lvm import PlainTemplate

pytestmark = pytest.mark.integration


def test_node_reports_its_volume_group_and_verify_finds_an_orphan_volume(tmp_path, vg: str) -> None:
    node = AgentNode(tmp_path / "n1")
    with node.config.open("a") as fh:
        fh.write(f'\n[storage]\nvolume_group = "{vg}"\nlvm_args = {list(LVM_ARGS)!r}\n'.replace("'", '"'))
    node.start()
    try:
        node.ok("cluster", "init", "--name", "lvm", "--hv", "accel=tcg")

        def lvm_row() -> dict | None:
            return node.json("node", "info", "n1").get("lvm")
        lvm = wait_for(lvm_row, 30, "the node report to show the volume group")
        assert lvm["vg"] == vg and PV_MIB - 8 <= lvm["size_mib"] < PV_MIB and lvm["free_mib"] == lvm["size_mib"]
        assert f"volume group {vg}: " in node.ok("node", "info", "n1")

        asyncio.run(PlainTemplate(vg, lvm_args=LVM_ARGS).create("ghost", 0, 64, "raw"))
        wait_for(lambda: lvm_row()["free_mib"] <= lvm["size_mib"] - 64, 30, "the report to count the new LV")
        verify = node.corral("cluster", "verify")
        assert f"orphan disk /dev/{vg}/" in verify.stdout and "no instance 'ghost' here" in verify.stdout
    finally:
        node.stop()
        node.kill_qemus()  # and the fence keeper
