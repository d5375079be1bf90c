"""Networks with an IPv4 address pool (Ganeti's gnt-network): the record, the checks, the pool: pure.

A network is a subnet NICs are put on: it hands out addresses to them
(`ip=pool`: the lowest free one) and gives its NICs their bridge, VLAN and MAC
prefix unless the NIC says otherwise. The network and broadcast addresses and
the gateway are never handed out. IPv4 only: Ganeti's IPv6 fields are not kept.
Who holds an address is read from the instance records (and, for adds still
running, from their reservations); hostagent.model.address_key makes a second
holder impossible in etcd itself.
"""

from __future__ import annotations

import ipaddress
import re
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from hostagent.master.decide import tags as tagging
from hostagent.errors import BadRequest, Conflict

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
MAC_PREFIX_RE = re.compile(r"^[0-9a-f]{2}:[0-9a-f]{2}:[0-9a-f]{2}\Z")
BRIDGE_RE = re.compile(r"^(?!\.{1,2}\Z)[A-Za-z0-9_.-]{1,15}\Z")  # a Linux interface name (never . or ..)
MIN_PREFIX = 16  # at most 65536 addresses: the pool is listed and searched whole
MAX_PREFIX = 30  # at least two addresses to hand out
VLAN_IDS = range(1, 4095)
POOL = "pool"


def new_network(req: Mapping[str, Any], now: float) -> dict[str, Any]:
    """The record of a valid `network add` request; BadRequest naming every problem otherwise."""
    problems: list[str] = []
    name = str(req.get("name", ""))
    if not NAME_RE.match(name):
        problems.append(f"network name {name!r} is not valid: 1-64 letters, digits, '_', '.' or '-', "
                        "starting with a letter or digit")
    subnet = _subnet(req.get("subnet"), problems)
    gateway = _gateway(req.get("gateway") or "", subnet, problems)
    prefix = str(req.get("mac_prefix") or "").lower()
    if prefix and not (MAC_PREFIX_RE.match(prefix) and int(prefix[:2], 16) % 2 == 0 and prefix[:2] != "fe"):
        problems.append(f"mac prefix {prefix!r} is not three octets of a unicast MAC (e.g. aa:00:00; "
                        "the first octet even, and not fe, which the host's taps use)")
    vlan = req.get("vlan")
    if vlan is not None and (not isinstance(vlan, int) or isinstance(vlan, bool) or vlan not in VLAN_IDS):
        problems.append(f"vlan {vlan!r} is not a VLAN id (1-4094)")
    bridge = str(req.get("bridge") or "")
    if bridge and not BRIDGE_RE.match(bridge):
        problems.append(f"bridge {bridge!r} is not an interface name (1-15 letters, digits, '_', '.' or '-')")
    if vlan is not None and not bridge:
        problems.append("a VLAN tags a bridged NIC: give the network's bridge too (--bridge br0)")
    try:
        tags = tagging.checked(req.get("tags") or [], "tags")
    except BadRequest as exc:
        problems.append(str(exc))
    if problems:
        raise BadRequest("; ".join(problems))
    return {"name": name, "uuid": str(uuid.uuid4()), "subnet": str(subnet), "gateway": gateway,
            "mac_prefix": prefix, "vlan": vlan, "bridge": bridge, "tags": list(tags), "ctime": now}


def _subnet(value: Any, problems: list[str]) -> ipaddress.IPv4Network | None:
    text = str(value or "")
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        problems.append(f"subnet {text!r} is not an IPv4 network in CIDR notation (e.g. 192.0.2.0/24)")
        return None
    if not isinstance(net, ipaddress.IPv4Network):
        problems.append(f"subnet {text!r} is IPv6; Corral's networks are IPv4 only")
        return None
    if net.network_address != ipaddress.ip_interface(text).ip:
        problems.append(f"subnet {text!r} has host bits set; the network is {net}")
        return None
    if str(net) != text:
        problems.append(f"subnet {text!r}: write it in CIDR notation, {net}")
        return None
    if not MIN_PREFIX <= net.prefixlen <= MAX_PREFIX:
        problems.append(f"subnet {text!r}: give a prefix length from /{MIN_PREFIX} to /{MAX_PREFIX} "
                        f"(from {2 ** (32 - MIN_PREFIX)} down to {2 ** (32 - MAX_PREFIX)} addresses)")
        return None
    return net


def _gateway(text: str, subnet: ipaddress.IPv4Network | None, problems: list[str]) -> str:
    if not text or subnet is None:
        return text
    try:
        address = ipaddress.IPv4Address(text)
    except ValueError:
        problems.append(f"gateway {text!r} is not an IPv4 address")
        return text
    if address not in subnet or address in (subnet.network_address, subnet.broadcast_address):
        problems.append(f"gateway {text} is not a host address of {subnet} "
                        f"({subnet.network_address + 1} - {subnet.broadcast_address - 1})")
    return str(address)


def never_handed_out(net: Mapping[str, Any]) -> dict[str, str]:
    """The addresses of the subnet no NIC gets, with why."""
    subnet = ipaddress.IPv4Network(net["subnet"])
    kept = {str(subnet.network_address): "network", str(subnet.broadcast_address): "broadcast"}
    if net.get("gateway"):
        kept[net["gateway"]] = "gateway"
    return kept


def checked_address(net: Mapping[str, Any], text: str, used: Mapping[str, str]) -> str:
    """`text` as an address a NIC on `net` may take now; BadRequest/Conflict saying why not."""
    subnet = ipaddress.IPv4Network(net["subnet"])
    try:
        address = ipaddress.IPv4Address(text)
    except ValueError:
        raise BadRequest(f"ip {text!r} is not an IPv4 address (or 'pool' for the lowest free address "
                         f"of network '{net['name']}')") from None
    if address not in subnet:
        raise BadRequest(f"ip {address} is outside network '{net['name']}' ({subnet}: "
                         f"{subnet.network_address + 1} - {subnet.broadcast_address - 1})")
    kept = never_handed_out(net)
    if str(address) in kept:
        raise BadRequest(f"ip {address} is the {kept[str(address)]} address of network '{net['name']}' "
                         f"({subnet}); it is never given to a NIC")
    if str(address) in used:
        raise Conflict(f"ip {address} of network '{net['name']}' is already used by {used[str(address)]}")
    return str(address)


def allocate(net: Mapping[str, Any], used: Mapping[str, str]) -> str:
    """The lowest address of the pool no one holds; Conflict when the pool is exhausted. Walks the taken
    addresses, not the subnet: a /16 costs as little as a /30 (an agent's loop must never wait on it)."""
    ranges = _free(net, used)
    if ranges:
        return str(ranges[0][0])
    raise Conflict(f"network '{net['name']}' ({net['subnet']}) has no free address: all {pool_size(net)} "
                   f"addresses of its pool are used; remove a NIC from it or use another network")


def _free(net: Mapping[str, Any], used: Iterable[str]) -> list[tuple[ipaddress.IPv4Address, ipaddress.IPv4Address]]:
    """The free addresses as (first, last) ranges, from the sorted taken ones inside the subnet."""
    subnet = ipaddress.IPv4Network(net["subnet"])
    taken = sorted({a for a in (_address(t) for t in [*used, *never_handed_out(net)]) if a is not None and a in subnet})
    ranges = []
    start = subnet.network_address
    for address in [*taken, subnet.broadcast_address + 1]:
        if address > start:
            ranges.append((start, address - 1))
        start = max(start, address + 1)
    return ranges


def _address(text: str) -> ipaddress.IPv4Address | None:
    try:
        return ipaddress.IPv4Address(text)
    except ValueError:
        return None


def pool_size(net: Mapping[str, Any]) -> int:
    """How many addresses the network can hand out."""
    subnet = ipaddress.IPv4Network(net["subnet"])
    return subnet.num_addresses - len(never_handed_out(net))


def holders(name: str, instances: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """address -> "instance 'web1' nic 0", for every NIC on network `name` that has an address."""
    return {str(nic["ip"]): f"instance '{inst['name']}' nic {i}"
            for inst in instances for i, nic in enumerate(inst.get("nics") or [])
            if nic.get("network") == name and nic.get("ip")}


def users(name: str, instances: Iterable[Mapping[str, Any]]) -> list[str]:
    """The instances with a NIC on network `name`."""
    return sorted({str(inst["name"]) for inst in instances
                   if any(nic.get("network") == name for nic in inst.get("nics") or [])})


def free_ranges(net: Mapping[str, Any], used: Mapping[str, str]) -> list[str]:
    """The free addresses as ranges ("10.0.0.2-10.0.0.99", or one address alone)."""
    return [str(a) if a == b else f"{a}-{b}" for a, b in _free(net, used)]


def overlapping(subnet: str, others: Iterable[Mapping[str, Any]]) -> list[str]:
    """The networks (with their subnets) whose subnet shares an address with `subnet`: one address on two
    networks could be handed out twice, once by each pool."""
    mine = ipaddress.IPv4Network(subnet)
    return [f"'{n['name']}' ({n['subnet']})" for n in others if mine.overlaps(ipaddress.IPv4Network(n["subnet"]))]


def summary(net: Mapping[str, Any], used: Mapping[str, str]) -> dict[str, Any]:
    """The network as `network info` shows it: the record, who uses which address, what is free."""
    in_use = {ip: who for ip, who in used.items() if ip not in never_handed_out(net)}
    return {**net, "size": pool_size(net), "used_count": len(in_use), "free_count": pool_size(net) - len(in_use),
            "used": [{"ip": ip, "by": in_use[ip]} for ip in sorted(in_use, key=ipaddress.IPv4Address)],
            "free": free_ranges(net, in_use), "reserved": never_handed_out(net)}


def leftovers(instances: Iterable[Mapping[str, Any]], nets: Iterable[str],
              held: Mapping[str, str]) -> list[tuple[str, str, str]]:
    """What `cluster verify` reports about addresses, as (code, message, instance): a NIC on a network that no
    longer exists; a NIC's address with no record holding it (a pool could hand it out again); a record no
    NIC holds (its address is never handed out). `held`: "<network>/<ip>" -> the holding instance's uuid."""
    names = set(nets)
    by_uuid = {str(i.get("uuid")): i for i in instances}
    out: list[tuple[str, str, str]] = []
    nics_held: set[str] = set()
    for inst in instances:
        for index, nic in enumerate(inst.get("nics") or []):
            net, ip = nic.get("network"), nic.get("ip")
            if net and net not in names:
                out.append(("missing-network", f"instance '{inst['name']}': nic {index} is on network '{net}', "
                                               "which no longer exists", str(inst["name"])))
            if net and ip:
                nics_held.add(f"{net}/{ip}")
                if held.get(f"{net}/{ip}") != inst.get("uuid"):
                    out.append(("unrecorded-address", f"instance '{inst['name']}': nic {index} has ip {ip} of "
                                                      f"network '{net}' with no record holding it, so the pool "
                                                      "could hand it out again", str(inst["name"])))
    for key, owner in sorted(held.items()):
        if key not in nics_held:
            who = by_uuid.get(owner, {}).get("name")
            net, _, ip = key.partition("/")
            out.append(("stale-address", f"network '{net}': ip {ip} is held for "
                                         f"{f'instance {who!r}' if who else 'an instance that no longer exists'} "
                                         "but no NIC has it (it is never handed out)", str(who or "")))
    return out
