"""What OS scripts learn about an instance's NICs and their networks (Ganeti's NIC_n_* and NIC_n_NETWORK_*)."""

from pathlib import Path

from hostagent.node.executor import nic_envs
from storage.osdef import OsDefinition, os_environment

NET = {"name": "lan", "uuid": "u-lan", "subnet": "10.0.0.0/24", "gateway": "10.0.0.1", "mac_prefix": "aa:00:00",
       "tags": ["site:a", "dhcp:no"]}
INST = {"nics": [{"mac": "aa:00:00:00:00:05", "mode": "bridged", "bridge": "br0", "network": "lan",
                  "ip": "10.0.0.5", "vlan": 10},
                 {"mac": "52:54:00:00:00:06", "mode": "user", "bridge": ""}]}


def test_a_nic_on_a_network_gives_its_address_vlan_and_network_to_the_os_scripts():
    osdef = OsDefinition(name="debian", path=str(Path("/nonexistent")), api_versions=(20,), variants=(),
                         parameters=())
    env = os_environment(osdef, instance_name="web1", instance_uuid="u", primary_node="n1", secondary_nodes=[],
                         hvparams={}, beparams={}, disks=[], nics=nic_envs(INST, {"lan": NET}), variant=None,
                         osparams={})
    assert {k: v for k, v in env.items() if k.startswith("NIC_0_")} == {
        "NIC_0_MAC": "aa:00:00:00:00:05", "NIC_0_MODE": "bridged", "NIC_0_LINK": "br0", "NIC_0_BRIDGE": "br0",
        "NIC_0_IP": "10.0.0.5", "NIC_0_VLAN": "10", "NIC_0_NETWORK_NAME": "lan", "NIC_0_NETWORK_UUID": "u-lan",
        "NIC_0_NETWORK_SUBNET": "10.0.0.0/24", "NIC_0_NETWORK_GATEWAY": "10.0.0.1",
        "NIC_0_NETWORK_MAC_PREFIX": "aa:00:00", "NIC_0_NETWORK_TAGS": "site:a dhcp:no"}
    assert not [k for k in env if k.startswith("NIC_1_") and ("NETWORK" in k or "IP" in k or "VLAN" in k)]
    assert env["NIC_COUNT"] == "2"
