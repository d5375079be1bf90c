"""An instance's network cards: checked at `instance add`, changed by `instance modify --net`: pure.

A NIC is user-mode (QEMU's own NAT) or bridged (a tap on a host bridge,
optionally with a VLAN tag). On a network (hostagent.master.decide.networks) it takes the
network's bridge and VLAN unless it gives its own, a MAC under the network's
prefix, and an address from its pool (`ip=pool`) or one it names. What is
taken (MACs, addresses per network) is passed in without the instance's own
NICs, so a NIC may keep what it has.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hostagent.master.decide import networks
from hostagent.errors import BadRequest, Conflict

MAC_RE = re.compile(r"^([0-9a-f]{2}:){5}[0-9a-f]{2}\Z")
NIC_MODES = ("user", "bridged")
MAX_NICS = 8
KEYS = ("mode", "bridge", "mac", "network", "ip", "vlan")
DEFAULT_MAC_PREFIX = "52:54:00"  # QEMU's locally administered range
TAP_OCTET = "fe"  # the first octet of the host side's tap MACs (kvm.tap): never a guest's
Problems = list[str | Conflict]  # what is wrong with a request; a Conflict: something others hold is in the way


@dataclass
class Taken:
    """What other NICs hold: MACs, and per network its addresses with who holds each."""

    macs: set[str] = field(default_factory=set)
    ips: dict[str, dict[str, str]] = field(default_factory=dict)
    own: set[str] = field(default_factory=set)  # of `macs`, those of this instance's (or this request's) NICs


def build(specs: list[dict[str, Any]], nets: Mapping[str, Mapping[str, Any]], taken: Taken,
          rng: random.Random) -> list[dict[str, Any]]:
    """The NICs of a new instance from `--net` specs; BadRequest/Conflict naming every problem."""
    if len(specs) > MAX_NICS:
        raise BadRequest(f"an instance has at most {MAX_NICS} network cards, not {len(specs)}")
    problems: Problems = []
    out = [_resolved(i, spec, {}, nets, taken, rng, problems) for i, spec in enumerate(specs)]
    _raise(problems)
    return out


def changed(nics: list[dict[str, Any]], changes: list[dict[str, Any]], nets: Mapping[str, Mapping[str, Any]],
            taken: Taken, rng: random.Random) -> tuple[list[dict[str, Any]], list[str], list[dict[str, Any]]]:
    """The NICs after `instance modify --net` changes, in order, one log line per change, and the changes
    pinned: each with the MAC and address it got, so checking them again (in the job) gives the same NICs.

    A change is {"action": "add", ...keys}, {"action": "remove", "index": N} or
    {"action": "modify", "index": N, ...keys}; indexes count the NICs as they
    are when the change comes (a removal shifts those after it)."""
    new = [dict(n) for n in nics]
    lines: list[str] = []
    pinned: list[dict[str, Any]] = []
    for i, nic in enumerate(new):  # the instance's own NICs hold theirs too, until changed or removed
        taken.macs.add(nic["mac"])
        taken.own.add(nic["mac"])
        if nic.get("network") and nic.get("ip"):
            taken.ips.setdefault(nic["network"], {})[nic["ip"]] = f"nic {i} of this instance"
    problems: Problems = []
    for change in changes:
        action, params = change.get("action"), {k: v for k, v in change.items() if k not in ("action", "index")}
        if action == "add":
            nic = _resolved(len(new), params, {}, nets, taken, rng, problems)
            new.append(nic)
            lines.append(f"nic {len(new) - 1} added: {describe(nic)}")
            pinned.append({**change, "mac": nic["mac"], "ip": nic["ip"]})
            continue
        index = change.get("index")
        if action not in ("remove", "modify"):
            problems.append(f"NIC change {action!r} is not one of add, remove, modify")
        elif not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(new):
            problems.append(f"{action}: there is no nic {index!r} (the instance has "
                            f"{_count(len(new))}: 0-{len(new) - 1})" if new else
                            f"{action}: nic {index!r}: the instance has no NICs")
        elif action == "remove":
            gone = new.pop(index)
            _release(gone, taken)
            lines.append(f"nic {index} removed (was {describe(gone)})")
            pinned.append(change)
        else:
            if not params:
                problems.append(f"modify nic {index}: nothing to change (give {', '.join(KEYS)})")
                continue
            was = new[index]
            _release(was, taken)
            new[index] = _resolved(index, params, was, nets, taken, rng, problems)
            lines.append(f"nic {index}: {describe(was)} -> {describe(new[index])}")
            pinned.append({**change, "mac": new[index]["mac"], "ip": new[index]["ip"]})
    if len(new) > MAX_NICS:
        problems.append(f"an instance has at most {MAX_NICS} network cards; this would make {len(new)}")
    if not changes:
        problems.append("no NIC changes given")
    _raise(problems)
    return new, lines, pinned


@dataclass(frozen=True)
class LivePlan:
    """How NIC changes reach a running guest: the NICs to unplug (last first), then those to plug, in order."""

    unplug: tuple[int, ...]
    plug: tuple[int, ...]


def live_plan(name: str, count: int, changes: Sequence[Mapping[str, Any]], after: int) -> LivePlan:
    """The hot-plug steps for changes (as `changed` pinned them) to an instance whose QEMU has `count` NICs
    and will have `after`. QEMU's devices and taps are named by index, so a running guest may gain NICs at the
    end and lose its last ones; removing one before others, or changing one, renumbers or rewires a NIC the
    guest holds: that waits for a stop (Conflict, naming the change)."""
    held = [True] * count  # True: a NIC the guest has now; False: one these changes add
    for change in changes:
        action, index = change.get("action"), change.get("index")
        if action == "add":
            held.append(False)
        elif action == "remove" and index == len(held) - 1:
            held.pop()
        else:
            what = f"nic {index} is changed" if action == "modify" else f"nic {index} is removed while later ones stay"
            raise Conflict(f"instance '{name}' is running: {what}, which needs it stopped (a running guest only gains "
                           f"NICs at the end and loses its last one): `corral instance stop {name}`, modify it, "
                           "then start it")
    kept = held.index(False) if False in held else len(held)
    return LivePlan(unplug=tuple(range(count - 1, kept - 1, -1)), plug=tuple(range(kept, after)))


def describe(nic: Mapping[str, Any]) -> str:
    """One NIC in operator words: 'bridged on br0 vlan 10, network 'lan' ip 10.0.0.2, mac 52:54:00:..'."""
    words = "user-mode" if nic.get("mode") == "user" else f"bridged on {nic.get('bridge')}"
    if nic.get("vlan"):
        words += f" vlan {nic['vlan']}"
    if nic.get("network"):
        words += f", network '{nic['network']}'" + (f" ip {nic['ip']}" if nic.get("ip") else " (no address)")
    return f"{words}, mac {nic['mac']}"


def taken_by_others(records: Sequence[Mapping[str, Any]], name: str, in_flight: Mapping[str, Mapping[str, str]]) -> Taken:
    """What the NICs of every instance but `name` hold, plus addresses reserved by jobs still running."""
    others = [r for r in records if r["name"] != name]
    ips: dict[str, dict[str, str]] = {net: dict(held) for net, held in in_flight.items()}
    for inst in others:
        for i, nic in enumerate(inst.get("nics") or []):
            if nic.get("network") and nic.get("ip"):
                ips.setdefault(nic["network"], {})[nic["ip"]] = f"instance '{inst['name']}' nic {i}"
    return Taken(macs={nic["mac"] for r in others for nic in r.get("nics") or []}, ips=ips)


def new_mac(used: set[str], rng: random.Random, prefix: str = DEFAULT_MAC_PREFIX) -> str:
    """A free address under `prefix` (three octets)."""
    for _ in range(1000):
        mac = prefix + ":%02x:%02x:%02x" % (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        if mac not in used:
            return mac
    raise Conflict(f"could not find a free MAC address in {prefix}:00:00:00/24")


def _resolved(index: int, spec: Mapping[str, Any], was: Mapping[str, Any], nets: Mapping[str, Mapping[str, Any]],
              taken: Taken, rng: random.Random, problems: Problems) -> dict[str, Any]:
    """One NIC: `was` (empty for a new one) with `spec` applied, checked; what it takes is added to `taken`."""
    where = f"nic {index}"
    unknown = sorted(set(spec) - set(KEYS))
    if unknown:
        problems.append(f"{where}: unknown key {', '.join(unknown)} (keys: {', '.join(KEYS)})")
    net_name = str(spec["network"] if "network" in spec else was.get("network") or "")
    net = nets.get(net_name) if net_name else None
    if net_name and net is None:
        problems.append(f"{where}: no network named {net_name!r} (networks: {', '.join(sorted(nets)) or 'none'}; "
                        "`corral network add`)")
    moved = net_name != (was.get("network") or "")
    inherit: Mapping[str, Any] = (net or {}) if (moved or not was) else {}
    for key in ("bridge", "vlan"):  # the network's own: a NIC on it may not step onto another bridge or VLAN
        if net is not None and net.get(key) is not None and net.get(key) != "" and key in spec \
                and spec[key] != net[key]:
            problems.append(f"{where}: network '{net_name}' puts its NICs on {key} {net[key]}; a NIC on it takes "
                            f"that {key} (give {key}= only to a NIC on no network)")
    if net is not None and moved and was.get("bridge") and not net.get("bridge") and "bridge" not in spec \
            and spec.get("mode") != "user":
        problems.append(f"{where}: network '{net_name}' sets no bridge and the NIC would stay on bridge "
                        f"{was['bridge']} outside its VLAN: give bridge=BR (or mode=user) with the move")
    bridge = str(spec.get("bridge", inherit.get("bridge") or was.get("bridge") or ""))
    if spec.get("mode"):
        mode = str(spec["mode"])
    elif spec.get("bridge") or inherit.get("bridge"):
        mode = "bridged"
    else:
        mode = str(was.get("mode") or "user")
    vlan = spec["vlan"] if "vlan" in spec else (inherit.get("vlan") if inherit else was.get("vlan"))
    if vlan in ("", "none"):
        vlan = None
    if mode not in NIC_MODES:
        problems.append(f"{where}: mode {mode!r} is not one of {', '.join(NIC_MODES)}")
    if mode == "bridged" and not bridge:
        problems.append(f"{where}: mode bridged needs a bridge, e.g. --net mode=bridged,bridge=br0")
    elif bridge and not networks.BRIDGE_RE.match(bridge):
        problems.append(f"{where}: bridge {bridge!r} is not an interface name (1-15 letters, digits, '_', '.' or '-')")
    if mode == "user":
        bridge = ""
    if vlan is not None:
        if not isinstance(vlan, int) or isinstance(vlan, bool) or vlan not in networks.VLAN_IDS:
            problems.append(f"{where}: vlan {vlan!r} is not a VLAN id (1-4094)")
        elif mode != "bridged":
            problems.append(f"{where}: a VLAN tag needs a bridged NIC (mode=bridged,bridge=BR,vlan={vlan})")
    mac = _mac(where, str(spec.get("mac", was.get("mac") or "")).lower(), net, taken, rng, problems)
    ip = _ip(where, spec, was, net_name, net, moved, taken, problems)
    nic = {"mac": mac, "mode": mode, "bridge": bridge, "network": net_name if net else "", "ip": ip,
           "vlan": vlan if mode == "bridged" else None}
    return nic


def _mac(where: str, mac: str, net: Mapping[str, Any] | None, taken: Taken, rng: random.Random,
         problems: Problems) -> str:
    if not mac:
        mac = new_mac(taken.macs, rng, (net or {}).get("mac_prefix") or DEFAULT_MAC_PREFIX)
    elif not (MAC_RE.match(mac) and int(mac[:2], 16) % 2 == 0):
        problems.append(f"{where}: {mac!r} is not a unicast MAC address (e.g. 52:54:00:12:34:56; "
                        "the first octet even)")
    elif mac == "00:00:00:00:00:00" or mac.startswith(f"{TAP_OCTET}:"):
        problems.append(f"{where}: MAC {mac} is not for a guest (all zero, or starting with {TAP_OCTET}:, which "
                        "the host's taps use); e.g. 52:54:00:12:34:56")
    elif mac in taken.macs:
        holder = "another NIC of this instance" if mac in taken.own else "another instance's NIC"
        problems.append(Conflict(f"{where}: MAC address {mac} is already used by {holder}"))
    taken.macs.add(mac)
    taken.own.add(mac)
    return mac


def _ip(where: str, spec: Mapping[str, Any], was: Mapping[str, Any], net_name: str,
        net: Mapping[str, Any] | None, moved: bool, taken: Taken, problems: Problems) -> str:
    """The NIC's address: asked for, kept, or (moving a NIC that had one to another network) from the pool."""
    if "ip" in spec:
        wanted = str(spec["ip"] or "")
    elif moved:
        wanted = networks.POOL if was.get("ip") and net_name else ""
    else:
        wanted = str(was.get("ip") or "")
    if wanted in ("", "none"):
        return ""
    if not net_name:
        problems.append(f"{where}: ip={wanted} needs a network (network=NAME,ip={wanted}): addresses come from a "
                        "network's pool (`corral network list`)")
        return ""
    if net is None:
        return ""
    held = taken.ips.setdefault(net_name, {})
    try:
        ip = networks.allocate(net, held) if wanted == networks.POOL else networks.checked_address(net, wanted, held)
    except BadRequest as exc:
        problems.append(f"{where}: {exc}")
        return ""
    except Conflict as exc:
        problems.append(Conflict(f"{where}: {exc}"))
        return ""
    held[ip] = "another NIC of this request"
    return ip


def _release(nic: Mapping[str, Any], taken: Taken) -> None:
    taken.macs.discard(nic["mac"])
    taken.own.discard(nic["mac"])
    if nic.get("network") and nic.get("ip"):
        taken.ips.get(nic["network"], {}).pop(nic["ip"], None)


def _count(n: int) -> str:
    return f"{n} NIC" + ("" if n == 1 else "s")


def _raise(problems: Problems) -> None:
    """Conflict when only what others hold is in the way (a used MAC or address, an exhausted pool)."""
    if problems:
        words = "; ".join(str(p) for p in problems)
        raise Conflict(words) if all(isinstance(p, Conflict) for p in problems) else BadRequest(words)
