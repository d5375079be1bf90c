"""htools' text cluster format (`hbal -t FILE`, `hinfo -t`, `hspace -t`, `hscan` output) read and written: pure.

Why: Corral's balancer and capacity planner are measured against Ganeti's
htools on the same inputs (issue 15): `corral cluster export-htools` writes
this format, `--from-htools FILE` plans on it, and the benchmark feeds the same
files to Debian's hbal and hspace. The caller reads or writes the file; this
module turns its text into values and back.

Format facts from Ganeti 3.0.2: htools(1) (the -t option), and
src/Ganeti/HTools/Backend/Text.hs and Loader.hs, checked against the data sets
in Debian's ganeti-testsuite (test/data/htools/*.data) and its hbal/hinfo:
- Lines split on "\\n" only; single empty lines separate sections, so an empty
  section is two empty lines in a row. Sections in order: groups, nodes,
  instances, cluster tags (one per line, no columns), ipolicies. The ipolicy
  section may be missing (4 sections); sections after the fifth are ignored.
- Columns split on "|", lists (tags, networks, disk templates) on ",", an empty
  field being the empty list. Columns past the last known one are ignored;
  missing trailing columns take the defaults of the fields below (files from
  older Ganeti versions have fewer): a group needs 4 columns of 5, a node 9 of
  15, an instance 10 of 13, an ipolicy 6.
- A node with "?" in any of its six resource columns is known only by name and
  group: the tools take it as offline with no resources and no tags.
- Memory and disk are MiB. Total memory, total disk, CPUs, CPU speed and the
  two ipolicy ratios are read as floating point numbers, the rest as integers.
- An ipolicy line's owner is empty for the cluster's policy, else a group's
  name (or UUID); a group without a line of its own gets Ganeti's default
  policy (vcpu ratio 4.0, spindle ratio 32.0), not the cluster's.
This reader is a little stricter than Ganeti's: it refuses two nodes of one
name, two groups of one UUID, and node flags other than Y, N or M.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

ALLOC_POLICIES = ("preferred", "last_resort", "unallocable")
INSTANCE_STATUSES = ("ADMIN_down", "ADMIN_offline", "ERROR_down", "ERROR_up", "ERROR_nodedown",
                     "ERROR_nodeoffline", "running", "USER_down", "ERROR_wrongnode")
DISK_TEMPLATES = ("diskless", "file", "sharedfile", "plain", "blockdev", "drbd", "rbd", "ext", "gluster")
DEFAULT_VCPU_RATIO = 4.0
DEFAULT_SPINDLE_RATIO = 32.0

NODE_COLUMNS = ("name", "total memory", "node memory", "free memory", "total disk", "free disk", "cpus",
                "offline/master flag", "group uuid", "spindles", "tags", "exclusive storage", "free spindles",
                "node cpus", "cpu speed")
# What a shorter line means for the columns it lacks (Text.hs loadNode, loadInst).
NODE_DEFAULTS = ("1", "", "N", "0", "1", "1.0")
INSTANCE_COLUMNS = ("name", "memory", "disk", "vcpus", "status", "auto_balance", "primary", "secondary",
                    "disk template", "tags", "spindle use", "disk spindles", "forthcoming")
INSTANCE_DEFAULTS = ("1", "-", "N")
ISPEC_FIELDS = ("memory", "cpus", "disk", "disks", "nics", "spindle use")

_INT = re.compile(r"-?[0-9]+")
_FLOAT = re.compile(r"-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?")


@dataclass(frozen=True)
class Group:
    name: str
    uuid: str
    alloc_policy: str  # one of ALLOC_POLICIES
    tags: tuple[str, ...] = ()
    networks: tuple[str, ...] = ()  # network UUIDs


@dataclass(frozen=True)
class Node:
    """One node line. `unknown` marks a "?" in a resource column: the node is then offline with nothing (as the
    tools take it: every number 0, no tags)."""

    name: str
    total_mem_mib: float
    node_mem_mib: int  # used by the node itself
    free_mem_mib: int
    total_disk_mib: float
    free_disk_mib: int
    cpus: float  # physical cores
    offline: bool  # flag Y
    master: bool  # flag M
    group_uuid: str
    spindles: int = 1
    tags: tuple[str, ...] = ()
    exclusive_storage: bool = False
    free_spindles: int = 0
    node_cpus: int = 1  # VCPUs the node's OS uses
    cpu_speed: float = 1.0  # relative to a standard node of its group
    unknown: bool = False

    def __post_init__(self) -> None:
        if self.offline and self.master:
            raise ValueError(f"node '{self.name}': the format has one flag, offline (Y) or master (M), not both")
        if self.unknown and not self.offline:
            raise ValueError(f"node '{self.name}': a node of unknown resources is offline")


@dataclass(frozen=True)
class Instance:
    name: str
    mem_mib: int
    disk_mib: int
    vcpus: int
    status: str  # one of INSTANCE_STATUSES
    auto_balance: bool
    primary: str
    secondary: str  # "" when none
    disk_template: str  # one of DISK_TEMPLATES
    tags: tuple[str, ...] = ()
    spindle_use: int = 1
    disk_spindles: int | None = None  # "-": exclusive storage off
    forthcoming: bool = False


@dataclass(frozen=True)
class ISpec:
    memory_mib: int
    cpus: int
    disk_mib: int
    disks: int
    nics: int
    spindle_use: int


@dataclass(frozen=True)
class IPolicy:
    owner: str  # "" for the cluster, else a group's name
    std: ISpec
    min_max: tuple[tuple[ISpec, ISpec], ...]
    disk_templates: tuple[str, ...]
    vcpu_ratio: float
    spindle_ratio: float


@dataclass(frozen=True)
class HtoolsCluster:
    """A cluster as the file holds it; `ipolicies` in file order (for one owner, the last line counts)."""

    groups: tuple[Group, ...] = ()
    nodes: tuple[Node, ...] = ()
    instances: tuple[Instance, ...] = ()
    tags: tuple[str, ...] = ()
    ipolicies: tuple[IPolicy, ...] = ()

    def policy_of(self, group: Group) -> IPolicy | None:
        """The ipolicy line that applies to `group`, None when the tools' default applies."""
        found = [p for p in self.ipolicies if p.owner in (group.name, group.uuid)]
        return found[-1] if found else None


class _Line:
    """One line's columns, with what a bad column's error needs to say."""

    def __init__(self, number: int, kind: str, columns: list[str], names: tuple[str, ...]) -> None:
        self.lineno, self.kind, self.columns, self.names = number, kind, columns, names

    def fail(self, index: int, why: str) -> ValueError:
        what = self.names[index] if index < len(self.names) else f"column {index + 1}"
        return ValueError(f"line {self.lineno} ({self.kind} '{self.columns[0]}'), field {index + 1} ({what}): {why}")

    def integer(self, index: int) -> int:
        text = self.columns[index]
        if not _INT.fullmatch(text):
            raise self.fail(index, f"{text!r} is not an integer")
        return int(text)

    def number(self, index: int) -> float:
        text = self.columns[index]
        if not _FLOAT.fullmatch(text):
            raise self.fail(index, f"{text!r} is not a number")
        return float(text)

    def choice(self, index: int, allowed: tuple[str, ...]) -> str:
        if self.columns[index] not in allowed:
            raise self.fail(index, f"{self.columns[index]!r} is not one of {', '.join(allowed)}")
        return self.columns[index]

    def yes(self, index: int) -> bool:
        return self.choice(index, ("Y", "N")) == "Y"


def _split(text: str, sep: str) -> list[str]:
    """Ganeti's sepSplit: like str.split, except that an empty text is no item at all."""
    return text.split(sep) if text else []


def _sections(text: str) -> list[list[tuple[int, str]]]:
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the last line's newline ends it, it does not start another
    if not lines:
        return []
    sections: list[list[tuple[int, str]]] = [[]]
    for number, line in enumerate(lines, 1):
        if line == "":
            sections.append([])
        else:
            sections[-1].append((number, line))
    return sections


def read_text(text: str) -> HtoolsCluster:
    """The cluster in an htools text file; ValueError naming the line and the field of the first bad column."""
    sections = _sections(text)
    if len(sections) < 4:
        raise ValueError(f"{len(sections)} sections, where htools' text format has 4 or 5 separated by empty lines"
                         " (groups, nodes, instances, cluster tags, ipolicies)")
    groups = tuple(_group(_Line(n, "group", line.split("|"), ("name", "uuid", "allocation policy", "tags",
                                                                 "networks"))) for n, line in sections[0])
    uuids = [g.uuid for g in groups]
    for (number, _), group in zip(sections[0], groups):
        if uuids.count(group.uuid) > 1:
            raise ValueError(f"line {number}: group uuid '{group.uuid}' given to more than one group")
    nodes: list[Node] = []
    for number, line in sections[1]:
        node = _node(_Line(number, "node", line.split("|"), NODE_COLUMNS), set(uuids))
        if any(n.name == node.name for n in nodes):
            raise ValueError(f"line {number}: node '{node.name}' is listed twice")
        nodes.append(node)
    names = {n.name for n in nodes}
    instances = tuple(_instance(_Line(n, "instance", line.split("|"), INSTANCE_COLUMNS), names)
                      for n, line in sections[2])
    tags = tuple(line for _, line in sections[3])
    policies = tuple(_ipolicy(n, line, groups) for n, line in (sections[4] if len(sections) > 4 else []))
    return HtoolsCluster(groups, tuple(nodes), instances, tags, policies)


def _group(line: _Line) -> Group:
    if len(line.columns) < 4:
        raise ValueError(f"line {line.lineno}: a group has at least 4 fields (name|uuid|allocation policy|tags),"
                         f" this line has {len(line.columns)}")
    c = line.columns
    return Group(c[0], c[1], line.choice(2, ALLOC_POLICIES), tuple(_split(c[3], ",")),
                 tuple(_split(c[4], ",")) if len(c) > 4 else ())


def _node(line: _Line, group_uuids: set[str]) -> Node:
    if len(line.columns) < 9:
        raise ValueError(f"line {line.lineno}: a node has at least 9 fields (name|total memory|node memory|"
                         f"free memory|total disk|free disk|cpus|flag|group uuid), this line has {len(line.columns)}")
    line.columns[len(line.columns):] = NODE_DEFAULTS[len(line.columns) - 9:]
    c = line.columns
    if c[8] not in group_uuids:
        raise line.fail(8, f"no group has uuid {c[8]!r}")
    if "?" in c[1:7]:  # the tools keep only the name and the group, and read no further column
        return Node(c[0], 0.0, 0, 0, 0.0, 0, 0.0, offline=True, master=False, group_uuid=c[8], spindles=0,
                    node_cpus=0, unknown=True)
    flag = line.choice(7, ("Y", "N", "M"))
    return Node(name=c[0], total_mem_mib=line.number(1), node_mem_mib=line.integer(2), free_mem_mib=line.integer(3),
                total_disk_mib=line.number(4), free_disk_mib=line.integer(5), cpus=line.number(6),
                offline=flag == "Y", master=flag == "M", group_uuid=c[8], spindles=line.integer(9),
                tags=tuple(_split(c[10], ",")), exclusive_storage=line.yes(11), free_spindles=line.integer(12),
                node_cpus=line.integer(13), cpu_speed=line.number(14))


def _instance(line: _Line, node_names: set[str]) -> Instance:
    if len(line.columns) < 10:
        raise ValueError(f"line {line.lineno}: an instance has at least 10 fields (name|memory|disk|vcpus|status|"
                         f"auto_balance|primary|secondary|disk template|tags), this line has {len(line.columns)}")
    line.columns[len(line.columns):] = INSTANCE_DEFAULTS[len(line.columns) - 10:]
    c = line.columns
    for index in (6, 7) if c[7] else (6,):
        if c[index] not in node_names:
            raise line.fail(index, f"no node is named {c[index]!r}")
    if c[8] == "drbd" and c[6] == c[7]:
        raise line.fail(7, f"a drbd instance's secondary must differ from its primary {c[6]!r}")
    return Instance(name=c[0], mem_mib=line.integer(1), disk_mib=line.integer(2), vcpus=line.integer(3),
                    status=line.choice(4, INSTANCE_STATUSES), auto_balance=line.yes(5), primary=c[6],
                    secondary=c[7], disk_template=line.choice(8, DISK_TEMPLATES), tags=tuple(_split(c[9], ",")),
                    spindle_use=line.integer(10), disk_spindles=None if c[11] == "-" else line.integer(11),
                    forthcoming=line.yes(12))


def _ispec(number: int, owner: str, what: str, text: str) -> ISpec:
    values = _split(text, ",")
    if len(values) < 6 or not all(_INT.fullmatch(v) for v in values[:6]):
        raise ValueError(f"line {number} (ipolicy of {owner or 'the cluster'}): {what} {text!r} is not six integers"
                         f" ({','.join(ISPEC_FIELDS)})")
    return ISpec(*(int(v) for v in values[:6]))


def _ipolicy(number: int, text: str, groups: tuple[Group, ...]) -> IPolicy:
    columns = text.split("|")
    if len(columns) < 6:
        raise ValueError(f"line {number}: an ipolicy has 6 fields (owner|std spec|min;max specs|disk templates|"
                         f"vcpu ratio|spindle ratio), this line has {len(columns)}")
    owner, std, min_max, templates = columns[:4]
    line = _Line(number, "ipolicy", columns, ("owner", "std spec", "min;max specs", "disk templates", "vcpu ratio",
                                              "spindle ratio"))
    if owner and sum(owner in (g.name, g.uuid) for g in groups) != 1:
        raise line.fail(0, f"names no group (nor more than one): {owner!r}")
    specs = [_ispec(number, owner, "a min/max spec", s) for s in _split(min_max, ";")]
    if len(specs) % 2:
        raise line.fail(2, "an odd number of specs: they come in min;max pairs")
    bad = [t for t in _split(templates, ",") if t not in DISK_TEMPLATES]
    if bad:
        raise line.fail(3, f"{bad[0]!r} is not one of {', '.join(DISK_TEMPLATES)}")
    return IPolicy(owner, _ispec(number, owner, "the std spec", std), tuple(zip(specs[::2], specs[1::2])),
                   tuple(_split(templates, ",")), line.number(4), line.number(5))


def write_text(cluster: HtoolsCluster) -> str:
    """The text htools read back as `cluster`, all five sections and every column written; ValueError for what
    the format cannot hold (a "|" in a name, a "," in a tag, an empty cluster tag) or the tools would refuse."""
    sections = [
        [_row([g.name, g.uuid, g.alloc_policy, _list(g.tags, "group tag"), _list(g.networks, "network")])
         for g in cluster.groups],
        [_row([n.name, *(["?"] * 6 if n.unknown else
                         [_num(n.total_mem_mib), str(n.node_mem_mib), str(n.free_mem_mib), _num(n.total_disk_mib),
                          str(n.free_disk_mib), _num(n.cpus)]),
               "Y" if n.offline else "M" if n.master else "N", n.group_uuid, str(n.spindles),
               _list(n.tags, "node tag"), _yn(n.exclusive_storage), str(n.free_spindles), str(n.node_cpus),
               _real(n.cpu_speed)]) for n in cluster.nodes],
        [_row([i.name, str(i.mem_mib), str(i.disk_mib), str(i.vcpus), i.status, _yn(i.auto_balance), i.primary,
               i.secondary, i.disk_template, _list(i.tags, "instance tag"), str(i.spindle_use),
               "-" if i.disk_spindles is None else str(i.disk_spindles), _yn(i.forthcoming)])
         for i in cluster.instances],
        [_tag(t) for t in cluster.tags],
        [_row([p.owner, _spec(p.std), ";".join(_spec(s) for pair in p.min_max for s in pair),
               _list(p.disk_templates, "disk template"), _real(p.vcpu_ratio), _real(p.spindle_ratio)])
         for p in cluster.ipolicies],
    ]
    lines = [line for section in sections for line in ("", *section)][1:]  # one empty line between sections
    text = "\n".join(lines) + "\n"
    try:  # what the reader refuses (an unknown status, a node of no group, ...), the tools refuse too
        back = read_text(text)
    except ValueError as e:
        raise ValueError(f"the cluster cannot be written for htools: {e}") from None
    for part in ("groups", "nodes", "instances", "tags", "ipolicies"):
        for wrote, read in zip(getattr(cluster, part), getattr(back, part)):
            if wrote != read:
                raise ValueError(f"the cluster cannot be written for htools: {wrote} would read back as {read}")
    return text


def _row(columns: list[str]) -> str:
    for column in columns:
        if "|" in column or "\n" in column:
            raise ValueError(f"{column!r} cannot be written in htools' text format (a '|' or a newline in it)")
    return "|".join(columns)


def _list(items: tuple[str, ...], what: str) -> str:
    if items == ("",):
        raise ValueError(f"a single empty {what} cannot be written (it reads back as none)")
    for item in items:
        if "," in item:
            raise ValueError(f"{what} {item!r} cannot be written in htools' text format (a ',' in it)")
    return ",".join(items)


def _tag(tag: str) -> str:
    if not tag or "\n" in tag:
        raise ValueError(f"cluster tag {tag!r} cannot be written in htools' text format (empty, or a newline in it)")
    return tag


def _spec(spec: ISpec) -> str:
    return ",".join(str(v) for v in (spec.memory_mib, spec.cpus, spec.disk_mib, spec.disks, spec.nics,
                                     spec.spindle_use))


def _num(value: float) -> str:
    """Memory, disk or CPUs: "16384" rather than "16384.0" when whole."""
    if not math.isfinite(value):
        raise ValueError(f"{value!r} cannot be written in htools' text format")
    return str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)


def _real(value: float) -> str:
    """A ratio or a speed as the tools write it ("4.0")."""
    if not math.isfinite(value):
        raise ValueError(f"{value!r} cannot be written in htools' text format")
    return repr(float(value))


def _yn(flag: bool) -> str:
    return "Y" if flag else "N"
