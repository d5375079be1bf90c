"""DRBD's fence-peer call on a node (hostagent.node.drbdnode): only the instance's primary may have the master
outdate the other copy; a node still Primary of a resource whose instance was failed over away from it (a
cut-off primary that came back) keeps its I/O frozen at once instead of asking the master for a minute."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from hostagent.node.disks import NodeDisks
from hostagent.node.drbdnode import NodeDrbd
from hostagent.node.executor import OrderError
from storage.filedisk import FileTemplate

DB1 = {"name": "db1", "primary_node": "n2", "secondary_node": "n3", "disk_template": "drbd"}


def node(tmp_path: Path, name: str, asked: list[dict[str, Any]]) -> NodeDrbd:
    async def stop_guest(_: str) -> None:
        return None

    drbd = NodeDrbd(name, NodeDisks(name, FileTemplate(str(tmp_path)), None), lambda n: DB1 if n == "db1" else None,
                    str(tmp_path / "run"), stop_guest)

    async def tell_master(path: str, body: dict[str, Any]) -> bool:
        asked.append(body)
        return True

    drbd.tell_master = tell_master
    return drbd


def test_the_primary_has_the_master_outdate_its_secondary(tmp_path: Path) -> None:
    asked: list[dict[str, Any]] = []
    assert asyncio.run(node(tmp_path, "n2", asked).fence_peer("corral-db1-0")) == "n3"
    assert [a["name"] for a in asked] == ["db1"] and "lost its DRBD connection to node 'n3'" in asked[0]["reason"]


def test_a_node_that_is_no_longer_the_primary_stays_frozen_without_asking(tmp_path: Path) -> None:
    asked: list[dict[str, Any]] = []
    with pytest.raises(OrderError, match="node 'n3' is not its primary"):
        asyncio.run(node(tmp_path, "n3", asked).fence_peer("corral-db1-0"))
    assert asked == []
