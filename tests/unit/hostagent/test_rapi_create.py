"""Ganeti's instance-create request (RAPI v1 body) as Corral's add request (hostagent.rapi.create)."""

from __future__ import annotations

import pytest

from hostagent.errors import BadRequest
from hostagent.rapi.create import create_request

BASE = {"__version__": 1, "mode": "create", "name": "web9", "disk_template": "drbd", "disks": [{"size": 10240}],
        "nics": [{"mac": "generate", "mode": "bridged", "link": "br0", "vlan": "10"}], "os_type": "debootstrap+default",
        "pnode": "n1", "snode": "n2", "beparams": {"maxmem": 2048, "minmem": 2048, "vcpus": 2},
        "hvparams": {"serial_console": True, "disk_type": "paravirtual"}, "tags": ["web"], "start": False,
        "ip_check": False, "name_check": False}


def test_a_create_request_maps_to_an_add_request():
    assert create_request(BASE) == {
        "name": "web9", "os": "debootstrap+default", "disk_template": "drbd", "disks": [{"size": 10240}],
        "node": "n1:n2", "nics": [{"mode": "bridged", "bridge": "br0", "vlan": 10}], "memory": 2048, "vcpus": 2,
        "hvparams": {"serial_console": True, "disk_bus": "virtio"}, "tags": ["web"], "start": False}
    placed = create_request({**BASE, "pnode": None, "snode": None, "iallocator": "hail", "disk_template": "file"})
    assert "node" not in placed and placed["disk_template"] == "file"


@pytest.mark.parametrize("change, reason", [
    ({"__version__": 0}, "unsupported request data version 0"),
    ({"mode": "import"}, "only 'create'"),
    ({"disk_template": "rbd"}, "disk_template 'rbd': one of file, plain, drbd"),
    ({"disks": []}, "disks: at least one"),
    ({"disks": [{"size": "10G"}]}, "disk 0 size must be a whole number of MiB"),
    ({"hypervisor": "xen-pvm"}, "Corral runs only kvm"),
    ({"beparams": {"maxmem": 2048, "minmem": 1024}}, "minmem must equal maxmem"),
    ({"nics": [{"mode": "routed", "link": "100"}]}, "has no Corral equivalent"),
    ({"hvparams": {"disk_type": "floppy"}}, "Corral's disk_bus takes only the equivalents"),
    ({"no_install": True}, "Corral always installs the OS"),
    ({"spindles": 2}, "field 'spindles' is not one Corral takes"),
])
def test_what_corral_cannot_honour_is_refused_with_the_reason(change, reason):
    with pytest.raises(BadRequest) as err:
        create_request({**BASE, **change})
    assert reason in str(err.value)
