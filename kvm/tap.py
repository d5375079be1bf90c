"""Tap devices that plug an instance's NIC into a host bridge (pyroute2 seam).

Taps are persistent and created before QEMU starts (QEMU runs with
``script=no``), so QEMU needs no privileges for networking and a tap
survives a QEMU restart. Both calls are idempotent: creating an existing
tap re-attaches it to the bridge and brings it up; deleting a missing tap
does nothing. ``netns`` names a network namespace (``ip netns``) to work
in, for tests; it must already exist.
"""

import hashlib
from typing import Any

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError

MAX_IFNAME = 15
DEFAULT_VLAN = 1  # a new bridge port's VLAN (the bridge's default_pvid)
_PREFIX = "crl"


class TapError(Exception):
    """Tap ``name`` could not be created or removed; ``reason`` says how to fix it."""

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = reason
        super().__init__(f"tap {name!r}: {reason}")


def tap_name(instance_name: str, index: int) -> str:
    """Deterministic tap name for NIC ``index`` of an instance, at most 15 characters.

    Instance names are longer than Linux allows for interfaces, so the name
    is a hash: the same instance gets the same tap on every node.
    """
    if not 0 <= index <= 999:
        raise ValueError(f"NIC index {index} is out of range 0..999")
    digest = hashlib.sha256(instance_name.encode()).hexdigest()[:8]
    return f"{_PREFIX}{digest}n{index}"


def tap_mac(guest_mac: str) -> str:
    """The tap's own MAC: the guest's with first octet fe, as libvirt does.

    A bridge takes the lowest MAC of its ports as its own address; 0xfe
    keeps the tap from being chosen and never equals the guest's MAC.
    """
    return "fe" + guest_mac[2:]


async def create_tap(
    name: str, bridge: str, mac: str | None = None, netns: str | None = None, vlan: int | None = None
) -> None:
    """Create (or repair) persistent tap ``name``, attached to ``bridge`` and up.

    ``mac`` is the guest NIC's MAC; the tap gets ``tap_mac(mac)``. ``vlan``:
    the tap is an access port of that VLAN (``bridge vlan add dev TAP vid N
    pvid untagged``, and out of the default VLAN 1) on a VLAN-aware bridge.
    """
    if not 0 < len(name) <= MAX_IFNAME:
        raise TapError(name, f"interface names are 1-{MAX_IFNAME} characters")
    try:
        async with _iproute(netns) as ipr:
            bridge_index = await _lookup(ipr, bridge)
            if bridge_index is None:
                raise TapError(
                    name,
                    f"bridge {bridge!r} does not exist; create it "
                    f"(ip link add {bridge} type bridge) or fix the instance's bridge",
                )
            if await _kind(ipr, bridge_index) != "bridge":
                raise TapError(name, f"{bridge!r} is not a bridge; fix the instance's bridge")
            index = await _lookup(ipr, name)
            if index is not None and await _kind(ipr, index) != "tun":
                raise TapError(name, "an interface of another kind has this name; remove it")
            if index is None:
                await ipr.link("add", ifname=name, kind="tuntap", mode="tap")
                index = await _lookup(ipr, name)
            if index is None:
                raise TapError(name, "created but not found; check /dev/net/tun")
            changes: dict[str, Any] = {"master": bridge_index, "state": "up"}
            if mac:
                changes["address"] = tap_mac(mac)
            await ipr.link("set", index=index, **changes)
            if vlan is not None:
                await _access_port(ipr, name, index, bridge, bridge_index, vlan)
    except (NetlinkError, OSError) as exc:
        raise TapError(name, f"netlink: {exc}") from exc


async def _access_port(ipr: AsyncIPRoute, name: str, index: int, bridge: str, bridge_index: int, vlan: int) -> None:
    """The tap carries VLAN ``vlan`` only, untagged towards the guest; refused on a bridge that ignores VLANs."""
    links = await ipr.link("get", index=bridge_index)
    if not links or not links[0].get(("linkinfo", "data", "IFLA_BR_VLAN_FILTERING")):
        raise TapError(name, f"bridge {bridge!r} is not VLAN-aware, so VLAN {vlan} would not separate "
                             f"anything; turn filtering on (ip link set {bridge} type bridge vlan_filtering 1) "
                             "or give the NIC no VLAN")
    await ipr.vlan_filter("add", index=index, vlan_info={"vid": vlan, "flags": ["pvid", "untagged"]})
    if vlan != DEFAULT_VLAN:
        await ipr.vlan_filter("del", index=index, vlan_info={"vid": DEFAULT_VLAN})


async def delete_tap(name: str, netns: str | None = None) -> None:
    """Remove tap ``name`` if it exists; never an interface of another kind."""
    try:
        async with _iproute(netns) as ipr:
            index = await _lookup(ipr, name)
            if index is None:
                return
            if await _kind(ipr, index) != "tun":
                raise TapError(name, "is not a tap device; refusing to delete it")
            await ipr.link("del", index=index)
    except (NetlinkError, OSError) as exc:
        raise TapError(name, f"netlink: {exc}") from exc


def _iproute(netns: str | None) -> AsyncIPRoute:
    """flags=0: never create a namespace by accident (pyroute2 would)."""
    if netns is None:
        return AsyncIPRoute()
    return AsyncIPRoute(netns=netns, flags=0)


async def _lookup(ipr: AsyncIPRoute, ifname: str) -> int | None:
    found = await ipr.link_lookup(ifname=ifname)
    return found[0] if found else None


async def _kind(ipr: AsyncIPRoute, index: int) -> str | None:
    links = await ipr.link("get", index=index)
    kinds = [link.get(("linkinfo", "kind")) for link in links]
    return kinds[0] if kinds else None
