"""Corral's cluster in the shapes Ganeti 3.0's Remote API (RAPI v2) answers with: pure functions of the records
and the rows `corral` shows (hostagent.views), so tools written for Ganeti read a Corral cluster unchanged.

Field names, types and quirks are Ganeti's (../shared/ganeti-rapi-3.0.2 holds a real cluster's answers): sizes
in MiB, times as floats, lists of bare values beside `?bulk=1` objects. What Corral has no notion of is given
Ganeti's neutral value (no spindles: null; one node group, `default`).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from typing import Any

SOFTWARE_VERSION = "3.0.2"  # the Ganeti release whose answers these are
PROTOCOL_VERSION = 3000000
GROUP = "default"
FEATURES = ["node-migrate-reqv1", "node-evac-res1", "instance-reinstall-reqv1", "instance-create-reqv1"]
TEMPLATES = {"file": "file", "mirror": "drbd", "plain": "plain", "drbd": "drbd"}  # Ganeti's word for each


def group_uuid(cluster_uuid: str) -> str:
    """The one node group's UUID: stable for a cluster (derived from its UUID), as tools remember it."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"corral:{cluster_uuid}:group:{GROUP}"))


def status_word(row: Mapping[str, Any], primary_up: bool) -> str:
    """Ganeti's instance status from what Corral observes: running, ADMIN_down, ERROR_down, ERROR_up,
    ERROR_nodedown, ERROR_wrongnode (Ganeti's query/instance logic, by observed state)."""
    running = row["status"] == "running" or row.get("pid") is not None
    if not primary_up:
        return "ERROR_nodedown"
    if row["admin_state"] == "up":
        return "running" if running else "ERROR_down"
    return "ERROR_up" if running else "ADMIN_down"


def instance(row: Mapping[str, Any], hvparams: Mapping[str, Any], primary_up: bool) -> dict[str, Any]:
    """One element of /2/instances?bulk=1, and /2/instances/NAME."""
    running = status_word(row, primary_up) in ("running", "ERROR_up")
    nics, disks = row.get("nics") or [], row.get("disks") or []
    return {
        "name": row["name"], "admin_state": row["admin_state"], "os": row["os"], "pnode": row["primary_node"],
        "snodes": [row["secondary_node"]] if row.get("secondary_node") else [],
        "disk_template": TEMPLATES.get(row["disk_template"], row["disk_template"]),
        "nic.ips": [n.get("ip") for n in nics], "nic.macs": [n.get("mac") for n in nics],
        "nic.modes": [n.get("mode") for n in nics], "nic.uuids": [n.get("uuid") for n in nics],
        "nic.names": [n.get("name") for n in nics], "nic.links": [n.get("bridge") or n.get("link") for n in nics],
        "nic.networks": [n.get("network") for n in nics], "nic.networks.names": [n.get("network") for n in nics],
        "nic.bridges": [n.get("bridge") for n in nics],
        "network_port": None,
        "disk.sizes": [int(d["size_mib"]) for d in disks], "disk.spindles": [None for _ in disks],
        "disk_usage": sum(int(d["size_mib"]) for d in disks) * (2 if row.get("secondary_node") else 1),
        "disk.uuids": [d.get("uuid") for d in disks], "disk.names": [d.get("name") for d in disks],
        "beparams": {"minmem": row["memory"], "maxmem": row["memory"], "vcpus": row["vcpus"],
                     "auto_balance": True, "always_failover": False, "spindle_use": 1, "memory": row["memory"]},
        "hvparams": dict(hvparams),
        "oper_state": running, "oper_ram": row["memory"] if running else None,
        "oper_vcpus": row["vcpus"] if running else None, "status": status_word(row, primary_up),
        "custom_hvparams": dict(row.get("hvparams") or {}),
        "custom_beparams": {"minmem": row["memory"], "maxmem": row["memory"], "vcpus": row["vcpus"]},
        "custom_nicparams": [{"mode": n.get("mode"), "link": n.get("bridge") or ""} for n in nics],
        "ctime": float(row["ctime"]), "mtime": float(row["mtime"]), "uuid": row["uuid"],
        "serial_no": 1, "tags": list(row.get("tags") or []),
    }


def node(row: Mapping[str, Any], record: Mapping[str, Any], instances: Iterable[Mapping[str, Any]],
         cluster_uuid: str) -> dict[str, Any]:
    """One element of /2/nodes?bulk=1, and /2/nodes/NAME."""
    listed = list(instances)
    primaries = sorted(i["name"] for i in listed if i["primary_node"] == row["name"])
    secondaries = sorted(i["name"] for i in listed if i.get("secondary_node") == row["name"])
    lvm = row.get("lvm") or {}
    mtotal, mfree = row.get("memory_total"), row.get("memory_free")
    return {
        "name": row["name"], "offline": bool(row.get("offline")), "drained": bool(row.get("drained")),
        "master_candidate": row["role"] in ("master", "candidate"),
        "dtotal": lvm.get("size_mib", row.get("disk_total")), "dfree": lvm.get("free_mib", row.get("disk_free")),
        "sptotal": None, "spfree": None,
        "mtotal": mtotal, "mnode": (mtotal - mfree - sum(
            int(i["memory_mib"]) for i in listed if i["primary_node"] == row["name"])) if mtotal and mfree else None,
        "mfree": mfree, "pinst_cnt": len(primaries), "sinst_cnt": len(secondaries),
        "ctotal": row.get("cpus"), "cnos": row.get("cpus"), "cnodes": 1, "csockets": 1,
        "pip": row["address"], "sip": record.get("replication_address") or row["address"],
        "role": {"master": "M", "candidate": "C"}.get(row["role"], "D" if row.get("drained") else
                                                      "O" if row.get("offline") else "R"),
        "pinst_list": primaries, "sinst_list": secondaries,
        "master_capable": bool(row.get("master_capable", True)), "vm_capable": True,
        "ndparams": {"oob_program": "", "spindle_count": 1, "exclusive_storage": False, "ovs": False,
                     "ovs_name": "switch1", "ovs_link": "", "ssh_port": 22, "cpu_speed": 1},
        "group.uuid": group_uuid(cluster_uuid), "ctime": float(record.get("joined") or record.get("ctime") or 0),
        "mtime": float(record.get("mtime") or record.get("joined") or 0),
        "uuid": record.get("uuid") or str(uuid.uuid5(uuid.NAMESPACE_URL, f"corral:{cluster_uuid}:node:{row['name']}")),
        "serial_no": 1, "tags": list(row.get("tags") or []),
    }


def group(nodes: Iterable[str], cluster_uuid: str, ipolicy: Mapping[str, Any]) -> dict[str, Any]:
    """/2/groups?bulk=1's one group."""
    names = sorted(nodes)
    return {"alloc_policy": "preferred", "name": GROUP, "node_cnt": len(names), "node_list": names, "ipolicy": dict(ipolicy), "custom_ipolicy": {}, "diskparams": {},
            "custom_diskparams": {}, "ndparams": {}, "custom_ndparams": {}, "ctime": 0, "mtime": 0.0,
            "uuid": group_uuid(cluster_uuid), "serial_no": 1, "tags": []}


def ipolicy(templates: Iterable[str], largest: tuple[int, int, int] | None = None) -> dict[str, Any]:
    """Ganeti's instance policy, with Corral's limits (what htools plan against): at most what the largest node
    holds (`largest`: its memory and disk in MiB, its cores), so hspace's tiered spec starts from a size that
    can fit."""
    memory, disk, cpus = largest or (1048576, 16777216, 64)
    return {"minmax": [{"min": {"memory-size": 16, "disk-size": 1, "disk-count": 1, "cpu-count": 1, "nic-count": 0,
                                "spindle-use": 1},
                        "max": {"memory-size": max(128, memory), "disk-size": max(1024, disk), "disk-count": 16,
                                "cpu-count": max(1, cpus), "nic-count": 8, "spindle-use": 12}}],
            "std": {"memory-size": 128, "disk-size": 1024, "disk-count": 1, "cpu-count": 1, "nic-count": 1,
                    "spindle-use": 1},
            "spindle-ratio": 32, "vcpu-ratio": 4, "disk-templates": sorted({TEMPLATES[t] for t in templates})}


def info(cluster: Mapping[str, Any], master: str | None, hvparams: Mapping[str, Any],
         templates: Iterable[str], largest: tuple[int, int, int] | None = None) -> dict[str, Any]:
    """/2/info."""
    return {"software_version": SOFTWARE_VERSION, "protocol_version": PROTOCOL_VERSION,
            "config_version": PROTOCOL_VERSION, "os_api_version": 20, "export_version": 0,
            "vcs_version": f"(corral) compatible with Ganeti {SOFTWARE_VERSION}", "architecture": ["64bits", "x86_64"],
            "name": cluster.get("name"), "master": master, "default_hypervisor": "kvm",
            "enabled_hypervisors": ["kvm"], "hvparams": {"kvm": dict(hvparams)}, "os_hvp": {},
            "beparams": {"default": {"minmem": 128, "maxmem": 128, "vcpus": 1, "auto_balance": True,
                                     "always_failover": False, "spindle_use": 1}},
            "osparams": {}, "ipolicy": ipolicy(templates, largest), "nicparams": {"default": {"mode": "bridged", "link": "",
                                                                                    "vlan": ""}},
            "ndparams": {}, "diskparams": {}, "candidate_pool_size": 3, "max_running_jobs": 20,
            "max_tracked_jobs": 25, "mac_prefix": "aa:00:00", "master_netdev": "", "master_netmask": 32,
            "use_external_mip_script": False, "volume_group_name": None, "drbd_usermode_helper": None,
            "file_storage_dir": "", "shared_file_storage_dir": "", "gluster_storage_dir": "",
            "maintain_node_health": False, "ctime": float(cluster.get("created") or 0),
            "mtime": float(cluster.get("mtime") or cluster.get("created") or 0), "uuid": cluster.get("uuid"),
            "tags": list(cluster.get("tags") or []), "uid_pool": [], "default_iallocator": "",
            "default_iallocator_params": {}, "reserved_lvs": [], "primary_ip_version": 4,
            "prealloc_wipe_disks": False, "hidden_os": [], "blacklisted_os": [],
            "enabled_disk_templates": sorted({TEMPLATES[t] for t in templates}), "install_image": "",
            "instance_communication_network": "", "zeroing_image": "", "compression_tools": [],
            "enabled_user_shutdown": False, "enabled_data_collectors": {}, "data_collector_interval": {},
            "modify_ssh_setup": False, "ssh_key_type": "rsa", "ssh_key_bits": 2048, "vg_name": None,
            "drbd_helper": None}


JOB_STATUS = {"queued": "queued", "running": "running", "success": "success", "error": "error",
              "canceled": "canceled", "cancelled": "canceled"}


def _ts(value: Any) -> list[int] | None:
    """Ganeti's (seconds, microseconds) pair."""
    if not isinstance(value, (int, float)):
        return None
    return [int(value), int(round((value - int(value)) * 1e6))]


def job(record: Mapping[str, Any]) -> dict[str, Any]:
    """/2/jobs/ID (and ?bulk=1 elements): a Corral job as one Ganeti opcode of the same name."""
    status = JOB_STATUS.get(str(record.get("status")), "queued")
    op = str(record.get("op", "")).upper().replace(".", "_").replace("-", "_")
    log = [[i + 1, _ts(line[0]), "message", str(line[1])]
           for i, line in enumerate(record.get("log") or []) if isinstance(line, (list, tuple)) and len(line) == 2]
    result = record.get("result") if status == "success" else None
    return {"id": int(record["id"]), "ops": [{"OP_ID": f"OP_{op}", **dict(record.get("args") or {})}],
            "status": status, "summary": [record.get("summary") or op],
            "opstatus": [status], "received_ts": _ts(record.get("created")), "start_ts": _ts(record.get("started")),
            "end_ts": _ts(record.get("ended")), "oplog": [log],
            "opresult": [result if status == "success" else
                         (["OpExecError", [record.get("error")]] if status == "error" else None)]}
