"""An `instance add` request that recreates a backed-up instance under a new name (`corral backup import`).

Pure: from the configuration a backup holds (the instance record as the cluster had it) and what the operator
asked for. The result goes through the same checks as any `instance add`, so an import is refused at submit
for the same reasons an add would be. What is kept and what is not:

- memory, vCPUs, OS and its parameters, hypervisor parameters, priority, owner, description, tags, the boot
  check, and each disk's size and format; the disks' content comes from the backup, no OS is installed;
- each NIC's mode, network and link, with its MAC when no instance of the cluster uses it (the original may
  still run: two guests with one MAC on a network break both), else a new MAC, said in the notes; a fixed
  IP address is not kept (the original may hold it), the network gives a new one;
- the disk template, unless asked for another; the node, unless given, is the backup's own node;
- not kept: the instance's UUID, start order dependencies (`after`, which name other instances), CD-ROM.
"""

from __future__ import annotations

from typing import Any

NIC_KEYS = ("mode", "bridge", "network", "vlan")
KEPT = ("memory_mib", "vcpus", "os", "osparams", "hvparams", "priority", "owner", "description", "tags",
        "boot_pattern", "boot_timeout_s", "auto_failover")
_REQUEST_KEY = {"memory_mib": "memory"}


def import_request(config: dict[str, Any], *, name: str, node: str, template: str | None,
                   macs_in_use: set[str], start: bool) -> tuple[dict[str, Any], list[str]]:
    """The add request, and what an operator should know about what was not carried over."""
    notes: list[str] = []
    req: dict[str, Any] = {"name": name, "node": node, "start": start,
                           "disk_template": template or config.get("disk_template") or "file"}
    for key in KEPT:
        value = config.get(key)
        if value is not None and (isinstance(value, bool) or value):  # 0, "", [] are the defaults
            req[_REQUEST_KEY.get(key, key)] = value
    if req["disk_template"] not in ("mirror", "drbd") and "auto_failover" in req:
        del req["auto_failover"]  # only replicated templates fail over
    req["disks"] = [{"size": f"{int(d['size_mib'])}M", "format": d.get("format") or "raw"}
                    for d in sorted(config.get("disks") or [], key=lambda d: int(d["index"]))]
    nics = []
    for index, nic in enumerate(config.get("nics") or []):
        wanted = {k: nic[k] for k in NIC_KEYS if nic.get(k) not in (None, "")}
        mac = str(nic.get("mac") or "").lower()
        if mac and mac not in macs_in_use:
            wanted["mac"] = mac
        elif mac:
            notes.append(f"NIC {index}: MAC {mac} is used by another instance; a new one is generated")
        if nic.get("ip"):
            notes.append(f"NIC {index}: address {nic['ip']} is not kept (the original may still hold it); "
                         "the network gives a new one")
        nics.append(wanted)
    req["nics"] = nics
    if config.get("after"):
        notes.append(f"start order after {', '.join(config['after'])} is not kept")
    if config.get("cdrom"):
        notes.append(f"CD-ROM {config['cdrom']} is not kept")
    return req, notes
