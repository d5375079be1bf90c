"""Submit-time checks of `instance add` and `instance modify`: pure, so every refusal is unit-tested.

Given the request and what the config says (cluster defaults, nodes, their
reports, MACs in use, the other instances), either build the instance record
or refuse with every problem at once. Nothing here reads etcd or the clock.

Over 400 lines: `instance add` and `instance modify` check each field with the same rule, written once.
"""

from __future__ import annotations

import posixpath
import random
import re
import string
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kvm.hvparams import HvParamError, HvParams, kernel_path_problems, parse_hvparams

from hostagent import model
from hostagent.master.decide import backup_schedule, nics, policy, tags
from hostagent.node.bootpattern import BootPattern, BootPatternError
from hostagent.errors import BadRequest, Conflict
from hostagent.master.decide.placement import Placement, PlacementError, Request, check_manual, place
from hostagent.master.decide.restarts import PRIORITIES
from hostagent.units import SizeError, parse_mib

NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?\Z")
DISK_TEMPLATES = ("file", "mirror", "plain", "drbd")
# Ports per replicated instance: disk i uses port_base + i, the live migration the last one.
PORTS_PER_INSTANCE = 8
MAX_MIRROR_DISKS = PORTS_PER_INSTANCE - 1
MAX_DISKS = 16  # per instance: a guest's bus and a node's files stay manageable
MAX_VCPUS = 255
# OS variants and parameter names become file names and environment variable names of the OS scripts
# (Ganeti OS API 20: OS_VARIANT, OSP_<NAME>); their values reach scripts that may use them in a shell.
OS_VARIANT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
OS_PARAM_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}\Z")
OS_PARAM_VALUE_RE = re.compile(r"^[A-Za-z0-9 ._,:/=+@%-]*\Z")
OS_PARAM_VALUE_WORDS = "letters, digits, spaces and . _ , : / = + @ % -"
OS_PARAM_MAX_CHARS = 1024
MAX_OS_PARAMS = 32
REPLICATION_PORTS = range(11000, 13000, PORTS_PER_INSTANCE)
DISK_FORMATS = ("raw", "qcow2")
LV_NAME_RE = re.compile(r"^[A-Za-z0-9+_.][A-Za-z0-9+_.-]{0,126}\Z")  # LVM's rule for an LV name (to adopt)
BOOT_TIMEOUT_MAX_S = 3600.0
BOOT_PATTERN_MAX_CHARS = 500
# What `instance modify` may change (placement and disks have their own commands). Memory, vcpus and
# hvparams of a running instance wait for its next start (hostagent.master.pending); osparams serve its next install;
# nics (a list of changes) are checked against the networks and what others hold by hostagent.master.decide.nics.changed.
MODIFIABLE = ("priority", "after", "boot_pattern", "boot_timeout_s", "auto_failover", "memory", "vcpus",
              "hvparams", "osparams", "owner", "description", "nics", "cdrom", "backup_schedule", "backup_keep",
              "backup_to")
OWNER_MAX_CHARS = 128
DESCRIPTION_MAX_CHARS = 1024


@dataclass(frozen=True)
class ClusterView:
    """What the master knows when it checks a request."""

    cluster_hv: dict[str, Any]
    nodes: dict[str, dict[str, Any]]
    reports: dict[str, dict[str, Any]]
    instances: set[str]
    used_macs: set[str]
    records: tuple[dict[str, Any], ...] = ()  # the instances themselves, for placement and ports
    defaults: Mapping[str, Any] = field(default_factory=dict)  # memory_mib, vcpus new instances inherit
    networks: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # hostagent.master.decide.networks records
    used_ips: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # network -> address -> who holds it
    # LVs to adopt, as the primary node judged them (hostagent.node.adoption): name -> size_mib, problem
    adoptable: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def taken(self) -> nics.Taken:
        """MACs and addresses held by every instance (and by jobs still adding one)."""
        return nics.Taken(macs=set(self.used_macs), ips={k: dict(v) for k, v in self.used_ips.items()})


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
    enabled = view.defaults.get("enabled_disk_templates") or DISK_TEMPLATES
    if template not in DISK_TEMPLATES:
        problems.append(f"disk template {template!r} is not available; use one of: {', '.join(DISK_TEMPLATES)}")
    elif template not in enabled:
        problems.append(f"disk template {template!r} is not enabled in this cluster (enabled: {', '.join(enabled)}; "
                        "`cluster modify --disk-templates`)")
    memory = _size(req.get("memory", view.defaults.get("memory_mib", 512)), "memory", problems)
    vcpus = _vcpus(req.get("vcpus", view.defaults.get("vcpus", 1)), problems)
    priority = req.get("priority", "normal")
    if priority not in PRIORITIES:
        problems.append(f"priority {priority!r} is not one of {', '.join(PRIORITIES)}")
    after = _after(name, req.get("after") or [], view.instances, {r["name"]: r for r in view.records}, problems)
    adopt = adopted(req)
    if adopt:
        problems += _adoption_problems(req, template, view.adoptable)
    disks = _disks(req.get("disks") or [{"size": "1G"}], problems, view.adoptable)
    clash: Conflict | None = None
    nic_list: list[dict[str, Any]] = []
    try:
        nic_list = nics.build(req.get("nics") or [{"mode": "user"}], view.networks, view.taken(),
                              rng or random.SystemRandom())
    except BadRequest as exc:
        problems.append(str(exc))
    except Conflict as exc:
        clash = exc
    serial_console = True
    hv: HvParams | None = None
    if not isinstance(req.get("hvparams", {}), dict):
        problems.append(f"hvparams: {req.get('hvparams')!r} is not an object of NAME: VALUE (e.g. accel=tcg)")
    else:
        try:
            hv = parse_hvparams(req.get("hvparams", {}), parse_hvparams(view.cluster_hv))
            serial_console = hv.serial_console
        except HvParamError as exc:
            problems.extend(exc.problems)
    os_name, osparams = _os_request(req.get("os"), req.get("osparams", {}), problems)
    boot_pattern = _boot_pattern(req.get("boot_pattern") or "", serial_console, problems)
    boot_timeout = _boot_timeout(req.get("boot_timeout_s"), boot_pattern, problems)
    auto_failover = _auto_failover(req.get("auto_failover"), template, problems)
    owner = _text("owner", req.get("owner", ""), OWNER_MAX_CHARS, problems)
    if not owner and view.defaults.get("require_owner"):
        problems.append("owner: this cluster requires an owner for every instance (--owner NAME; "
                        "`cluster modify --require-owner no` lifts it)")
    description = _text("description", req.get("description", ""), DESCRIPTION_MAX_CHARS, problems)
    cd = None if req.get("cdrom") is None else cdrom_requested(req["cdrom"], problems)
    try:
        instance_tags = tags.checked(req.get("tags") or [], "tags")
    except BadRequest as exc:
        problems.append(str(exc))
        instance_tags = []
    primary, _, secondary = str(req.get("node") or "").partition(":")
    if primary:
        problems += _node_problems(primary, os_name, osparams, hv, view)
    placed = None
    if not primary or primary in view.nodes:  # an unknown node is already reported
        placed = _place(name, req, template, memory, [d for d in disks if d.index not in adopt], primary,
                        secondary, view, now, problems)
    if placed is not None and not primary:
        problems += _node_problems(placed.primary, os_name, osparams, hv, view)
    problems += policy.violations(memory, vcpus, [d.size_mib for d in disks], view.defaults.get("policy") or {})
    if template in model.ON_LVM:
        problems += [f"disk {d.index}: a {template} disk is a logical volume, which holds raw data only, "
                     f"not {d.format}" for d in disks if d.format != "raw"]
    if template in model.REPLICATED and len(disks) > MAX_MIRROR_DISKS:
        problems.append(f"a {template} instance has at most {MAX_MIRROR_DISKS} disks, not {len(disks)}")
    if problems or placed is None:
        raise BadRequest("; ".join(problems))
    if clash is not None:
        raise clash
    port_base = _port_base(template, view)
    return model.Instance(name=name, uuid=str(uuid.uuid4()), os=os_name, disk_template=template,
                          memory_mib=memory, vcpus=vcpus, primary_node=placed.primary,
                          secondary_node=placed.secondary, port_base=port_base,
                          drbd=drbd_slots(port_base, [d.size_mib for d in disks], rng) if template == "drbd" else [],
                          disks=disks, nics=[model.Nic(**n) for n in nic_list], priority=priority, after=after,
                          boot_pattern=boot_pattern, boot_timeout_s=boot_timeout, auto_failover=auto_failover,
                          hvparams=dict(req.get("hvparams", {})), osparams=osparams,
                          owner=owner, description=description, tags=instance_tags, cdrom=cd,
                          admin_state="down", ctime=now, mtime=now)


def check_modify(inst: Mapping[str, Any], req: Mapping[str, Any], records: tuple[Mapping[str, Any], ...],
                 cluster_hv: Mapping[str, Any]) -> dict[str, Any]:
    """The instance record with the changes of an `instance modify` request; BadRequest otherwise.

    `req` holds only what changes: priority, after (a list; [] for none),
    boot_pattern ("" clears the check, and its timeout), boot_timeout_s,
    auto_failover (true, false, or null for the cluster's default), the
    backup schedule, keep count and target (hostagent.master.decide.backup_schedule)."""
    name = str(inst["name"])
    unknown = sorted(set(req) - set(MODIFIABLE))
    if unknown:
        raise BadRequest(f"cannot modify {', '.join(unknown)} of an instance; `instance modify` changes "
                         f"{', '.join(MODIFIABLE)}")
    if not req:
        raise BadRequest(f"nothing to change for instance '{name}': give one of {', '.join(MODIFIABLE)}")
    problems: list[str] = []
    new = dict(inst)
    if "priority" in req:
        new["priority"] = req["priority"]
        if req["priority"] not in PRIORITIES:
            problems.append(f"priority {req['priority']!r} is not one of {', '.join(PRIORITIES)}")
    if "after" in req:
        by_name = {str(r["name"]): r for r in records}
        new["after"] = _after(name, req["after"], set(by_name), by_name, problems)
    if "boot_pattern" in req or "boot_timeout_s" in req:
        serial_console = True
        try:
            serial_console = parse_hvparams(inst.get("hvparams", {}), parse_hvparams(cluster_hv)).serial_console
        except HvParamError as exc:
            problems.extend(exc.problems)
        pattern = req["boot_pattern"] if "boot_pattern" in req else inst.get("boot_pattern", "")
        new["boot_pattern"] = _boot_pattern(pattern, serial_console, problems)
        # A cleared pattern takes its timeout along; a new pattern keeps the timeout set before.
        if "boot_timeout_s" in req:
            timeout = req["boot_timeout_s"]
        else:
            timeout = (inst.get("boot_timeout_s") or None) if new["boot_pattern"] else None
        new["boot_timeout_s"] = _boot_timeout(timeout, new["boot_pattern"], problems)
    if "auto_failover" in req:
        new["auto_failover"] = _auto_failover(req["auto_failover"], str(inst.get("disk_template")), problems)
    if "memory" in req:
        new["memory_mib"] = _size(req["memory"], "memory", problems)
    if "vcpus" in req:
        new["vcpus"] = _vcpus(req["vcpus"], problems)
    if "hvparams" in req:
        new["hvparams"] = _merged("hvparams", inst.get("hvparams") or {}, req["hvparams"], problems)
        try:
            parse_hvparams(new["hvparams"], parse_hvparams(cluster_hv))
        except HvParamError as exc:
            problems.extend(exc.problems)
    if "owner" in req:
        new["owner"] = _text("owner", req["owner"], OWNER_MAX_CHARS, problems)
    if "cdrom" in req:  # a path, or none: the drive stays, empty (hostagent.master.cdrom)
        wanted = cdrom_requested(req["cdrom"], problems)
        if wanted or inst.get("cdrom") is not None:  # none to an instance with no drive: nothing to eject
            new["cdrom"] = wanted
    if "description" in req:
        new["description"] = _text("description", req["description"], DESCRIPTION_MAX_CHARS, problems)
    if "osparams" in req:
        merged = _merged("osparams", inst.get("osparams") or {}, req["osparams"], problems)
        new["osparams"] = _os_request(str(inst.get("os", "")), merged, problems)[1]
    new.update(backup_schedule.check_modify(req, problems))  # backup_schedule, backup_keep, backup_to
    if problems:
        raise BadRequest("; ".join(problems))
    return new


def _text(what: str, value: Any, limit: int, problems: list[str]) -> str:
    """Free text for people (an owner, a description): one line, printable, bounded."""
    if not isinstance(value, str) or len(value) > limit or not value.isprintable():
        problems.append(f"{what}: {str(value)[:60]!r} is not accepted: one line of printable text, "
                        f"at most {limit} characters")
        return ""
    return value.strip()


def _vcpus(value: Any, problems: list[str]) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_VCPUS:
        problems.append(f"vcpus: {value!r} is not a number of virtual CPUs (1-{MAX_VCPUS})")
        return 1
    return value


def _merged(what: str, current: Mapping[str, Any], changes: Any, problems: list[str]) -> dict[str, Any]:
    """`current` with `changes` made: a value of null removes the name (back to the cluster's default)."""
    if not isinstance(changes, dict):
        problems.append(f"{what}: {changes!r} is not an object of NAME: VALUE (null removes NAME)")
        return dict(current)
    merged = dict(current)
    for key, value in changes.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged


def check_new_name(name: str, instances: set[str]) -> None:
    """A name an instance may take now: valid, and no instance has it (BadRequest / Conflict)."""
    if not NAME_RE.match(name):
        raise BadRequest(f"instance name {name!r} is not valid: use lower-case letters, digits, '-' and '.'")
    if name in instances:
        raise Conflict(f"an instance named '{name}' already exists")


def check_reinstall(inst: Mapping[str, Any], params: Mapping[str, Any], view: ClusterView) -> dict[str, Any]:
    """The instance record as a reinstall leaves it (its OS and OS parameters); BadRequest otherwise."""
    problems: list[str] = []
    if params.get("yes") is not True:
        problems.append(f"reinstalling '{inst['name']}' destroys the content of its disks: confirm with --yes "
                        "(\"yes\": true)")
    os_name = params.get("os") or inst["os"]
    osparams = params.get("osparams") if params.get("osparams") is not None else (inst.get("osparams") or {})
    os_name, osparams = _os_request(os_name, osparams, problems)
    hv = None
    try:
        hv = parse_hvparams(inst.get("hvparams") or {}, parse_hvparams(view.cluster_hv))
    except HvParamError as exc:
        problems.extend(exc.problems)
    if not problems:
        problems += _node_problems(str(inst["primary_node"]), os_name, osparams, hv, view)
    if problems:
        raise BadRequest("; ".join(problems))
    return {**inst, "os": os_name, "osparams": osparams}


def check_kernel(inst: Mapping[str, Any], new: Mapping[str, Any], view: ClusterView) -> None:
    """New hypervisor parameters keep kernel and initrd in the kernel directories of the instance's nodes
    (as `instance add` checks them); BadRequest naming the file and the node otherwise."""
    if new.get("hvparams") == inst.get("hvparams"):
        return
    problems: list[str] = []
    for node in filter(None, (inst.get("primary_node"), inst.get("secondary_node"))):
        report = view.reports.get(str(node), {})
        if "kernel_dirs" in report:  # reports of older agents lack them: the node checks before a start
            hv = parse_hvparams(new.get("hvparams") or {}, parse_hvparams(view.cluster_hv))
            problems += kernel_path_problems(hv, report["kernel_dirs"], f" on node '{node}'")
    if problems:
        raise BadRequest("; ".join(problems))


def check_resources(inst: Mapping[str, Any], new: Mapping[str, Any], view: ClusterView, now: float) -> list[str]:
    """Whether the instance keeps the cluster's policy, and its nodes can give it the memory it is to have:
    as a placement of it alone, its current use counted as free on its primary. Empty when it fits."""
    broken = policy.violations(int(new["memory_mib"]), int(new.get("vcpus", 1)),
                               [int(d["size_mib"]) for d in new.get("disks") or []], view.defaults.get("policy") or {})
    changed = (new["memory_mib"], new.get("vcpus")) != (inst["memory_mib"], inst.get("vcpus"))
    if changed and broken:
        return broken
    if int(new["memory_mib"]) <= int(inst["memory_mib"]):
        return []
    others = [r for r in view.records if r["name"] != inst["name"]]
    reports = {n: dict(r) for n, r in view.reports.items()}
    primary = str(inst["primary_node"])
    if primary in reports:
        reports[primary]["memory_free_mib"] = int(reports[primary].get("memory_free_mib", 0)) + int(inst["memory_mib"])
    template = str(inst.get("disk_template"))
    request = Request(memory_mib=int(new["memory_mib"]), disk_mib=0, replicated=template in model.REPLICATED)
    try:
        check_manual(str(inst["name"]), request, primary, inst.get("secondary_node"), view.nodes, reports,
                     others + [{**new, "memory_mib": 0}], now)
    except PlacementError as exc:
        return [str(exc)]
    return []


def _after(name: str, after: Any, names: set[str], records: Mapping[str, Mapping[str, Any]],
           problems: list[str]) -> list[str]:
    """`after` checked: instances that exist, not `name` itself, and no chain that leads back to `name`."""
    if not isinstance(after, list) or not all(isinstance(a, str) and NAME_RE.match(a) for a in after):
        problems.append(f"after: {after!r} is not a list of instance names (--after db1 --after db2)")
        return []
    if name in after:
        problems.append(f"instance '{name}' cannot start after itself")
        return list(after)
    missing = [a for a in after if a not in names]
    if missing:
        problems.append(f"after: no instance named {', '.join(repr(m) for m in missing)} "
                        f"(instances: {', '.join(sorted(names)) or 'none'})")
    cycle = _cycle(name, after, records)
    if cycle:
        problems.append(f"after: {' -> '.join(cycle)} is a cycle: each would wait for the next forever; "
                        "drop one of these links")
    return list(dict.fromkeys(after))


def _cycle(name: str, after: list[str], records: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The chain of `after` links from `name` back to itself, e.g. [web, app, db, web]; [] if none."""
    stack = [[name, a] for a in reversed(after)]
    seen: set[str] = set()
    while stack:
        path = stack.pop()
        if path[-1] == name:
            return path
        if path[-1] in seen:
            continue
        seen.add(path[-1])
        stack += [[*path, nxt] for nxt in reversed(records.get(path[-1], {}).get("after", []))]
    return []


def _boot_pattern(pattern: Any, serial_console: bool, problems: list[str]) -> str:
    """A regex that one console line of a good boot matches ("": no boot check)."""
    if not isinstance(pattern, str):
        problems.append(f"boot pattern {pattern!r} is not a string (a regular expression, e.g. 'login:')")
        return ""
    if not pattern:
        return ""
    if len(pattern) > BOOT_PATTERN_MAX_CHARS:
        problems.append(f"boot pattern is {len(pattern)} characters long; at most {BOOT_PATTERN_MAX_CHARS}")
        return pattern
    try:
        regex = BootPattern(pattern)
    except BootPatternError as exc:
        problems.append(f"boot pattern {pattern!r} is not an RE2 regular expression ({exc}; no backreferences "
                        "or lookaround); give e.g. 'login:' or 'CORRAL-GUEST-BOOTED count=[0-9]+'")
        return pattern
    if regex.search(""):
        problems.append(f"boot pattern {pattern!r} matches an empty line, so every boot would pass at once; "
                        "give text the guest prints once it is up, e.g. 'login:'")
    if not serial_console:
        problems.append("a boot pattern is matched against the serial console, which the instance's "
                        "hvparams turn off: set serial_console=yes or give no pattern")
    return pattern


def _boot_timeout(value: Any, pattern: str, problems: list[str]) -> float:
    """Seconds a boot may take to print the pattern; 0.0 (the default) when not given."""
    if value is None:
        return 0.0
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value <= BOOT_TIMEOUT_MAX_S:
        problems.append(f"boot timeout {value!r} is not a number of seconds above 0 and at most "
                        f"{BOOT_TIMEOUT_MAX_S:.0f}")
        return 0.0
    if not pattern:
        problems.append("a boot timeout needs a boot pattern (--boot-pattern REGEX): it is how long a boot "
                        "may take to print it")
    return float(value)


def _auto_failover(value: object, template: str, problems: list[str]) -> bool | None:
    """True, False, or None for the cluster's default."""
    if value is not None and not isinstance(value, bool):
        problems.append(f"auto failover {value!r} is not true, false or null (the cluster's default)")
        return None
    if value and template not in model.REPLICATED:
        problems.append(f"auto failover needs a replicated disk template ({', '.join(t for t in model.REPLICATED if t in DISK_TEMPLATES)}); "
                        f"a '{template}' instance has no copy on another node to fail over to")
    return value


def _size(value: Any, what: str, problems: list[str]) -> int:
    try:
        return parse_mib(value, what)
    except SizeError as exc:
        problems.append(str(exc))
        return 0


def _disks(specs: list[dict[str, Any]], problems: list[str],
           adoptable: Mapping[str, Mapping[str, Any]]) -> list[model.Disk]:
    """The disks asked for; an adopted one is as big as its LV (`adoptable`, the node's answer)."""
    disks: list[model.Disk] = []
    if len(specs) > MAX_DISKS:
        problems.append(f"an instance has at most {MAX_DISKS} disks, not {len(specs)}")
        return disks
    for i, disk in enumerate(specs):
        fmt = disk.get("format", "raw")
        if fmt not in DISK_FORMATS:
            problems.append(f"disk {i}: format {fmt!r} is not one of {', '.join(DISK_FORMATS)}")
        if disk.get("adopt"):
            size = int((adoptable.get(str(disk["adopt"])) or {}).get("size_mib") or 0)
        else:
            size = _size(disk.get("size", ""), f"disk {i} size", problems)
        disks.append(model.Disk(i, size, fmt, str(uuid.uuid4())))
    return disks


def adopted(req: Mapping[str, Any]) -> dict[int, str]:
    """Disk index -> the LV it adopts, of an `instance add` request (`--disk adopt=NAME`)."""
    specs = req.get("disks") or []
    return {i: str(d["adopt"]) for i, d in enumerate(specs) if isinstance(d, Mapping) and d.get("adopt")}


def _adoption_problems(req: Mapping[str, Any], template: str, adoptable: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Ganeti's rules for adopting LVs: the plain template, a primary node named (the LVs are there), every disk
    adopted (an instance is either made or taken over, not both), no size (the LV's is taken), each LV once;
    then what the node said of each LV (missing, a Corral disk already, open)."""
    specs = [d if isinstance(d, Mapping) else {} for d in req.get("disks") or []]
    adopt = adopted(req)
    problems = []
    if template != "plain":
        problems.append(f"adopt: only plain disks adopt existing logical volumes, not {template} (-t plain)")
    node = str(req.get("node") or "")
    if not node or ":" in node:
        problems.append("adopt: name the node whose volume group holds the LVs (--node NODE)")
    if len(adopt) != len(specs):
        problems.append("adopt: either every disk adopts an LV or none does (give --disk adopt=NAME for each)")
    for i, lv in sorted(adopt.items()):
        if "size" in specs[i]:
            problems.append(f"disk {i}: an adopted disk takes its LV's size; give adopt={lv} without a size")
        if "/" in lv:
            problems.append(f"disk {i}: adopt={lv!r}: give the LV's name in the node's volume group, without the "
                            "group (e.g. adopt=web-root)")
        elif lv in (".", "..") or not LV_NAME_RE.match(lv):
            problems.append(f"disk {i}: adopt={lv!r}: an LV name is 1-127 letters, digits, '+', '_', '.' and '-', "
                            "not starting with '-'")
        elif list(adopt.values()).count(lv) > 1:
            problems.append(f"disk {i}: LV {lv!r} is adopted by more than one disk")
        elif not problems and lv not in adoptable:
            problems.append(f"disk {i}: LV {lv!r} was not checked on the node")
        elif (adoptable.get(lv) or {}).get("problem"):
            problems.append(f"disk {i}: {adoptable[lv]['problem']}")
    return list(dict.fromkeys(problems))


def _node_problems(node: str, os_name: str, osparams: dict[str, str], hv: HvParams | None,
                   view: ClusterView) -> list[str]:
    """What `node` lacks for the request: the OS, its variant and parameters, the kernel's directory."""
    if node not in view.nodes:
        usable = ", ".join(sorted(view.nodes)) or "none"
        return [f"node {node!r} is not in the cluster (nodes: {usable})" if node
                else "no node can take new instances (all drained or offline)"]
    problems: list[str] = []
    report = view.reports.get(node, {})
    known = report.get("os", {})
    base, _, variant = os_name.partition("+")
    if not os_name:
        problems.append("an OS is required (--os NAME; see `corral os list`)")
    elif base not in known:
        problems.append(f"OS {base!r} is not available on node '{node}' "
                        f"(available: {', '.join(sorted(known)) or 'none'}; see `corral os list`)")
    elif known[base] == "image":
        if variant:
            problems.append(f"os: '{base}' is an image, which has no variants; give --os {base}")
        if osparams:
            problems.append(f"osparams: '{base}' is an image, which takes no OS parameters "
                            f"(given: {', '.join(sorted(osparams))})")
    elif base in report.get("os_details", {}):  # reports of older agents lack the details: the node checks
        details = report["os_details"][base]
        variants, names = details.get("variants", []), details.get("parameters", [])
        if variant and variant not in variants:
            problems.append(f"os: OS '{base}' on node '{node}' has no variant {variant!r} "
                            f"(its variants.list offers: {', '.join(variants) or 'none; give the plain name'})")
        unknown = sorted(set(osparams) - set(names))
        if unknown:
            problems.append(f"osparams: OS '{base}' on node '{node}' takes no parameter "
                            f"{', '.join(repr(u) for u in unknown)} (its parameters.list names: "
                            f"{', '.join(names) or 'none'})")
    if hv is not None and "kernel_dirs" in report:  # reports of older agents lack them: the node checks
        problems += kernel_path_problems(hv, report["kernel_dirs"], f" on node '{node}'")
    return problems


def _os_request(os_name: Any, osparams: Any, problems: list[str]) -> tuple[str, dict[str, str]]:
    """`os` as NAME or NAME+VARIANT and `osparams`, checked in themselves (the node's OS is checked apart)."""
    if not isinstance(os_name, str):
        problems.append(f"os: {os_name!r} is not an OS name (NAME or NAME+VARIANT; see `corral os list`)")
        os_name = ""
    base, plus, variant = os_name.partition("+")
    if plus and not OS_VARIANT_RE.match(variant):
        problems.append(f"os: variant {variant!r} is not a variant name: 1-64 letters, digits, '_', '.' or '-', "
                        "starting with a letter or digit (the names in the OS's variants.list)")
    if not isinstance(osparams, dict):
        problems.append(f"osparams: {osparams!r} is not an object of NAME: VALUE (--os-param NAME=VALUE)")
        return os_name, {}
    if len(osparams) > MAX_OS_PARAMS:
        problems.append(f"osparams: at most {MAX_OS_PARAMS} OS parameters, not {len(osparams)}")
        return os_name, {}
    checked: dict[str, str] = {}
    for key, value in osparams.items():
        if not OS_PARAM_NAME_RE.match(key):
            problems.append(f"osparams: {key!r} is not a parameter name: 1-64 letters, digits, '_' or '-', "
                            "starting with a letter or digit (the names in the OS's parameters.list)")
        elif not isinstance(value, str):
            problems.append(f"osparams: {key}: {value!r} is not a string")
        elif len(value) > OS_PARAM_MAX_CHARS or not OS_PARAM_VALUE_RE.match(value):
            problems.append(f"osparams: {key}: {value[:80]!r} is not accepted: at most {OS_PARAM_MAX_CHARS} "
                            f"{OS_PARAM_VALUE_WORDS} (no shell characters such as ; $ ` | &, no newlines)")
        else:
            checked[key] = value
    return os_name, checked


def _place(name: str, req: dict[str, Any], template: str, memory: int, disks: list[model.Disk], primary: str,
           secondary: str, view: ClusterView, now: float, problems: list[str]) -> Placement | None:
    """`--node P[:S]` checked, or the master's choice; None (with the reason) when nothing fits."""
    need = sum(d.size_mib + (model.drbd_meta_mib(d.size_mib) if template == "drbd" else 0) for d in disks)
    want = Request(memory, need, template in model.REPLICATED, template in model.ON_LVM, template == "drbd")
    try:
        if primary:
            return check_manual(name, want, primary, secondary or None, view.nodes, view.reports, view.records, now)
        return place(name, want, view.nodes, view.reports, view.records, now)
    except PlacementError as exc:
        problems.append(str(exc))
        return None


def drbd_slots(port_base: int, sizes_mib: list[int], rng: random.Random | None = None) -> list[dict[str, Any]]:
    """Each disk's DRBD resource: its port from the instance's block (unique in the cluster, so unique on each
    node), its minor from the same number (unique on every node too), a random shared secret, and the size of
    its metadata volume."""
    pick = rng or random.SystemRandom()
    alphabet = string.ascii_letters + string.digits
    return [{"index": i, "minor": port_base - REPLICATION_PORTS.start + i, "port": port_base + i,
             "secret": "".join(pick.choice(alphabet) for _ in range(32)), "meta_mib": model.drbd_meta_mib(size)}
            for i, size in enumerate(sizes_mib)]


def _port_base(template: str, view: ClusterView) -> int:
    if template not in model.REPLICATED:
        return 0
    used = {int(r.get("port_base") or 0) for r in view.records}
    for base in REPLICATION_PORTS:
        if base not in used:
            return base
    raise Conflict(f"every replication port block ({REPLICATION_PORTS.start}-{REPLICATION_PORTS.stop - 1}) "
                   "is in use; remove replicated instances first")


def cdrom_requested(value: Any, problems: list[str]) -> str:
    """The record's `cdrom` for a requested --cdrom: an absolute path, or "" for none (eject)."""
    if isinstance(value, str) and value.lower() == "none":
        return ""
    if isinstance(value, str) and value.startswith("/") and value.endswith("/"):
        problems.append(f"cdrom {value!r} names a directory: give the ISO file in it, e.g. {value}debian-12.iso")
        return ""
    if not isinstance(value, str) or not value.startswith("/") or posixpath.normpath(value) != value \
            or value.startswith("//"):
        problems.append(f"cdrom {value!r} is not a path: give the absolute path of an ISO file on the instance's "
                        "node(s), e.g. /var/lib/corral/iso/debian-12.iso, or none to eject")
        return ""
    return value
