"""A Ganeti export (`gnt-backup export`) read and turned into an `instance add` request: pure.

For `corral backup import --ganeti DIR`: the caller reads DIR/config.ini and
passes its text; the disk dumps beside it are named in `GanetiExport.disks`.

Format from ganeti/ganeti (2.9 to 3.1): lib/backend.py FinalizeExport writes
it, lib/cmdlib/instance_create.py _ReadExportInfo/_ReadExportParams reads it,
lib/objects.py SerializableConfigParser (a value "None" means none),
src/Ganeti/Constants.hs (sections export, instance, hypervisor, backend, os,
os_private; exportVersion 0; KVM defaults hvcDefaults), lib/rpc/node.py
_InstDict (the three parameter sections are filled: cluster defaults included).
Facts that shape this module:
- 3.0 writes the template of the disks it exported: a running drbd instance is
  exported from LV snapshots, so its config.ini says "plain".
- disk_count counts the disks exported; a disk whose export failed leaves a gap
  in the diskN_ keys, so a count that disagrees means an incomplete export.
- nicN_network holds the Ganeti network's UUID, which names nothing in Corral:
  it maps only through `networks` (Ganeti network -> Corral network).
- With an OS, each dump is what the OS's export script wrote (debootstrap: a
  `dump` of the filesystem), not a disk image: it imports through that OS's
  import script. With no OS, a raw image.
- Private OS parameters are written in clear; only their names are kept here.
"""

from __future__ import annotations

import configparser
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kvm.hvparams import HvParamError, parse_hvparams

from hostagent.errors import BadRequest
from hostagent.master.decide import checks, nics, tags

EXPORT_VERSION = 0
# Ganeti template -> Corral template, where the disks are the same kind (a file, an LV, an LV under DRBD).
TEMPLATES = {"file": "file", "plain": "plain", "drbd": "drbd"}
REQUIRED = {"export": ("version", "os"), "instance": ("name", "vcpus", "disk_template", "hypervisor", "disk_count")}
_DISK_KEY = re.compile(r"^disk(\d+)_(ivname|dump|size|name)\Z")
_NIC_KEY = re.compile(r"^nic(\d+)_(mac|ip|mode|link|network|vlan|name)\Z")
_DUMP_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,254}\Z")  # a file in the export directory, never a path
_VLAN_RE = re.compile(r"^\.?(\d{1,4})\Z")  # Ganeti's access port: "10" or ".10" (":10:20" is a trunk)
# Ganeti KVM values -> Corral's, parameter by parameter (kvm.hvparams names the values Corral accepts).
_BOOT = {"disk": "disk", "cdrom": "cdrom", "network": "network"}
_DISK_BUS = {"paravirtual": "virtio", "ide": "ide", "scsi": "scsi"}
_NIC_MODEL = {"paravirtual": "virtio", "e1000": "e1000", "rtl8139": "rtl8139"}
_CACHE = {"none": "none", "writeback": "writeback", "writethrough": "writethrough"}
_MAPPED = ("kernel_path", "initrd_path", "kernel_args", "root_path", "serial_console", "serial_speed", "boot_order",
           "disk_type", "nic_type", "disk_cache", "vnc_bind_address", "cpu_type", "machine_version", "kvm_flag",
           "use_guest_agent")
# No bearing on the guest once Corral runs its own QEMU: Ganeti's binary, migration tuning, I/O threads, the
# user QEMU ran as, and SPICE options that matter only with spice_bind (which is reported).
_IGNORED = ("kvm_path", "migration_downtime", "migration_caps", "vhost_net", "vnet_hdr", "disk_aio", "use_chroot",
            "security_model", "security_domain", "kvm_pci_reservations", "vnc_password_file")
# Ganeti's KVM defaults (lower case) for what Corral has no setting for: reported only when changed.
_UNMAPPED_DEFAULTS: dict[str, tuple[str, ...]] = {
    "acpi": ("true",), "keymap": ("",), "usb_mouse": ("",), "usb_devices": ("",), "soundhw": ("",), "vga": ("",),
    "kvm_extra": ("",), "mem_path": ("",), "cpu_mask": ("all",), "cpu_cores": ("0",), "cpu_threads": ("0",),
    "cpu_sockets": ("0",), "use_localtime": ("false",), "user_shutdown": ("false",),
    "reboot_behavior": ("reboot",), "disk_discard": ("ignore", "default"), "floppy_image_path": ("",),
    "cdrom_image_path": ("",), "cdrom2_image_path": ("",), "cdrom_disk_type": ("",), "scsi_controller_type": ("lsi",),
    "virtio_net_queues": ("1",), "vnc_tls": ("false",), "vnc_x509_path": ("",), "vnc_x509_verify": ("false",),
    "spice_bind": ("",)}
_BE_DEFAULTS = {"auto_balance": "true", "always_failover": "false", "spindle_use": "1"}
_BE_READ = ("maxmem", "minmem", "memory", "vcpus")


@dataclass(frozen=True)
class GanetiDisk:
    index: int
    dump: str  # the dump's file name in the export directory
    size_mib: int
    name: str  # "" when none (Ganeti before 2.11 writes none)
    ivname: str  # "disk/0"


@dataclass(frozen=True)
class GanetiNic:
    index: int
    mac: str  # lower case
    ip: str
    mode: str  # bridged, routed, openvswitch; "" when not written
    link: str  # the bridge (bridged), the OVS switch, or a routing table
    network: str  # the Ganeti network's UUID (or name), "" for none
    vlan: str  # Ganeti's syntax: "10", ".10", ":10:20", ".10:20"
    name: str


@dataclass(frozen=True)
class GanetiExport:
    """What config.ini says, checked; the parameter sections as Ganeti wrote them (strings)."""

    version: int
    name: str
    os: str
    os_variant: str
    source_node: str
    timestamp: int
    memory_mib: int  # maxmem (older exports: memory)
    minmem_mib: int
    vcpus: int
    disk_template: str
    hypervisor: str
    disks: tuple[GanetiDisk, ...]
    nics: tuple[GanetiNic, ...]
    hvparams: Mapping[str, str]
    beparams: Mapping[str, str]
    osparams: Mapping[str, str]
    os_private_names: tuple[str, ...]  # the values are secrets: not kept
    tags: tuple[str, ...]


def read_config(text: str) -> GanetiExport:
    """The export config.ini's `text` checked; BadRequest naming what is wrong (every field problem at once)."""
    ini = configparser.ConfigParser(interpolation=None)  # Ganeti's own values never hold a '%' sequence
    try:
        ini.read_string(text, "config.ini")
    except configparser.Error as exc:
        first = str(exc).splitlines()[0]
        raise BadRequest(f"config.ini is not an INI file ({first}): give the config.ini of a directory "
                         "written by `gnt-backup export`") from None
    for section in ("export", "instance"):
        if not ini.has_section(section):
            raise BadRequest(f"config.ini has no [{section}] section: not a Ganeti export")
    exp, ins = ini["export"], ini["instance"]
    name = _get(ins, "name") or "(no name)"
    version, hypervisor = _get(exp, "version"), _get(ins, "hypervisor")
    if version and version != str(EXPORT_VERSION):
        raise BadRequest(f"Ganeti export of instance {name} has version {version!r}; "
                         f"Corral reads version {EXPORT_VERSION} (what Ganeti 2.x and 3.x write)")
    if hypervisor and hypervisor != "kvm":
        raise BadRequest(f"Ganeti export of instance {name} uses the {hypervisor} hypervisor; Corral runs only kvm")
    missing = [f"[{s}] {k}" for s, keys in REQUIRED.items() for k in keys if not _get(ini[s], k)]
    if not (_get(ins, "maxmem") or _get(ins, "memory")):
        missing.append("[instance] maxmem (or memory)")
    if missing:
        raise BadRequest(f"config.ini lacks {', '.join(missing)}: not a complete Ganeti export")
    if _get(exp, "compression") not in ("", "none"):
        raise BadRequest(f"Ganeti export of instance {name}: compression {_get(exp, 'compression')!r} is not "
                         "read; Corral reads uncompressed dumps (compression = none, what Ganeti writes)")
    problems: list[str] = []
    base, _, variant = _get(exp, "os").partition("+")
    memory_key = "maxmem" if _get(ins, "maxmem") else "memory"
    memory = _int(ins, memory_key, problems)
    vcpus = _int(ins, "vcpus", problems)
    disks = _disks(ins, problems)
    nic_list = _nics(ins, problems)
    timestamp = _int(exp, "timestamp", problems, 0) if _get(exp, "timestamp") else 0
    minmem = _int(ins, "minmem", problems) if _get(ins, "minmem") else memory
    if problems:
        raise BadRequest(f"Ganeti export of instance {name}: " + "; ".join(problems))
    sections = {s: dict(ini[s]) if ini.has_section(s) else {} for s in ("hypervisor", "backend", "os", "os_private")}
    return GanetiExport(
        version=EXPORT_VERSION, name=name, os=base, os_variant=variant, source_node=_get(exp, "source"),
        timestamp=timestamp, memory_mib=memory, minmem_mib=minmem, vcpus=vcpus,
        disk_template=_get(ins, "disk_template"), hypervisor=hypervisor, disks=disks, nics=nic_list,
        hvparams=sections["hypervisor"], beparams=sections["backend"], osparams=sections["os"],
        os_private_names=tuple(sections["os_private"]), tags=tuple(_get(ins, "tags").split()))


def to_add_request(export: GanetiExport, *, name: str | None = None, node: str | None = None,
                   template: str | None = None,
                   networks: Mapping[str, str] | None = None) -> tuple[dict[str, Any], list[str]]:
    """The `instance add` body for `export`, and in operator words each thing of it Corral does not take.

    `name`, `node`, `template` override the export's; `networks` maps a Ganeti
    network (UUID or name, as nicN_network says) to a Corral network."""
    notes: list[str] = []
    new_name = name or export.name
    if not checks.NAME_RE.match(new_name):
        raise BadRequest(f"instance name {new_name!r} is not a Corral instance name (lower-case letters, digits, "
                         "'-' and '.', at most 63 characters): give another with --name")
    if template is not None and template not in checks.DISK_TEMPLATES:
        raise BadRequest(f"disk template {template!r} is not one of {', '.join(checks.DISK_TEMPLATES)}")
    if template is None and export.disk_template not in TEMPLATES:
        raise BadRequest(f"Ganeti export of instance {export.name} has disk template {export.disk_template!r}, "
                         f"which Corral does not have (it has {', '.join(checks.DISK_TEMPLATES)}): "
                         "choose one with --template")
    if not export.disks:
        notes.append("the export has no disks; Corral gives the instance its default disk")
    osparams: dict[str, str] = {}
    for key, value in export.osparams.items():
        if checks.OS_PARAM_NAME_RE.match(key) and checks.OS_PARAM_VALUE_RE.match(value) \
                and len(value) <= checks.OS_PARAM_MAX_CHARS:
            osparams[key] = value
        else:
            notes.append(f"OS parameter {key} = {value[:80]!r}: not imported (Corral takes names of letters, "
                         f"digits, '_', '-' and values of {checks.OS_PARAM_VALUE_WORDS})")
    notes += [f"private OS parameter {key}: not imported (Corral has no private OS parameters; "
              "give it with --os-param if the OS needs it)" for key in export.os_private_names]
    bad_tags = [t for t in export.tags if not tags.TAG_RE.match(t)]
    notes += [f"tag {t!r}: not imported (a tag is {tags.TAG_WORDS})" for t in bad_tags]
    if export.minmem_mib != export.memory_mib:
        notes.append(f"minmem {export.minmem_mib} MiB: Corral does not balloon; the instance gets its maxmem, "
                     f"{export.memory_mib} MiB")
    for key, value in sorted(export.beparams.items()):
        if key not in _BE_READ and value.strip().lower() != _BE_DEFAULTS.get(key):
            notes.append(f"Ganeti backend parameter {key} = {value!r}: Corral has no such setting; not imported")
    request: dict[str, Any] = {
        "name": new_name,
        "os": export.os + (f"+{export.os_variant}" if export.os_variant else ""),
        "osparams": osparams,
        "disk_template": template or TEMPLATES[export.disk_template],
        "memory": export.memory_mib,
        "vcpus": export.vcpus,
        "disks": [{"size": d.size_mib, "format": "raw"} for d in export.disks],
        "nics": [map_nic(n, networks or {}, notes) for n in export.nics],
        "hvparams": map_hvparams(export.hvparams, notes),
        "tags": [t for t in export.tags if t not in bad_tags],
    }
    notes += [f"disk {d.index}: its name {d.name!r} is not kept (Corral's disks have no names)"
              for d in export.disks if d.name]
    if node:
        request["node"] = node
    return request, notes


def map_nic(nic: GanetiNic, networks: Mapping[str, str], notes: list[str]) -> dict[str, Any]:
    """One NIC of the request, keeping its MAC (the guest's interface names follow it)."""
    where = f"nic {nic.index} (mac {nic.mac})"
    out: dict[str, Any] = {"mac": nic.mac}
    if nic.network and nic.network in networks:
        out["network"] = networks[nic.network]
        if ":" in nic.ip:
            notes.append(f"{where}: IPv6 address {nic.ip} not imported: Corral's networks are IPv4")
        elif nic.ip:
            out["ip"] = nic.ip
    elif nic.network:
        notes.append(f"{where}: Ganeti network {nic.network!r}"
                     + (f" and its address {nic.ip}" if nic.ip else "")
                     + " not imported: name the Corral network it becomes, or add one later "
                     "(`corral instance modify --net`)")
    elif nic.ip:
        notes.append(f"{where}: address {nic.ip} not imported: Corral gives addresses only from a network")
    if "network" in out:  # the Corral network brings its bridge and VLAN
        pass
    elif nic.mode == "bridged" and nic.link:
        out.update(mode="bridged", bridge=nic.link)
        vlan = _VLAN_RE.match(nic.vlan)
        if vlan and 1 <= int(vlan.group(1)) <= 4094:
            out["vlan"] = int(vlan.group(1))
        elif nic.vlan:
            notes.append(f"{where}: VLAN {nic.vlan!r} not imported: Corral tags one VLAN (an access port, 1-4094)")
    else:
        out["mode"] = "user"
        notes.append(f"{where}: Ganeti mode {nic.mode or 'none'!r}" + (f" on {nic.link!r}" if nic.link else "")
                     + " has no Corral equivalent: imported as a user-mode NIC (`corral instance modify --net`)")
    if nic.name:
        notes.append(f"{where}: its name {nic.name!r} is not kept (Corral's NICs have no names)")
    return out


def map_hvparams(hv: Mapping[str, str], notes: list[str]) -> dict[str, Any]:
    """Corral hvparams with the same effect as Ganeti's KVM ones; each one without an equivalent in `notes`."""
    out: dict[str, Any] = {}

    def lost(key: str, why: str) -> None:
        notes.append(f"Ganeti hvparam {key} = {hv.get(key, '')!r}: {why}")

    def put(key: str, corral: str, table: Mapping[str, str] | None = None) -> None:
        value = hv[key].strip() if table is None else table.get(hv[key].strip().lower(), "")
        if table is not None and not value:
            return lost(key, f"Corral's {corral} takes only the equivalents of {', '.join(table)}; not imported")
        try:  # with what is already mapped: an initrd needs its kernel, cpu host needs kvm
            parse_hvparams({**out, corral: value})
        except HvParamError as exc:
            return lost(key, f"not imported ({'; '.join(exc.problems)})")
        out[corral] = value

    flag = {k: hv[k].strip().lower() for k in ("serial_console", "kvm_flag", "use_guest_agent") if k in hv}
    if "serial_console" in flag:
        out["serial_console"] = flag["serial_console"] == "true"
    if flag.get("use_guest_agent") == "true":  # off is Corral's default too
        out["guest_agent"] = True
    if flag.get("kvm_flag") in ("enabled", "disabled"):
        out["accel"] = "kvm" if flag["kvm_flag"] == "enabled" else "tcg"
    # Ganeti boots a kernel_path with root=, its arguments and the serial console's speed; without one it
    # boots the disk and ignores all four, as Corral does.
    if hv.get("kernel_path"):
        put("kernel_path", "kernel_path")
        if hv.get("initrd_path"):
            put("initrd_path", "initrd_path")
        args = [f"root={hv['root_path']}"] if hv.get("root_path") else []
        args += [hv.get("kernel_args", "")]
        if out.get("serial_console") and hv.get("serial_speed"):
            args.append(f"console=ttyS0,{hv['serial_speed']}")
        out["kernel_args"] = " ".join(a for a in args if a)
        if "kernel_path" not in out:
            del out["kernel_args"]
    for key, corral, table in (("boot_order", "boot", _BOOT), ("disk_type", "disk_bus", _DISK_BUS),
                               ("nic_type", "nic_model", _NIC_MODEL), ("disk_cache", "disk_cache", _CACHE)):
        if key in hv:
            put(key, corral, table)
    for key, corral, default in (("cpu_type", "cpu_model", "QEMU's default CPU"),
                                 ("machine_version", "machine", "QEMU's default machine, pc")):
        if hv.get(key):
            put(key, corral)
        elif key in hv:
            lost(key, f"empty ({default}); Corral's default {corral} applies")
    if "vnc_bind_address" in hv:
        bind = hv["vnc_bind_address"].strip()
        out["vnc"] = "off" if not bind else "localhost" if bind in ("127.0.0.1", "::1", "localhost") else "tcp"
        if bind and out["vnc"] == "tcp" and bind not in ("0.0.0.0", "::"):
            lost("vnc_bind_address", "Corral's VNC (vnc=tcp) listens on the node's own address")
    for key, value in sorted(hv.items()):
        if key in _MAPPED or key in _IGNORED or (key.startswith("spice_") and key != "spice_bind"):
            continue
        if key not in _UNMAPPED_DEFAULTS:
            lost(key, "unknown to this importer; not imported")
        elif value.strip().lower() not in _UNMAPPED_DEFAULTS[key]:
            lost(key, "Corral has no such setting; not imported")
    return out


def _get(section: configparser.SectionProxy, key: str) -> str:
    """A value as Ganeti reads it: stripped, and "None" (any case) meaning none."""
    value = (section.get(key) or "").strip()
    return "" if value.lower() == "none" else value


def _int(section: configparser.SectionProxy, key: str, problems: list[str], minimum: int = 1) -> int:
    value = _get(section, key)
    if not value.isascii() or not value.isdigit() or int(value) < minimum:
        what = "a whole number of MiB" if key.endswith(("size", "mem", "memory")) else "a whole number"
        problems.append(f"[{section.name}] {key}: {value!r} is not {what} (at least {minimum})")
        return 0
    return int(value)


def _indexed(section: configparser.SectionProxy, pattern: re.Pattern[str]) -> set[int]:
    return {int(m.group(1)) for key in section if (m := pattern.match(key))}


def _disks(ins: configparser.SectionProxy, problems: list[str]) -> tuple[GanetiDisk, ...]:
    """The diskN_ entries, which must be exactly disks 0 .. disk_count - 1."""
    count = _int(ins, "disk_count", problems, 0)
    found = sorted(_indexed(ins, _DISK_KEY))
    if found != list(range(count)):
        problems.append(f"disk_count is {count} but there are entries for disk{'s' if len(found) != 1 else ''} "
                        f"{', '.join(map(str, found)) or 'none'}: the export is incomplete (a disk that failed "
                        f"to export leaves a gap); export the instance again")
        return ()
    disks = []
    for i in found:
        dump = _get(ins, f"disk{i}_dump")
        if not _DUMP_RE.match(dump):
            problems.append(f"[instance] disk{i}_dump: {dump!r} is not a file name in the export directory")
        disks.append(GanetiDisk(i, dump, _int(ins, f"disk{i}_size", problems), _get(ins, f"disk{i}_name"),
                                _get(ins, f"disk{i}_ivname")))
    return tuple(disks)


def _nics(ins: configparser.SectionProxy, problems: list[str]) -> tuple[GanetiNic, ...]:
    """The nicN_ entries; Ganeti reads NICs while nicN_mac exists, so nic_count is checked against them."""
    found = sorted(_indexed(ins, _NIC_KEY))
    count = _int(ins, "nic_count", problems, 0) if _get(ins, "nic_count") else len(found)
    if found != list(range(count)):
        problems.append(f"nic_count is {count} but there are entries for NICs {', '.join(map(str, found)) or 'none'}")
        return ()
    out = []
    for i in found:
        mac, ip = _get(ins, f"nic{i}_mac").lower(), _get(ins, f"nic{i}_ip")
        if not nics.MAC_RE.match(mac):
            problems.append(f"[instance] nic{i}_mac: {mac!r} is not a MAC address (e.g. aa:00:00:12:34:56)")
        if ip:
            try:
                ip = str(ipaddress.ip_address(ip))
            except ValueError:
                problems.append(f"[instance] nic{i}_ip: {ip!r} is not an IP address (e.g. 192.0.2.10)")
        out.append(GanetiNic(i, mac, ip, *(_get(ins, f"nic{i}_{k}") for k in ("mode", "link", "network", "vlan",
                                                                             "name"))))
    return tuple(out)
