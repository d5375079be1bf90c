"""Ganeti's change requests read as Corral's (hostagent.rapi.changes): what maps, what is refused and why."""

from __future__ import annotations

from typing import Any

import pytest

from hostagent.errors import BadRequest
from hostagent.rapi.changes import cluster_changes, instance_info, modify_body, query_tags, role_changes

SHOWN: dict[str, Any] = {"os": "debian", "disk_template": "drbd",
                         "beparams": {"maxmem": 512, "minmem": 512, "vcpus": 1, "auto_balance": True,
                                      "always_failover": False, "spindle_use": 1, "memory": 512}}


def refused(call: Any, *words: str) -> None:
    with pytest.raises(BadRequest) as caught:
        call()
    for word in words:
        assert word in str(caught.value), str(caught.value)


def test_memory_and_vcpus_map_and_fields_sent_back_unchanged_are_no_change() -> None:
    assert modify_body({"beparams": {"maxmem": 1024, "minmem": 1024, "vcpus": 2}}, SHOWN) == \
        {"memory": "1024M", "vcpus": 2}
    # Ganeti Web Manager sends every beparam back: the ones Corral shows unchanged are accepted
    assert modify_body({"beparams": {**SHOWN["beparams"], "vcpus": 4}, "os_name": "debian",
                        "disk_template": "drbd", "hotplug": True}, SHOWN) == {"memory": "512M", "vcpus": 4}
    assert modify_body({"hvparams": {"kernel_args": "quiet"}, "force": True}, SHOWN) == \
        {"hvparams": {"kernel_args": "quiet"}, "force": True}


def test_what_corral_cannot_change_is_refused_with_what_to_use() -> None:
    refused(lambda: modify_body({"beparams": {"minmem": 256}}, SHOWN), "one memory size")
    refused(lambda: modify_body({"beparams": {"maxmem": 1024, "minmem": 512}}, SHOWN), "minmem must equal maxmem")
    refused(lambda: modify_body({"beparams": {"auto_balance": False}}, SHOWN), "auto_balance")
    refused(lambda: modify_body({"os_name": "centos"}, SHOWN), "reinstall")
    refused(lambda: modify_body({"disk_template": "plain"}, SHOWN), "convert")
    refused(lambda: modify_body({"nics": [["add", -1, {}]]}, SHOWN), "--nic")
    refused(lambda: modify_body({"disks": [["add", -1, {"size": 1024}]]}, SHOWN), "add-disk")
    refused(lambda: modify_body({"runtime_mem": 256}, SHOWN), "ballooning")
    refused(lambda: modify_body({"pnode": "n2"}, SHOWN), "cannot modify pnode")
    refused(lambda: modify_body({"force": True}, SHOWN), "nothing to change")
    refused(lambda: modify_body({"beparams": {"maxmem": "1G"}}, SHOWN), "whole number of MiB")


def test_roles_are_node_flags_and_the_master_is_not_a_role_to_set() -> None:
    assert role_changes("drained") == {"drained": True, "offline": False}
    assert role_changes("regular") == {"drained": False, "offline": False}
    assert role_changes("master-candidate") == {"drained": False, "offline": False, "candidate": True}
    assert role_changes("offline") == {"offline": True}
    refused(lambda: role_changes("master"), "master-failover")
    refused(lambda: role_changes("boss"), "not one of")
    refused(lambda: query_tags([]), "?tag=")


def test_cluster_settings_map_and_others_are_refused_unless_unchanged() -> None:
    info = {"vg_name": None, "maintain_node_health": False}
    assert cluster_changes({"candidate_pool_size": 3, "hvparams": {"kvm": {"kernel_args": "quiet"}},
                            "beparams": {"default": {"maxmem": 256, "vcpus": 2}}, "vg_name": None}, info) == \
        {"candidate_pool_size": 3, "hvparams": {"kernel_args": "quiet"}, "default_memory": "256M",
         "default_vcpus": 2}
    refused(lambda: cluster_changes({"hvparams": {"xen-pvm": {}}}, info), "KVM only")
    refused(lambda: cluster_changes({"vg_name": "xenvg"}, info), "no such cluster setting")
    refused(lambda: cluster_changes({"maintain_node_health": False}, info), "nothing to change")


def test_instance_details_are_keyed_by_name_with_ganetis_states() -> None:
    inst = {"name": "db1", "admin_state": "up", "disk_template": "drbd", "hvparams": {"kernel_args": "quiet"},
            "osparams": {"x": "1"}, "disks": [{"index": 0, "size_mib": 1024, "uuid": "d0"}], "nics": []}
    row = {"name": "db1", "admin_state": "up", "os": "debian", "primary_node": "n1", "secondary_node": "n2",
           "disk_template": "drbd", "status": "running", "pid": 42, "memory": 512, "vcpus": 1, "ctime": 1.0,
           "mtime": 2.0, "uuid": "u", "disks": [{"size_mib": 1024}], "nics": []}
    out = instance_info({"instance": inst, "row": row, "hv_defaults": {"acpi": True}, "cluster_uuid": "c"},
                        True)["db1"]
    assert (out["config_state"], out["run_state"], out["pnode"], out["snodes"]) == ("up", "up", "n1", ["n2"])
    assert out["disks"][0]["size"] == 1024 and out["disks"][0]["dev_type"] == "drbd"
    assert out["hv_actual"] == {"acpi": True, "kernel_args": "quiet"} and out["hv_instance"] == {"kernel_args": "quiet"}
    assert out["be_actual"]["maxmem"] == 512 and out["snodes_group_uuids"] == [out["pnode_group_uuid"]]


def test_an_export_goes_to_the_destinations_first_export_directory_and_a_running_one_only_live() -> None:
    from hostagent.rapi.changes import export_body
    assert export_body("db1", {"mode": "local", "destination": "n2"}, False) == \
        {"instance": "db1", "to": "n2:", "live": False, "compress": False}
    assert export_body("db1", {"destination": "n2", "shutdown": False, "compress": "gzip"}, True)["live"] is True
    refused(lambda: export_body("db1", {"destination": "n2"}, True), "is running", "shutdown false")
    refused(lambda: export_body("db1", {"mode": "remote", "destination": "n2"}, False), "mode local")
    refused(lambda: export_body("db1", {"destination": "n2", "remove_instance": True}, False), "keeps the instance")
    refused(lambda: export_body("db1", {}, False), "destination must be")
