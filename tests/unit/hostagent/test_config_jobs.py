"""The pure parts of the jobs made for Ganeti's RAPI (hostagent.master.config_jobs): storage rows, checks."""

from __future__ import annotations

import pytest

from hostagent import model
from hostagent.errors import BadRequest
from hostagent.master.config_jobs import node_changes, storage_request, storage_units, tag_target

REPORT = {"disk_total_mib": 1000, "disk_free_mib": 400, "file_storage_dir": "/var/lib/corral/file-storage",
          "lvm": {"vg": "corral", "size_mib": 2048, "free_mib": 2000}}


def test_storage_units_are_what_the_node_reported() -> None:
    assert storage_units("n1", REPORT, "file") == [{"name": "/var/lib/corral/file-storage", "size": 1000,
                                                   "used": 600, "free": 400, "allocatable": True, "node": "n1",
                                                   "type": "file"}]
    assert storage_units("n1", REPORT, "lvm-vg")[0]["used"] == 48
    assert storage_units("n1", {"disk_total_mib": 1, "disk_free_mib": 1}, "lvm-vg") == []  # no volume group
    assert storage_units("n1", {**REPORT, "lvm": {"vg": "corral", "error": "vgs failed"}}, "lvm-vg") == []


def test_storage_requests_name_what_is_accepted() -> None:
    assert storage_request("file", ["name", "free"]) == ("file", ["name", "free"])
    for kind, fields, said in (("rados", ["name"], "file and lvm-vg"), ("file", [], "give the fields"),
                               ("file", ["name", "colour"], r"unknown storage field\(s\) colour")):
        with pytest.raises(BadRequest, match=said):
            storage_request(kind, fields)


def test_node_flags_and_tag_targets_are_checked() -> None:
    assert node_changes({"drained": True}) == {"drained": True}
    for bad, said in (({}, "give the node flags"), ({"colour": True}, "unknown node setting"),
                      ({"drained": "yes"}, "must be true or false")):
        with pytest.raises(BadRequest, match=said):
            node_changes(bad)
    assert tag_target("node", "n1") == (model.node_key("n1"), "node 'n1'")
    assert tag_target("cluster", "") == (model.CLUSTER_KEY, "the cluster")
    with pytest.raises(BadRequest, match="not 'group'"):
        tag_target("group", "default")
