"""A bridged NIC's VLAN on its tap, in a network namespace of the test's own.

This machine's kernel has no VLAN-aware bridges (vlan_filtering is refused),
so only the refusal is tested here: a VLAN on a bridge that ignores VLANs
would separate nothing, and says how to fix it.
"""

import uuid
from collections.abc import AsyncIterator

import pytest
from pyroute2 import AsyncIPRoute, netns

from kvm.tap import TapError, create_tap, tap_name

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@pytest.fixture
async def namespace() -> AsyncIterator[str]:
    name = f"crl-vlan-{uuid.uuid4().hex[:8]}"
    netns.create(name)
    try:
        async with AsyncIPRoute(netns=name, flags=0) as ipr:
            await ipr.link("add", ifname="br-plain", kind="bridge")
        yield name
    finally:
        netns.remove(name)


async def test_a_vlan_on_a_bridge_that_ignores_vlans_is_refused_saying_how_to_fix_it(namespace):
    with pytest.raises(TapError, match=r"bridge 'br-plain' is not VLAN-aware, so VLAN 10 would not separate "
                                       r"anything; turn filtering on \(ip link set br-plain type bridge "
                                       r"vlan_filtering 1\)"):
        await create_tap(tap_name("web1", 0), "br-plain", netns=namespace, vlan=10)
