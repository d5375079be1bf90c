"""The node-local static configuration, read once from /etc/corral/agent.toml.

Everything is overridable so that several agents can share one machine on
different 127.0.0.x addresses (tests, demo). Validation reports every problem
at once: an operator fixing a config file should not have to iterate.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from dataclasses import dataclass, fields
from typing import Any

from election.member import ELECTION_TIMEOUT_MS, HEARTBEAT_MS
from kvm.hvparams import DEFAULT_KERNEL_DIRS
from storage.lvmparse import vg_name_problem

DEFAULT_CONFIG_PATH = "/etc/corral/agent.toml"
# Tuned with etcd's LAN timing (election.member): when the master's node also held the etcd leader, the
# key goes ~0.5 s (etcd election) + 0.5 s (the new leader's extension) + this TTL after the death.
MASTER_LEASE_TTL_S = 2
MIN_MASTER_LEASE_TTL_S = 2  # the master renews 4 times a TTL and stops acting a quarter TTL before expiry
_NODE_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z")


class ConfigError(ValueError):
    """The agent config is unusable; `problems` lists every reason."""

    def __init__(self, path: str, problems: list[str]) -> None:
        super().__init__(f"invalid agent config {path}:\n" + "\n".join(f"  - {p}" for p in problems))
        self.path = path
        self.problems = problems


@dataclass(frozen=True)
class AgentConfig:
    """One node's agent settings; units are in the names."""

    node_name: str
    address: str
    api_port: int = 7947
    rapi_port: int = 5080  # Ganeti's Remote API (hostagent.rapi); 0: not served
    gossip_port: int = 7946
    serf_rpc_port: int = 7373
    etcd_client_port: int = 2379
    etcd_peer_port: int = 2380
    state_dir: str = "/var/lib/corral"
    run_dir: str = "/run/corral"
    log_dir: str = "/var/log/corral"
    socket_path: str = ""
    file_storage_dir: str = ""
    os_search_paths: tuple[str, ...] = (
        "/srv/ganeti/os", "/usr/local/lib/ganeti/os", "/usr/lib/ganeti/os",
        "/usr/share/ganeti/os", "/usr/share/corral/os",
    )
    image_paths: tuple[str, ...] = ("/var/lib/corral/images",)
    kernel_dirs: tuple[str, ...] = DEFAULT_KERNEL_DIRS  # the only places kernel_path/initrd_path may point into
    iso_dirs: tuple[str, ...] = ("/var/lib/corral/iso",)  # the only places a CD-ROM image may come from
    export_dirs: tuple[str, ...] = ()  # the only places backups are written to and read from; () is <state_dir>/export
    serf_binary: str = "serf"
    etcd_binary: str = "etcd"
    qemu_binary: str = "qemu-system-x86_64"
    report_interval_s: float = 5.0
    master_lease_ttl_s: int = MASTER_LEASE_TTL_S  # a dead master is replaced about this long after it died
    etcd_connect_timeout_s: float = 1.0  # connect and TLS handshake to one etcd member before trying the next
    etcd_heartbeat_ms: int = HEARTBEAT_MS  # Raft timing of this node's etcd member (election.member)
    etcd_election_timeout_ms: int = ELECTION_TIMEOUT_MS
    os_install_timeout_s: float = 1800.0
    qmp_timeout_s: float = 5.0  # a QMP query of a QEMU; commands that change a guest (migration, resize) get twice it
    qemu_start_timeout_s: float = 30.0  # a QEMU that has not daemonized (its disks open, QMP up) by then failed to start
    access_log: bool = False  # one line per API request (caller, method, raw path, status) in log_dir/access.log
    drills: bool = False  # accept `corral drill` requests to crash or freeze this agent (demo, test clusters)
    volume_group: str = ""  # LVM volume group of the plain/drbd templates; empty: this node has none
    lvm_args: tuple[str, ...] = ()  # extra LVM arguments; tests on machines without device-mapper pass --driverloaded n
    node_lease_ttl_s: int = 20  # the master fails this node's instances over this long after it is cut off
    watchdog: str = ""  # a watchdog device (/dev/watchdog) the fence keeper pets; empty: none

    @property
    def socket(self) -> str:
        return self.socket_path or os.path.join(self.run_dir, "agent.sock")

    @property
    def file_storage(self) -> str:
        return self.file_storage_dir or os.path.join(self.state_dir, "file-storage")

    @property
    def exports(self) -> tuple[str, ...]:
        return self.export_dirs or (os.path.join(self.state_dir, "export"),)

    @property
    def pki_dir(self) -> str:
        return os.path.join(self.state_dir, "pki")


# TOML section -> {toml key: dataclass field}
_SECTIONS: dict[str, dict[str, str]] = {
    "node": {"name": "node_name", "address": "address"},
    "ports": {"api": "api_port", "rapi": "rapi_port", "gossip": "gossip_port", "serf_rpc": "serf_rpc_port",
              "etcd_client": "etcd_client_port", "etcd_peer": "etcd_peer_port"},
    "paths": {"state_dir": "state_dir", "run_dir": "run_dir", "log_dir": "log_dir",
              "socket": "socket_path", "file_storage_dir": "file_storage_dir",
              "os_search_paths": "os_search_paths", "image_paths": "image_paths", "kernel_dirs": "kernel_dirs",
              "iso_dirs": "iso_dirs", "export_dirs": "export_dirs"},
    "binaries": {"serf": "serf_binary", "etcd": "etcd_binary", "qemu": "qemu_binary"},
    "agent": {"report_interval_s": "report_interval_s",
              "master_lease_ttl_s": "master_lease_ttl_s", "etcd_connect_timeout_s": "etcd_connect_timeout_s",
              "etcd_heartbeat_ms": "etcd_heartbeat_ms", "etcd_election_timeout_ms": "etcd_election_timeout_ms",
              "os_install_timeout_s": "os_install_timeout_s", "drills": "drills", "access_log": "access_log",
              "qmp_timeout_s": "qmp_timeout_s", "qemu_start_timeout_s": "qemu_start_timeout_s"},
    "storage": {"volume_group": "volume_group", "lvm_args": "lvm_args"},
    "fencing": {"node_lease_ttl_s": "node_lease_ttl_s", "watchdog": "watchdog"},
}
_TYPES = {f.name: f.type for f in fields(AgentConfig)}


def load_config(path: str) -> AgentConfig:
    """Read and validate the TOML file at `path`; raise ConfigError listing all problems."""
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(path, ["file not found (create it, see packaging/agent.toml.example)"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, [f"not valid TOML: {exc}"]) from None
    return parse_config(raw, path)


def parse_config(raw: dict[str, Any], path: str = "<config>") -> AgentConfig:
    problems: list[str] = []
    values: dict[str, Any] = {}
    for section, body in raw.items():
        if section not in _SECTIONS:
            problems.append(f"unknown section [{section}] (known: {', '.join(_SECTIONS)})")
            continue
        if not isinstance(body, dict):
            problems.append(f"[{section}] must be a table")
            continue
        for key, value in body.items():
            field = _SECTIONS[section].get(key)
            if field is None:
                problems.append(f"unknown key '{key}' in [{section}] "
                                f"(known: {', '.join(_SECTIONS[section])})")
                continue
            converted = _convert(f"{section}.{key}", _TYPES[field], value, problems)
            if converted is not None:
                values[field] = converted
    for required in ("node_name", "address"):
        if required not in values:
            section, key = next((s, k) for s, m in _SECTIONS.items() for k, f in m.items() if f == required)
            problems.append(f"missing required key '{key}' in [{section}]")
    if "node_name" in values and not _NODE_NAME_RE.match(values["node_name"]):
        problems.append(f"node.name: {values['node_name']!r} is not a valid node name "
                        "(lower-case letters, digits and '-', at most 63 characters)")
    if "address" in values:
        try:
            ipaddress.ip_address(values["address"])
        except ValueError:
            problems.append(f"node.address: {values['address']!r} is not an IP address (e.g. 192.0.2.10)")
    defaults = {f.name: f.default for f in fields(AgentConfig) if f.name.endswith("_port")}
    ports = sorted({**defaults, **{k: v for k, v in values.items() if k.endswith("_port")}}.items())
    for key, port in ports:
        if not 1 <= port <= 65535 and not (key == "rapi_port" and port == 0):
            problems.append(f"ports: {key.removesuffix('_port')} = {port} is not a TCP port (1-65535"
                            + (", or 0: not served)" if key == "rapi_port" else ")"))
    seen: dict[int, str] = {}
    for key, port in ports:
        if port in seen and port:
            problems.append(f"ports: {key.removesuffix('_port')} and {seen[port]} both use port {port}")
        seen[port] = key.removesuffix("_port")
    for key in ("report_interval_s", "os_install_timeout_s", "qmp_timeout_s",
                "qemu_start_timeout_s"):
        if key in values and values[key] <= 0:
            problems.append(f"agent.{key} must be positive, got {values[key]}")
    problems += _etcd_timing_problems(values)
    if "node_lease_ttl_s" in values and not 8 <= values["node_lease_ttl_s"] <= 300:
        problems.append(f"fencing.node_lease_ttl_s must be 8-300 s (self-fencing happens 5 s before it "
                        f"expires), got {values['node_lease_ttl_s']}")
    if values.get("watchdog") and not os.path.isabs(values["watchdog"]):
        problems.append(f"fencing.watchdog: {values['watchdog']!r} must be an absolute device path, "
                        "e.g. /dev/watchdog")
    for key in ("state_dir", "run_dir", "log_dir"):
        if key in values and not os.path.isabs(values[key]):
            problems.append(f"paths.{key}: {values[key]!r} must be an absolute path")
    for path in values.get("kernel_dirs", ()):
        if not os.path.isabs(path) or os.path.normpath(path) in ("/", "//"):
            problems.append(f"paths.kernel_dirs: {path!r} must be an absolute directory other than / "
                            "(kernels and initrds are read from there, e.g. /boot)")
    for path in values.get("iso_dirs", ()):
        if not os.path.isabs(path) or os.path.normpath(path) in ("/", "//"):
            problems.append(f"paths.iso_dirs: {path!r} must be an absolute directory other than / "
                            "(guests read CD-ROM images from there, e.g. /var/lib/corral/iso)")
    for path in values.get("export_dirs", ()):
        if not os.path.isabs(path) or os.path.normpath(path) in ("/", "//"):
            problems.append(f"paths.export_dirs: {path!r} must be an absolute directory other than / "
                            "(backups are written there, e.g. /var/lib/corral/export)")
    if values.get("volume_group") and vg_name_problem(values["volume_group"]):
        problems.append(f"storage.volume_group: {vg_name_problem(values['volume_group'])}")
    if problems:
        raise ConfigError(path, problems)
    return AgentConfig(**values)


def _convert(name: str, typ: Any, value: Any, problems: list[str]) -> Any:
    typ = str(typ)
    if typ == "bool":
        if isinstance(value, bool):
            return value
        problems.append(f"{name}: expected true or false, got {value!r}")
    elif typ == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        problems.append(f"{name}: expected an integer, got {value!r}")
    elif typ == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        problems.append(f"{name}: expected a number, got {value!r}")
    elif typ.startswith("tuple"):
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
        problems.append(f"{name}: expected a list of strings, got {value!r}")
    else:
        if isinstance(value, str) and value:
            return value
        problems.append(f"{name}: expected a non-empty string, got {value!r}")
    return None


def _etcd_timing_problems(values: dict[str, Any]) -> list[str]:
    """etcd's own limits (it refuses to start otherwise), and the master lease outliving an etcd election.

    Twice the election timeout also keeps the lease above etcd's minimum TTL (1.5 election timeouts, rounded
    up to a second), below which etcd would silently grant a longer lease than the agent counts on.
    """
    beat = values.get("etcd_heartbeat_ms", HEARTBEAT_MS)
    election = values.get("etcd_election_timeout_ms", ELECTION_TIMEOUT_MS)
    lease_s = values.get("master_lease_ttl_s", MASTER_LEASE_TTL_S)
    lease_ms = lease_s * 1000
    if lease_s < MIN_MASTER_LEASE_TTL_S:
        return [f"agent.master_lease_ttl_s must be at least {MIN_MASTER_LEASE_TTL_S} s (the master renews it "
                f"4 times a TTL and stops acting a quarter TTL before it could expire), got {lease_s}"]
    if not 10 <= beat <= 5000:
        return [f"agent.etcd_heartbeat_ms must be 10-5000 ms, got {beat}"]
    if not 5 * beat <= election <= 50000:
        return [f"agent.etcd_election_timeout_ms must be at least 5 times etcd_heartbeat_ms ({5 * beat}) and at "
                f"most 50000 ms, got {election}"]
    if election * 2 > lease_ms:
        return [f"agent.etcd_election_timeout_ms ({election}) must be at most half of master_lease_ttl_s "
                f"({lease_s} s): the master must not lose its lease while etcd elects a leader; raise "
                f"master_lease_ttl_s to at least {-(-election * 2 // 1000)} s or lower the election timeout"]
    return []
