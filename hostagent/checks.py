"""Submit-time checks of `instance add`: pure, so every refusal is unit-tested.

Given the request and what the config says (cluster defaults, nodes, their
reports, MACs in use), either build the instance record or refuse with every
problem at once. Nothing here reads etcd or the clock.
"""

from __future__ import annotations

import random
import re
import uuid
from dataclasses import dataclass
from typing import Any

from kvm.hvparams import HvParamError, parse_hvparams

from hostagent import model
from hostagent.errors import BadRequest, Conflict
from hostagent.placement import REPLICATED, Placement, PlacementError, Request, check_manual, place
from hostagent.restarts import PRIORITIES
from hostagent.units import SizeError, parse_mib

NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$")
MAC_RE = re.compile(r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$")
DISK_TEMPLATES = ("file", "mirror")
# Ports per replicated instance: disk i uses port_base + i, the live migration the last one.
PORTS_PER_INSTANCE = 8
MAX_MIRROR_DISKS = PORTS_PER_INSTANCE - 1
REPLICATION_PORTS = range(11000, 13000, PORTS_PER_INSTANCE)
DISK_FORMATS = ("raw", "qcow2")
NIC_MODES = ("user", "bridged")


@dataclass(frozen=True)
class ClusterView:
    """What the master knows when it checks a request."""

    cluster_hv: dict[str, Any]
    nodes: dict[str, dict[str, Any]]
    reports: dict[str, dict[str, Any]]
    instances: set[str]
    used_macs: set[str]
    records: tuple[dict[str, Any], ...] = ()  # the instances themselves, for placement and ports


def check_add(req: dict[str, Any], view: ClusterView, now: float,
              rng: random.Random | None = None) -> model.Instance:
    """The instance record for a valid `add` request; BadRequest/Conflict otherwise."""
    problems: list[str] = []
    name = str(req.get("name", ""))
    if not NAME_RE.match(name):
        problems.append(f"instance name {name!r} is not valid: use lower-case letters, digits, '-' and '.'")
    elif name in view.instances:
        raise Conflict(f"an instance named '{name}' already exists")
    template = req.get("disk_template", "file")
    if template not in DISK_TEMPLATES:
        problems.append(f"disk template {template!r} is not available; use one of: {', '.join(DISK_TEMPLATES)}")
    memory = _size(req.get("memory", "512M"), "memory", problems)
    vcpus = req.get("vcpus", 1)
    if not isinstance(vcpus, int) or isinstance(vcpus, bool) or not 1 <= vcpus <= 255:
        problems.append(f"vcpus: {vcpus!r} is not a number of virtual CPUs (1-255)")
    priority = req.get("priority", "normal")
    if priority not in PRIORITIES:
        problems.append(f"priority {priority!r} is not one of {', '.join(PRIORITIES)}")
    after = req.get("after") or []
    if not isinstance(after, list) or not all(isinstance(a, str) and NAME_RE.match(a) for a in after):
        problems.append(f"after: {after!r} is not a list of instance names (--after db1 --after db2)")
    elif name in after:
        problems.append(f"instance '{name}' cannot start after itself")
    disks = _disks(req.get("disks") or [{"size": "1G"}], problems)
    nics = _nics(req.get("nics") or [{"mode": "user"}], problems)
    try:
        parse_hvparams(req.get("hvparams", {}), parse_hvparams(view.cluster_hv))
    except HvParamError as exc:
        problems.extend(exc.problems)
    primary, _, secondary = str(req.get("node") or "").partition(":")
    if primary:
        problems += _node_problems(primary, req, view)
    placed = None
    if not primary or primary in view.nodes:  # an unknown node is already reported
        placed = _place(name, req, template, memory, disks, primary, secondary, view, now, problems)
    if placed is not None and not primary:
        problems += _node_problems(placed.primary, req, view)
    if template in REPLICATED and len(disks) > MAX_MIRROR_DISKS:
        problems.append(f"a {template} instance has at most {MAX_MIRROR_DISKS} disks, not {len(disks)}")
    if problems or placed is None:
        raise BadRequest("; ".join(problems))
    _assign_macs(nics, view.used_macs, rng or random.SystemRandom())
    return model.Instance(name=name, uuid=str(uuid.uuid4()), os=str(req["os"]), disk_template=template,
                          memory_mib=memory, vcpus=vcpus, primary_node=placed.primary,
                          secondary_node=placed.secondary, port_base=_port_base(template, view),
                          disks=disks, nics=nics, priority=priority, after=list(after),
                          hvparams=dict(req.get("hvparams", {})), osparams=dict(req.get("osparams", {})),
                          admin_state="down", ctime=now, mtime=now)


def _size(value: Any, what: str, problems: list[str]) -> int:
    try:
        return parse_mib(value, what)
    except SizeError as exc:
        problems.append(str(exc))
        return 0


def _disks(specs: list[dict[str, Any]], problems: list[str]) -> list[model.Disk]:
    disks = []
    for i, disk in enumerate(specs):
        fmt = disk.get("format", "raw")
        if fmt not in DISK_FORMATS:
            problems.append(f"disk {i}: format {fmt!r} is not one of {', '.join(DISK_FORMATS)}")
        disks.append(model.Disk(i, _size(disk.get("size", ""), f"disk {i} size", problems), fmt, str(uuid.uuid4())))
    return disks


def _nics(specs: list[dict[str, Any]], problems: list[str]) -> list[model.Nic]:
    nics = []
    for i, nic in enumerate(specs):
        mode = nic.get("mode", "user")
        if mode not in NIC_MODES:
            problems.append(f"nic {i}: mode {mode!r} is not one of {', '.join(NIC_MODES)}")
        if mode == "bridged" and not nic.get("bridge"):
            problems.append(f"nic {i}: mode bridged needs a bridge, e.g. --net mode=bridged,bridge=br0")
        mac = str(nic.get("mac", "")).lower()
        if mac and not (MAC_RE.match(mac) and int(mac[:2], 16) % 2 == 0):
            problems.append(f"nic {i}: {mac!r} is not a unicast MAC address (e.g. 52:54:00:12:34:56)")
        nics.append(model.Nic(mac=mac, mode=mode, bridge=nic.get("bridge", "")))
    return nics


def _node_problems(node: str, req: dict[str, Any], view: ClusterView) -> list[str]:
    if node not in view.nodes:
        usable = ", ".join(sorted(view.nodes)) or "none"
        return [f"node {node!r} is not in the cluster (nodes: {usable})" if node
                else "no node can take new instances (all drained or offline)"]
    problems = []
    report = view.reports.get(node, {})
    os_name = str(req.get("os", ""))
    known = report.get("os", {})
    if not os_name:
        problems.append("an OS is required (--os NAME; see `corral os list`)")
    elif os_name.split("+", 1)[0] not in known:
        problems.append(f"OS {os_name!r} is not available on node '{node}' "
                        f"(available: {', '.join(sorted(known)) or 'none'}; see `corral os list`)")
    return problems


def _place(name: str, req: dict[str, Any], template: str, memory: int, disks: list[model.Disk], primary: str,
           secondary: str, view: ClusterView, now: float, problems: list[str]) -> Placement | None:
    """`--node P[:S]` checked, or the master's choice; None (with the reason) when nothing fits."""
    want = Request(memory, sum(d.size_mib for d in disks), template in REPLICATED)
    try:
        if primary:
            return check_manual(name, want, primary, secondary or None, view.nodes, view.reports, view.records, now)
        return place(name, want, view.nodes, view.reports, view.records, now)
    except PlacementError as exc:
        problems.append(str(exc))
        return None


def _port_base(template: str, view: ClusterView) -> int:
    if template not in REPLICATED:
        return 0
    used = {int(r.get("port_base") or 0) for r in view.records}
    for base in REPLICATION_PORTS:
        if base not in used:
            return base
    raise Conflict(f"every replication port block ({REPLICATION_PORTS.start}-{REPLICATION_PORTS.stop - 1}) "
                   "is in use; remove replicated instances first")


def _assign_macs(nics: list[model.Nic], used: set[str], rng: random.Random) -> None:
    taken = set(used)
    for nic in nics:
        if not nic.mac:
            nic.mac = new_mac(taken, rng)
        elif nic.mac in taken:
            raise Conflict(f"MAC address {nic.mac} is already used by another instance")
        taken.add(nic.mac)


def new_mac(used: set[str], rng: random.Random) -> str:
    """A free address in QEMU's locally administered 52:54:00 range."""
    for _ in range(1000):
        mac = "52:54:00:%02x:%02x:%02x" % (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        if mac not in used:
            return mac
    raise Conflict("could not find a free MAC address in 52:54:00:00:00:00/24")
