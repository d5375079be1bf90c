"""The add request that recreates a backed-up instance (hostagent.master.decide.backup_import)."""

from __future__ import annotations

from hostagent.master.decide.backup_import import import_request

CONFIG = {"name": "web1", "uuid": "u1", "os": "debootstrap+default", "disk_template": "mirror", "memory_mib": 512,
          "vcpus": 2, "osparams": {"suite": "bookworm"}, "hvparams": {"accel": "tcg"}, "priority": "high",
          "owner": "alice", "description": "", "tags": ["web"], "boot_pattern": "", "boot_timeout_s": 0.0,
          "auto_failover": False, "after": ["db1"], "cdrom": "/iso/x.iso",
          "disks": [{"index": 1, "size_mib": 100, "format": "raw"}, {"index": 0, "size_mib": 2048, "format": "qcow2"}],
          "nics": [{"mac": "52:54:00:00:00:01", "mode": "bridged", "bridge": "br0", "network": "", "ip": "",
                    "vlan": None},
                   {"mac": "52:54:00:00:00:02", "mode": "bridged", "bridge": "", "network": "lan", "ip": "10.0.0.5",
                    "vlan": 7}]}


def test_what_the_instance_was_is_asked_for_again_under_the_new_name():
    req, notes = import_request(CONFIG, name="web1-restored", node="n1", template=None, macs_in_use=set(),
                                start=True)
    assert req == {"name": "web1-restored", "node": "n1", "start": True, "disk_template": "mirror", "memory": 512,
                   "vcpus": 2, "os": "debootstrap+default", "osparams": {"suite": "bookworm"},
                   "hvparams": {"accel": "tcg"}, "priority": "high", "owner": "alice", "tags": ["web"],
                   "auto_failover": False,
                   "disks": [{"size": "2048M", "format": "qcow2"}, {"size": "100M", "format": "raw"}],
                   "nics": [{"mode": "bridged", "bridge": "br0", "mac": "52:54:00:00:00:01"},
                            {"mode": "bridged", "network": "lan", "vlan": 7, "mac": "52:54:00:00:00:02"}]}
    assert notes == ["NIC 1: address 10.0.0.5 is not kept (the original may still hold it); the network gives a "
                     "new one", "start order after db1 is not kept", "CD-ROM /iso/x.iso is not kept"]


def test_a_mac_in_use_is_left_to_the_add_to_make_up_and_said():
    req, notes = import_request(CONFIG, name="w", node="n1", template="file", macs_in_use={"52:54:00:00:00:01"},
                                start=False)
    assert "mac" not in req["nics"][0] and req["nics"][1]["mac"] == "52:54:00:00:00:02"
    assert notes[0] == "NIC 0: MAC 52:54:00:00:00:01 is used by another instance; a new one is generated"
    assert req["disk_template"] == "file" and "auto_failover" not in req and req["start"] is False
