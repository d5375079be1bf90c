"""The replicated config's key layout and record shapes.

Every key lives under /corral/. Values are JSON. The master writes everything
except /corral/reports/<node>, which each node writes about itself.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

PREFIX = "/corral/"
CLUSTER_KEY = "/corral/cluster"
MASTER_KEY = "/corral/master"
MASTER_INFO_KEY = "/corral/master-info"  # who is master with which token, for every node to read
NODES = "/corral/nodes/"
INSTANCES = "/corral/instances/"
JOBS = "/corral/jobs/"
JOBS_ARCHIVE = "/corral/jobs-archive/"  # finished jobs older than the cluster's job_archive_after_s
REPORTS = "/corral/reports/"
RESERVATIONS = "/corral/reservations/"
JOIN_TOKENS = "/corral/join-tokens/"
USERS = "/corral/users/"
LEASES = "/corral/leases/"
HANDOVER_KEY = "/corral/handover"
EVENTS = "/corral/events/"  # the master's automatic decisions with their reasons, oldest first
FAILOVER_STATE_KEY = "/corral/failover-state"  # the master's node-failure decision state (hostagent.master.decide.failovers)
RESTARTS = "/corral/restarts/"  # the master's restart tracks (hostagent.master.decide.restarts), one per instance
REPLICAS = "/corral/replicas/"  # per replicated instance: is the secondary's copy in sync (hostagent.master.decide.replicas)
NETWORKS = "/corral/networks/"  # networks with an IPv4 pool (hostagent.master.decide.networks)
BACKUP_RUNS = "/corral/backup-runs/"  # per instance with a backup schedule: its scheduled export in flight, last outcome
# Disk templates. REPLICATED: a second copy on another node (a secondary, failover, evacuation onto it);
# QUORUM_MIRRORED: that copy is kept by the primary's QEMU (a quorum over the local image and an NBD target,
# hostagent.node.replication). DRBD (a later template) is replicated, not quorum-mirrored.
REPLICATED = ("mirror", "drbd")
QUORUM_MIRRORED = ("mirror",)
ON_LVM = ("plain", "drbd")  # disks are logical volumes in the node's volume group (storage.lvm), raw only
ADDRESSES = "/corral/addresses/"  # <network>/<ip>: held by one instance's NIC, written with the instance
REVOKED = "/corral/revoked/"  # node certificates no longer accepted (removed nodes, replaced keys), by serial
DEFAULT_BOOT_TIMEOUT_S = 120.0  # an instance with a boot pattern but no boot timeout of its own


def node_key(name: str) -> str:
    return NODES + name


def instance_key(name: str) -> str:
    return INSTANCES + name


def job_key(job_id: int) -> str:
    return f"{JOBS}{job_id:010d}"


def archived_job_key(job_id: int) -> str:
    return f"{JOBS_ARCHIVE}{job_id:010d}"


def report_key(node: str) -> str:
    return REPORTS + node


def join_token_key(token_hash: str) -> str:
    return JOIN_TOKENS + token_hash


def user_key(name: str) -> str:
    return USERS + name


def event_key(when: float, seq: int) -> str:
    """Events sort by time, then by `seq` (numbered by the writing master, hostagent.master.events)."""
    return f"{EVENTS}{int(when * 1_000_000):020d}-{seq % 10**9:09d}"


def restart_key(instance: str) -> str:
    return RESTARTS + instance


def replica_key(instance: str) -> str:
    return REPLICAS + instance


def network_key(name: str) -> str:
    return NETWORKS + name


def backup_run_key(instance: str) -> str:
    """The scheduled backups' record of an instance (hostagent.master.decide.backup_schedule.Run)."""
    return BACKUP_RUNS + instance


def address_key(network: str, ip: str) -> str:
    """Exists while a NIC holds `ip` of `network`: created only if absent, in the instance's own write,
    so two instances can never hold one address."""
    return f"{ADDRESSES}{network}/{ip}"


def held_addresses(record: dict[str, Any] | None) -> dict[str, bytes]:
    """The address keys an instance record holds (None: no instance), with their values."""
    if record is None:
        return {}
    return {address_key(n["network"], n["ip"]): dumps({"instance": record["uuid"]})
            for n in record.get("nics") or [] if n.get("network") and n.get("ip")}


def revoked_key(serial: str) -> str:
    return REVOKED + serial


def revocations(node: dict[str, Any], why: str, now: float) -> list[tuple[str, bytes]]:
    """(key, value) records revoking every certificate a node record lists."""
    return [(revoked_key(serial), dumps({"serial": serial, "node": node["name"], "why": why, "revoked": now}))
            for serial in node.get("cert_serials") or []]


def lease_key(node: str) -> str:
    return LEASES + node


def etcd_client_url(node: dict[str, Any]) -> str:
    return f"https://{node['address']}:{node['etcd_client_port']}"


def etcd_peer_url(node: dict[str, Any]) -> str:
    return f"https://{node['address']}:{node['etcd_peer_port']}"


def reservation_key(kind: str, name: str) -> str:
    """Held by a queued/running job that will create `name`, so duplicates fail at submit."""
    return f"{RESERVATIONS}{kind}/{name}"


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def loads(raw: bytes) -> Any:
    return json.loads(raw)


@dataclass
class Disk:
    index: int
    size_mib: int
    format: str
    uuid: str


@dataclass
class Nic:
    mac: str
    mode: str
    bridge: str = ""
    network: str = ""  # hostagent.master.decide.networks; "" for none
    ip: str = ""  # held from the network's pool; "" for none
    vlan: int | None = None  # bridged only: the tap's VLAN on a VLAN-aware bridge


@dataclass
class Instance:
    """An instance as the config knows it (the wanted state, not the observed one)."""

    name: str
    uuid: str
    os: str
    disk_template: str
    memory_mib: int
    vcpus: int
    primary_node: str
    disks: list[Disk] = field(default_factory=list)
    nics: list[Nic] = field(default_factory=list)
    hvparams: dict[str, Any] = field(default_factory=dict)
    osparams: dict[str, str] = field(default_factory=dict)
    secondary_node: str | None = None
    port_base: int = 0  # replicated templates: disk i is served on port_base + i (see checks)
    # drbd: per disk its resource's minor, port and shared secret ({"index", "minor", "port", "secret"})
    drbd: list[dict[str, Any]] = field(default_factory=list)
    priority: str = "normal"  # restart order after an outage: critical, high, normal, low
    after: list[str] = field(default_factory=list)  # instances that must run before this one is restarted
    boot_pattern: str = ""  # regex a console line of each boot must match (hostagent.node.boothealth); "": no check
    boot_timeout_s: float = 0.0  # how long a boot may take to print it; 0: DEFAULT_BOOT_TIMEOUT_S
    auto_failover: bool | None = None  # None: the cluster's default
    home_node: str | None = None  # set by an automatic failover: the node it came from (failback goes there)
    owner: str = ""  # who to ask about it ("whose VM is this?" during an outage)
    description: str = ""
    tags: list[str] = field(default_factory=list)
    cdrom: str | None = None  # None: no CD-ROM drive; "": a drive, empty; else the ISO in it (hostagent.master.cdrom)
    # Scheduled backups (hostagent.master.decide.backup_schedule): "" none, else hourly, daily, weekly or a
    # duration such as 90s, 30m, 6h; keep None and to "" follow the cluster's backup_keep and backup_to.
    backup_schedule: str = ""
    backup_keep: int | None = None
    backup_to: str = ""  # NODE:DIR or DIR; "" (and no cluster default): the node's first export directory
    backup_since: float = 0.0  # when the schedule was set or changed (cluster verify: overdue with no backup yet)
    admin_state: str = "down"
    ctime: float = 0.0
    mtime: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def drbd_meta_mib(size_mib: int) -> int:
    """The metadata volume of a DRBD disk of size_mib (external, one peer): 36 KiB and a bit per 4 KiB of data,
    rounded up to MiB, at least 4 MiB, with room for the disk to grow fourfold."""
    return max(4, -(-(36 * 1024 + size_mib * 4 * 256 // 8) // 2**20) + 1)


def drbd_max_mib(meta_mib: int) -> int:
    """The largest disk a metadata volume of meta_mib holds (external: 36 KiB and a 4 KiB margin, then one bitmap
    bit per 4 KiB of data): 4 MiB of metadata holds about 127 GiB."""
    return (meta_mib * 2**20 - 40 * 1024) * 8 * 4096 // 2**20


def auto_failover(inst: Mapping[str, Any], cluster: Mapping[str, Any]) -> bool:
    """The instance's own setting, else the cluster-wide default (off unless set)."""
    own = inst.get("auto_failover")
    return bool(cluster.get("auto_failover", False)) if own is None else bool(own)


def armed(cluster: Mapping[str, Any]) -> bool:
    """Fencing and automatic failover are on unless an operator disarmed them (`cluster fencing disarm`)."""
    return bool(cluster.get("fencing", "armed") != "disarmed")
