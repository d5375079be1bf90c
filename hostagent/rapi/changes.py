"""Ganeti's change requests (instance modify, node role, tags, cluster modify) as Corral's, and the answer of
an instance-details job in Ganeti's shape. Pure.

A Ganeti field Corral has no such setting for is refused with what to use instead (400), except when it asks
for the value Corral already shows (tools such as Ganeti Web Manager send every field back as they read it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hostagent.errors import BadRequest
from hostagent.rapi.shapes import GROUP, TEMPLATES, group_uuid, instance

# Ganeti's flags that ask for nothing Corral does differently (hot-plugging is what Corral does when it can)
IGNORED = {"hotplug", "hotplug_if_possible", "wait_for_sync", "conflicts_check", "dry_run"}
ROLES = {"master-candidate": {"drained": False, "offline": False, "candidate": True},
         "regular": {"drained": False, "offline": False},
         "drained": {"drained": True, "offline": False},
         "offline": {"offline": True}}


def _mib(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BadRequest(f"{field} must be a whole number of MiB, at least 1, not {value!r}")
    return value


def _refuse(field: str, value: Any, shown: Any, instead: str) -> None:
    if value != shown:
        raise BadRequest(f"{field} {value!r}: {instead}")


def modify_body(body: Mapping[str, Any], shown: Mapping[str, Any]) -> dict[str, Any]:
    """Corral's `instance modify` body for Ganeti's (PUT /2/instances/I/modify); `shown`: the instance as
    GET /2/instances/I answers, for fields sent back unchanged."""
    out: dict[str, Any] = {}
    be = body.get("beparams") or {}
    if not isinstance(be, dict):
        raise BadRequest(f"beparams must be an object, not {be!r}")
    memory = be.get("maxmem", be.get("memory"))
    if memory is not None:
        out["memory"] = f"{_mib(memory, 'beparams maxmem')}M"
    if be.get("minmem") is not None and be["minmem"] != (memory if memory is not None else shown["beparams"]["maxmem"]):
        raise BadRequest("beparams minmem must equal maxmem: a Corral instance has one memory size (no ballooning)")
    if be.get("vcpus") is not None:
        out["vcpus"] = be["vcpus"]
    for field in set(be) - {"maxmem", "memory", "minmem", "vcpus"}:
        _refuse(f"beparams {field}", be[field], shown["beparams"].get(field),
                "Corral has no such setting (it keeps memory, vcpus; `corral instance modify` has the others)")
    for ganeti, corral in (("hvparams", "hvparams"), ("osparams", "osparams")):
        if body.get(ganeti):
            out[corral] = body[ganeti]
    if body.get("force") is not None:
        if not isinstance(body["force"], bool):
            raise BadRequest(f"force must be true or false, not {body['force']!r}")
        out["force"] = body["force"]
    if body.get("os_name") is not None:
        _refuse("os_name", body["os_name"], shown["os"], "a new OS is a reinstall: POST /2/instances/I/reinstall")
    if body.get("disk_template") is not None:
        _refuse("disk_template", body["disk_template"], shown["disk_template"],
                "Corral does not convert an instance's disks to another template")
    for field, instead in (("nics", "`corral instance modify NAME --nic ...` changes NICs"),
                           ("disks", "disks grow with POST /2/instances/I/disk/N/grow; `corral instance add-disk` "
                                     "and `remove-disk` add and remove them"),
                           ("runtime_mem", "Corral has no ballooning: change beparams maxmem (at the next start)"),
                           ("offline", "Corral has no offline instances: stop it (PUT /2/instances/I/shutdown)")):
        if body.get(field):
            raise BadRequest(f"{field}: {instead}")
    unknown = sorted(set(body) - {"beparams", "hvparams", "osparams", "force", "os_name", "disk_template", "nics",
                                  "disks", "runtime_mem", "offline", "__version__", *IGNORED})
    if unknown:
        raise BadRequest(f"cannot modify {', '.join(unknown)} of an instance; Corral takes beparams (maxmem, "
                         "vcpus), hvparams, osparams and force")
    if not set(out) - {"force"}:
        raise BadRequest("nothing to change: give beparams (maxmem, vcpus), hvparams or osparams")
    return out


def export_body(name: str, body: Mapping[str, Any], running: bool) -> dict[str, Any]:
    """Corral's `backup export` for Ganeti's PUT /2/instances/I/export: mode local into the destination node's
    first export directory. Ganeti's shutdown (its default) stops a running instance around the copy; Corral
    copies a running one as of one instant instead (shutdown false), and asks to stop it first otherwise."""
    mode = body.get("mode", "local")
    if mode != "local":
        raise BadRequest(f"export mode {mode!r}: Corral exports to an export directory of a node (mode local); "
                         "`corral backup import` reads it on any node")
    destination = body.get("destination")
    if not isinstance(destination, str) or not destination:
        raise BadRequest(f"destination must be the node to export to, not {destination!r}")
    if body.get("remove_instance"):
        raise BadRequest("remove_instance: Corral keeps the instance; remove it once the backup is there")
    live = body.get("shutdown") is False
    if running and not live:
        raise BadRequest(f"instance '{name}' is running: with shutdown false Corral copies it as of one instant "
                         "while it runs (crash-consistent); or stop it first")
    return {"instance": name, "to": f"{destination}:", "live": live,
            "compress": bool(body.get("compress")) and body.get("compress") != "none"}


def role_changes(role: Any) -> dict[str, bool]:
    """A node's flags for Ganeti's role word (PUT /2/nodes/N/role, the body a bare JSON string)."""
    if role == "master":
        raise BadRequest("role master: the master is elected; hand it over with `corral cluster master-failover`")
    if role not in ROLES:
        raise BadRequest(f"role {role!r} is not one of {', '.join(['master', *ROLES])}")
    return dict(ROLES[role])


def query_tags(values: list[str]) -> list[str]:
    """The tags of a tags request (`?tag=a&tag=b`, Ganeti's only way to name them)."""
    if not values:
        raise BadRequest("name the tags in the query: ?tag=TAG (repeated for several)")
    return values


def cluster_changes(body: Mapping[str, Any], info: Mapping[str, Any]) -> dict[str, Any]:
    """Corral's `cluster modify` changes for Ganeti's PUT /2/modify; `info`: GET /2/info's answer, for fields
    sent back unchanged."""
    out: dict[str, Any] = {}
    for field, value in body.items():
        if field in IGNORED or field == "__version__":
            continue
        if field == "candidate_pool_size":
            out["candidate_pool_size"] = value
        elif field == "hvparams":
            if not isinstance(value, dict) or set(value) - {"kvm"}:
                raise BadRequest("hvparams: Corral runs KVM only, give {\"kvm\": {...}}")
            out["hvparams"] = value.get("kvm") or {}
        elif field == "beparams":
            be = (value or {}).get("default", value) if isinstance(value, dict) else None
            if not isinstance(be, dict):
                raise BadRequest(f"beparams must be an object, not {value!r}")
            if be.get("maxmem", be.get("memory")) is not None:
                out["default_memory"] = f"{_mib(be.get('maxmem', be.get('memory')), 'beparams maxmem')}M"
            if be.get("vcpus") is not None:
                out["default_vcpus"] = be["vcpus"]
        elif field == "enabled_disk_templates":
            if not isinstance(value, list):
                raise BadRequest(f"enabled_disk_templates must be a list, not {value!r}")
            out["enabled_disk_templates"] = value
        else:
            _refuse(field, value, info.get(field), "Corral has no such cluster setting (`corral cluster modify "
                    "--help` lists its settings)")
    if not out:
        raise BadRequest("nothing to change: Corral takes candidate_pool_size, hvparams (kvm), beparams (maxmem, "
                         "vcpus) and enabled_disk_templates")
    return out


def instance_info(result: Mapping[str, Any], primary_up: bool) -> dict[str, Any]:
    """The result of an instance-details job (hostagent.master.config_jobs) as Ganeti's OP_INSTANCE_QUERY_DATA
    answers it: {name: details}."""
    inst, row, defaults = result["instance"], result["row"], result.get("hv_defaults") or {}
    shown = instance(row, {**defaults, **(inst.get("hvparams") or {})}, primary_up)
    running, group = shown["oper_state"], group_uuid(str(result.get("cluster_uuid", "")))
    snodes = shown["snodes"]
    disks = [{"iv_name": f"disk/{d['index'] if 'index' in d else n}", "dev_type": TEMPLATES.get(
                  str(inst.get("disk_template")), inst.get("disk_template")), "logical_id": None,
              "drbd_info": None, "pstatus": None, "sstatus": None, "children": [], "mode": "rw",
              "size": int(d["size_mib"]), "spindles": None, "name": d.get("name"), "uuid": d.get("uuid")}
             for n, d in enumerate(inst.get("disks") or [])]
    return {inst["name"]: {
        "name": inst["name"], "config_state": "up" if inst.get("admin_state") == "up" else "down",
        "run_state": "up" if running else "down", "pnode": shown["pnode"], "pnode_group_uuid": group,
        "pnode_group_name": GROUP, "snodes": snodes, "snodes_group_uuids": [group for _ in snodes],
        "snodes_group_names": [GROUP for _ in snodes], "os": shown["os"],
        "nics": [{"mac": n.get("mac"), "ip": n.get("ip"), "mode": n.get("mode"), "link": n.get("bridge") or "",
                  "network": n.get("network"), "name": n.get("name"), "uuid": n.get("uuid")}
                 for n in inst.get("nics") or []],
        "disk_template": shown["disk_template"], "disks": disks, "hypervisor": "kvm",
        "network_port": shown["network_port"], "hv_instance": dict(inst.get("hvparams") or {}),
        "hv_actual": shown["hvparams"], "be_instance": dict(shown["custom_beparams"]),
        "be_actual": {k: v for k, v in shown["beparams"].items() if k != "memory"},
        "os_instance": dict(inst.get("osparams") or {}), "os_actual": dict(inst.get("osparams") or {}),
        "serial_no": shown["serial_no"], "mtime": shown["mtime"], "ctime": shown["ctime"], "uuid": shown["uuid"]}}
