"""Ganeti's instance creation request (RAPI `POST /2/instances`, `__version__: 1`) as Corral's `instance add`
request: a pure mapping, strict, because a provisioning script must not get an instance other than it asked
for. What Corral cannot honour is refused with every reason at once (400), before any job exists; the add
request then goes through `instance add`'s own checks.

NICs and KVM hvparams are mapped as a Ganeti export's are (hostagent.master.decide.ganeti_export); sizes are
MiB as in Ganeti; `pnode`/`snode` name the nodes, or the master places the instance as it does for
`corral instance add` (Ganeti's iallocator field is accepted and means that).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hostagent.errors import BadRequest
from hostagent.master.decide.ganeti_export import GanetiNic, map_hvparams, map_nic

TEMPLATES = {"file": "file", "plain": "plain", "drbd": "drbd"}
# Fields a create request may carry that need nothing here (checks Corral always makes, or Ganeti-only knobs
# whose Corral behaviour is the same).
ACCEPTED = {"__version__", "mode", "name", "disk_template", "disks", "nics", "os_type", "osparams", "pnode",
            "snode", "iallocator", "beparams", "hvparams", "start", "tags", "ip_check", "name_check",
            "conflicts_check", "wait_for_sync", "hypervisor", "opportunistic_locking", "no_install",
            "force_variant", "dry_run", "reason"}


def _mib(value: Any, what: str, problems: list[str]) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        problems.append(f"{what} must be a whole number of MiB, at least 1, not {value!r}")
        return 0
    return value


def create_request(body: Mapping[str, Any]) -> dict[str, Any]:
    """The `instance add` request for Ganeti's create request; BadRequest naming every problem."""
    problems: list[str] = []
    if body.get("__version__") != 1:
        raise BadRequest(f"unsupported request data version {body.get('__version__')!r}: send __version__ 1 "
                         "(Ganeti's instance-create-reqv1)")
    if body.get("mode", "create") != "create":
        problems.append(f"mode {body.get('mode')!r}: only 'create' (an import is `corral backup import`)")
    problems += [f"field {key!r} is not one Corral takes" for key in sorted(set(body) - ACCEPTED)]
    if body.get("hypervisor") not in (None, "kvm"):
        problems.append(f"hypervisor {body.get('hypervisor')!r}: Corral runs only kvm")
    if body.get("no_install"):
        problems.append("no_install: Corral always installs the OS (or adopts LVs: `corral instance add --disk "
                        "adopt=LV`)")
    template = TEMPLATES.get(str(body.get("disk_template")))
    if template is None:
        problems.append(f"disk_template {body.get('disk_template')!r}: one of {', '.join(TEMPLATES)}")
    disks = []
    for index, disk in enumerate(body.get("disks") or []):
        if not isinstance(disk, Mapping):
            problems.append(f"disk {index} must be an object with a size")
            continue
        extra = sorted(set(disk) - {"size", "mode", "name"})
        if extra:
            problems.append(f"disk {index}: {', '.join(extra)} not supported (a size, in MiB)")
        if disk.get("mode", "rw") != "rw":
            problems.append(f"disk {index}: mode {disk.get('mode')!r}: Corral's disks are read-write")
        disks.append({"size": _mib(disk.get("size"), f"disk {index} size", problems)})
    if not disks:
        problems.append("disks: at least one, e.g. [{\"size\": 10240}]")
    notes: list[str] = []
    nics = []
    for index, nic in enumerate(body.get("nics") or []):
        if not isinstance(nic, Mapping):
            problems.append(f"nic {index} must be an object")
            continue
        mac = str(nic.get("mac") or "")
        mapped = map_nic(GanetiNic(index, "" if mac in ("", "auto", "generate") else mac.lower(),
                                   str(nic.get("ip") or ""), str(nic.get("mode") or "bridged"),
                                   str(nic.get("link") or ""), str(nic.get("network") or ""),
                                   str(nic.get("vlan") or ""), ""), {}, notes)
        if not mapped.get("mac"):
            mapped.pop("mac", None)
        if mapped.get("mode") == "user" and nic.get("mode") not in (None, "", "user"):
            notes.append(f"nic {index}: mode {nic.get('mode')!r} is not one Corral has (bridged, with a link)")
        nics.append(mapped)
    be = body.get("beparams") or {}
    memory = be.get("memory", be.get("maxmem"))
    if be.get("minmem") not in (None, memory):
        problems.append("beparams minmem must equal maxmem: Corral gives an instance one memory size")
    hv = {k: (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in (body.get("hvparams") or {}).items()}
    hvparams = map_hvparams(hv, notes)
    memory_mib = _mib(memory, "beparams memory", problems) if memory is not None else None
    problems += notes
    if problems:
        raise BadRequest("the create request is refused: " + "; ".join(problems))
    nodes = ":".join(str(n) for n in (body.get("pnode"), body.get("snode")) if n)
    return {"name": body.get("name"), "os": body.get("os_type"), "disk_template": template, "disks": disks,
            **({"node": nodes} if nodes else {}), **({"nics": nics} if nics else {}),
            **({"memory": memory_mib} if memory_mib is not None else {}),
            **({"vcpus": be["vcpus"]} if "vcpus" in be else {}), **({"hvparams": hvparams} if hvparams else {}),
            **({"osparams": dict(body["osparams"])} if body.get("osparams") else {}),
            **({"tags": list(body["tags"])} if body.get("tags") else {}), "start": bool(body.get("start", True))}
