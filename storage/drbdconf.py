"""DRBD resource files for the `drbd` template (DRBD 9, or 8.4 where the kernel's module is 8.4), and a dry run
of drbdadm.

A Corral DRBD resource joins one volume on two nodes: the data LV and its
external metadata LV on each. Everything here is pure except `dry_run`,
which asks the real drbdadm what it would do with a file, so a rendered
file is checked by the tool that will read it.

- Names: disk N of instance I is resource `corral-<I>-<N>`; instance names
  allow only letters, digits, '.', '_' and '-', so the name is safe as a
  file name (`<name>.res`) and as a drbdadm argument, and maps back to one
  (I, N) because N is the digits after the last '-'.
- Values are checked before rendering, every problem at once, because
  drbdadm's parse errors name a line of a file, not the field to fix.
- Versions: Debian's own kernels (and most distributions') carry DRBD 8.4;
  drbd-utils 9 drives an 8.4 module through its 8.4 tools, which refuse the
  DRBD 9 keywords (node-id, connection-mesh). `module_version` reads which
  one a node has from /proc/drbd; `render_resource` writes for it.
- The shared secret never appears in a repr or an error message.
- Local node: drbdadm picks the `on <host>` section whose name equals the
  machine's hostname. drbd-utils 9.22 has no option for another name, but
  honours the environment variable `__DRBD_NODE__` ("PRETENDING that I am
  ..."), which `dry_run(node=...)` sets so that several agents on one
  machine, and tests, can each be their own node.

Errors, all StorageError:

    InvalidDrbdResource      a value cannot be rendered (ValueError; problems by field)
    InvalidName              instance name too long for a resource name
    InvalidDiskSpec          negative disk index
    InvalidPortRange         port range empty or outside 1..65535 (ValueError)
    AllocationExhausted      no minor or port left
    DrbdadmFailed            drbdadm refused the configuration (its messages)
    CommandTimeout / CommandNotStarted   from storage.runner
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import shlex
import string
from dataclasses import dataclass

from storage import runner
from storage.base import check_disk
from storage.errors import CommandError, InvalidName, StorageError

RESOURCE_PREFIX = "corral-"
MINOR_MAX = (1 << 20) - 1  # DRBD minors are 20-bit
NODE_ID_MAX = 31  # DRBD 9 has at most 32 nodes per resource
PORT_LOW = 11000
PORT_HIGH = 11999
PROTOCOLS = ("A", "B", "C")
VERSIONS = ("8.4", "9")  # the resource file dialects: DRBD 8.4's and DRBD 9's
_MODULE_VERSION_RE = re.compile(r"^version: (\d+)\.(\d+)\.", re.MULTILINE)
SECRET_LENGTH = 32
SECRET_MAX = 64  # DRBD's shared-secret limit
_SECRET_ALPHABET = string.ascii_letters + string.digits
# DRBD's netlink resource name holds 128 bytes including the final NUL.
_RESOURCE_NAME_MAX = 127
_RESOURCE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_NODE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")
_PATH_RE = re.compile(r"/[A-Za-z0-9._+=/-]+")
# drbdadm noise on stderr that says nothing about the configuration.
_NOISE_RE = re.compile(
    r"^\s*\.?\s*$|^\s*found __DRBD_NODE__ in environment|^\s*PRETENDING that I am|^modinfo: "
)
_SECRET_IN_TEXT_RE = re.compile(r"(shared-secret[= ]+)\S+")
_DRY_RUN_TIMEOUT_S = 30.0


class InvalidDrbdResource(StorageError, ValueError):
    """A resource cannot be written as a DRBD config; ``problems`` maps field -> reason."""

    def __init__(self, resource: str, problems: dict[str, str]) -> None:
        self.resource = resource
        self.problems = dict(problems)
        listed = "; ".join(f"{field}: {reason}" for field, reason in self.problems.items())
        super().__init__(f"invalid DRBD resource {resource!r}: {listed}")


class AllocationExhausted(StorageError):
    """Every DRBD minor or port in the range is taken."""

    def __init__(self, kind: str, low: int, high: int, where: str) -> None:
        self.kind = kind
        self.low = low
        self.high = high
        super().__init__(
            f"no free DRBD {kind} in {low}..{high} {where}; remove DRBD resources "
            f"that are no longer used, or widen the {kind} range"
        )


class InvalidPortRange(StorageError, ValueError):
    """A DRBD port range that holds no usable port."""

    def __init__(self, low: int, high: int) -> None:
        self.low = low
        self.high = high
        super().__init__(
            f"DRBD port range {low}..{high} is invalid; give low <= high within 1..65535"
        )


class DrbdadmFailed(CommandError):
    """drbdadm refused a command; ``output`` holds its messages, secrets redacted."""

    def __init__(
        self,
        argv: list[str],
        rc: int,
        conf_path: str,
        command: str,
        resource: str,
        output: list[str],
    ) -> None:
        self.rc = rc
        self.conf_path = conf_path
        self.command = command
        self.resource = resource
        self.output = list(output)
        said = "\n".join(self.output) or "(no message)"
        super().__init__(
            argv,
            f"drbdadm refused {command!r} of resource {resource!r} with config "
            f"{conf_path} (status {rc}); fix what it names:\n{said}",
        )


@dataclass(frozen=True)
class DrbdPeer:
    """One node of a resource: its DRBD identity, replication endpoint and LVs."""

    node: str
    node_id: int
    address: str
    port: int
    disk: str
    meta_disk: str


@dataclass(frozen=True, repr=False)
class DrbdResource:
    """One replicated disk: both peers, its minor (same on both) and its secret."""

    name: str
    minor: int
    secret: str
    peers: tuple[DrbdPeer, DrbdPeer]
    protocol: str = "C"
    # The fence-peer handler's command line: with one, a primary that loses its peer freezes its I/O
    # (`fencing resource-and-stonith`) until the handler has had the peer's copy recorded out of date.
    fence_peer: str = ""
    resync_rate_mib_s: float = 0.0  # a fixed resync rate; 0: DRBD's own dynamic controller
    two_primaries: bool = False  # both nodes may be Primary: a live migration's switchover only

    def __repr__(self) -> str:
        return (
            f"DrbdResource(name={self.name!r}, minor={self.minor}, secret='<redacted>', "
            f"peers={self.peers!r}, protocol={self.protocol!r}, fence_peer={self.fence_peer!r})"
        )


def resource_name(instance: str, disk_index: int) -> str:
    """The DRBD resource name of disk disk_index of instance."""
    check_disk(instance, disk_index)
    name = f"{RESOURCE_PREFIX}{instance}-{disk_index}"
    if len(name) > _RESOURCE_NAME_MAX:
        raise InvalidName(
            instance,
            f"its DRBD resource name {name[:20]}... would be {len(name)} characters, "
            f"DRBD takes at most {_RESOURCE_NAME_MAX}; use a shorter instance name",
        )
    return name


def resource_problems(res: DrbdResource) -> dict[str, str]:
    """Every reason res cannot be rendered, by field; empty when it can."""
    problems: dict[str, str] = {}
    if len(res.name) > _RESOURCE_NAME_MAX or not _RESOURCE_NAME_RE.fullmatch(res.name):
        problems["name"] = (
            f"{res.name!r} must be 1..{_RESOURCE_NAME_MAX} letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (see resource_name)"
        )
    if not 0 <= res.minor <= MINOR_MAX:
        problems["minor"] = f"{res.minor} is out of range; use 0..{MINOR_MAX} (allocate_minor)"
    problems.update(_secret_problems(res.secret))
    if any(c in '"\\' or not c.isprintable() for c in res.fence_peer):
        problems["fence_peer"] = "may not hold '\"', '\\' or control characters"
    if res.resync_rate_mib_s < 0:
        problems["resync_rate_mib_s"] = f"{res.resync_rate_mib_s} is negative; use 0 for DRBD's own controller"
    if res.protocol not in PROTOCOLS:
        problems["protocol"] = f"{res.protocol!r} is not one of {', '.join(PROTOCOLS)}"
    if len(res.peers) != 2:
        problems["peers"] = f"need exactly 2 peers, got {len(res.peers)}"
        return problems
    for i, peer in enumerate(res.peers):
        problems.update(_peer_problems(f"peers[{i}]", peer))
    problems.update(_pair_problems(res.peers[0], res.peers[1]))
    return problems


def render_resource(res: DrbdResource, version: str = "9") -> str:
    """The resource file for res in the dialect of DRBD `version` (VERSIONS); InvalidDrbdResource lists what is
    wrong."""
    problems = resource_problems(res)
    if version not in VERSIONS:
        problems["version"] = f"{version!r} is not one of {', '.join(VERSIONS)}"
    if problems:
        raise InvalidDrbdResource(res.name, problems)
    fencing = ["        fencing resource-and-stonith;"] if res.fence_peer else []
    disk = fencing if version == "8.4" else []
    if res.resync_rate_mib_s:
        disk += ["        c-plan-ahead 0;", f"        resync-rate {max(1, round(res.resync_rate_mib_s * 1024))}k;"]
    lines = [
        "# Written by Corral; it rewrites this file, so edits here do not last.",
        f'resource "{res.name}" {{',
    ]
    if disk:
        lines += ["    disk {", *disk, "    }"]
    if res.fence_peer:
        lines += ["    handlers {", f'        fence-peer "{res.fence_peer}";', "    }"]
    lines += [
        "    net {",
        f"        protocol {res.protocol};",
        "        cram-hmac-alg sha256;",
        f'        shared-secret "{res.secret}";',
        *(["        allow-two-primaries yes;"] if res.two_primaries else []),
        *(fencing if version == "9" else []),
        "    }",
    ]
    for peer in res.peers:
        lines += [f'    on "{peer.node}" {{']
        if version == "9":
            lines += [f"        node-id {peer.node_id};"]
        lines += [
            f"        device minor {res.minor};",
            f'        disk "{peer.disk}";',
            f'        meta-disk "{peer.meta_disk}";',
            f"        address {_address(peer)};",
            "    }",
        ]
    if version == "9":
        lines += [
            "    connection-mesh {",
            f'        hosts "{res.peers[0].node}" "{res.peers[1].node}";',
            "    }",
        ]
    lines += ["}"]
    return "\n".join(lines) + "\n"


def module_version(proc_drbd: str) -> str:
    """The resource file dialect (VERSIONS) of the DRBD module whose /proc/drbd reads `proc_drbd`."""
    found = _MODULE_VERSION_RE.search(proc_drbd)
    if found is None:
        raise ValueError(f"no 'version: X.Y.Z' line in /proc/drbd: {proc_drbd[:80]!r}")
    return "8.4" if (int(found[1]), int(found[2])) < (9, 0) else "9"


def random_secret() -> str:
    """A fresh shared secret: 32 letters and digits, safe in any config or argv."""
    return "".join(secrets.choice(_SECRET_ALPHABET) for _ in range(SECRET_LENGTH))


def allocate_minor(used_on_primary: set[int], used_on_secondary: set[int]) -> int:
    """The lowest minor free on both nodes (a resource has the same minor on each)."""
    used = used_on_primary | used_on_secondary
    for minor in range(MINOR_MAX + 1):
        if minor not in used:
            return minor
    raise AllocationExhausted("minor", 0, MINOR_MAX, "on both nodes")


def allocate_port(used: set[int], low: int = PORT_LOW, high: int = PORT_HIGH) -> int:
    """The lowest port in low..high not in used."""
    if not 1 <= low <= high <= 65535:
        raise InvalidPortRange(low, high)
    for port in range(low, high + 1):
        if port not in used:
            return port
    raise AllocationExhausted("port", low, high, "on this node pair")


async def dry_run(
    conf_path: str,
    resource: str,
    command: str = "up",
    timeout_s: float = _DRY_RUN_TIMEOUT_S,
    *,
    node: str | None = None,
) -> list[list[str]]:
    """The drbdsetup/drbdmeta commands `drbdadm <command> <resource>` would run.

    conf_path is a top-level config that includes the resource file. node
    picks the `on` section drbdadm treats as this machine (default: the
    hostname). Needs drbd-utils, not the kernel module. Raises DrbdadmFailed
    with drbdadm's own messages when it refuses the configuration. The
    result holds the shared secret (new-peer's options): do not log it.
    """
    if not _RESOURCE_NAME_RE.fullmatch(resource):
        raise InvalidDrbdResource(resource, {"name": "not a DRBD resource name"})
    argv = ["drbdadm", "-d", "-c", conf_path, command, resource]
    env = None if node is None else {**os.environ, "__DRBD_NODE__": node}
    result = await runner.run(argv, timeout_s=timeout_s, env=env, check=False)
    if result.rc != 0:
        output = [
            _SECRET_IN_TEXT_RE.sub(r"\1<redacted>", line)
            for line in result.stderr.splitlines() + result.stdout.splitlines()
            if not _NOISE_RE.search(line)
        ]
        raise DrbdadmFailed(argv, result.rc, conf_path, command, resource, output)
    return [
        shlex.split(line)
        for line in result.stdout.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def _secret_problems(secret: str) -> dict[str, str]:
    if not secret:
        return {"secret": "is empty; use random_secret()"}
    if len(secret) > SECRET_MAX:
        return {"secret": f"is {len(secret)} characters, DRBD takes at most {SECRET_MAX}"}
    if any(c in '"\\' or not c.isprintable() or c.isspace() or not c.isascii() for c in secret):
        return {
            "secret": "may hold only printable ASCII without spaces, '\"' or '\\'; "
            "use random_secret()"
        }
    return {}


def _peer_problems(label: str, peer: DrbdPeer) -> dict[str, str]:
    problems: dict[str, str] = {}
    if not _NODE_RE.fullmatch(peer.node):
        problems[f"{label}.node"] = (
            f"{peer.node!r} must be a host name: letters, digits, '.', '_' or '-'"
        )
    if not 0 <= peer.node_id <= NODE_ID_MAX:
        problems[f"{label}.node_id"] = f"{peer.node_id} is out of range; use 0..{NODE_ID_MAX}"
    if _ip(peer.address) is None:
        problems[f"{label}.address"] = (
            f"{peer.address!r} must be an IPv4 or IPv6 address literal (no host names, "
            "no zone index)"
        )
    if not 1 <= peer.port <= 65535:
        problems[f"{label}.port"] = f"{peer.port} is out of range; use 1..65535 (allocate_port)"
    for field, path in (("disk", peer.disk), ("meta_disk", peer.meta_disk)):
        if not _PATH_RE.fullmatch(path) or "/../" in f"{path}/":
            problems[f"{label}.{field}"] = (
                f"{path!r} must be an absolute device path of letters, digits and ._+=/-"
            )
    return problems


def _pair_problems(first: DrbdPeer, second: DrbdPeer) -> dict[str, str]:
    problems: dict[str, str] = {}
    if first.node == second.node:
        problems["peers.node"] = f"both peers are node {first.node!r}; use two different nodes"
    if first.node_id == second.node_id:
        problems["peers.node_id"] = (
            f"both peers have node-id {first.node_id}; give each node its own id"
        )
    a, b = _ip(first.address), _ip(second.address)
    if a is not None and b is not None:
        if a.version != b.version:
            problems["peers.address"] = (
                f"{first.address} and {second.address} are of different IP versions; "
                "DRBD needs both ends of a path in one family"
            )
        elif a == b and first.port == second.port:
            problems["peers.address"] = (
                f"both peers listen on {first.address} port {first.port}; "
                "give each its own address or port"
            )
    return problems


def _ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id is not None:
        return None
    return ip


def _address(peer: DrbdPeer) -> str:
    ip = _ip(peer.address)
    if isinstance(ip, ipaddress.IPv6Address):
        return f"ipv6 [{ip}]:{peer.port}"
    return f"ipv4 {ip}:{peer.port}"
