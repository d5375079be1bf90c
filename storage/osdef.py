"""OS definitions (Ganeti OS API 20 scripts) and qcow2 OS images.

Corral reads Ganeti's on-disk OS definitions unchanged, so existing ones
(debootstrap, noop, site scripts) keep working; images are the fast path
for new instances (a copy instead of running an installer).
"""

from __future__ import annotations

import datetime
import os
import stat
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO, ClassVar

from storage import runner
from storage.base import check_instance_name
from storage.errors import (
    CommandTimeout,
    OsParametersInvalid,
    OsScriptFailed,
    OsScriptTimeout,
    UnknownOs,
    UnknownOsParameters,
    UnknownVariant,
)

__all__ = [
    "DiskEnv",
    "NetworkEnv",
    "NicEnv",
    "OsCatalog",
    "OsDefinition",
    "OsEntry",
    "OsImage",
    "OsParametersInvalid",
    "OsScriptFailed",
    "OsScriptTimeout",
    "UnknownOs",
    "UnknownOsParameters",
    "UnknownVariant",
    "discover",
    "lookup",
    "os_environment",
    "run_create",
    "split_os_name",
    "verify_parameters",
]

API_VERSION = 20
# Ganeti requires all of these for API 20 (create_untrusted is not used by Corral).
REQUIRED_SCRIPTS = ("create", "export", "import", "rename", "verify")
SCRIPT_PATH = "/sbin:/bin:/usr/sbin:/usr/bin"
QCOW2_MAGIC = b"QFI\xfb"
LOG_TAIL_LINES = 20


@dataclass(frozen=True)
class OsDefinition:
    """A directory of OS scripts found in the search path."""

    name: str
    path: str
    api_versions: tuple[int, ...]
    variants: tuple[str, ...]
    parameters: tuple[tuple[str, str], ...]
    kind: ClassVar[str] = "script"

    @property
    def parameter_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.parameters)

    def script(self, name: str) -> str:
        return os.path.join(self.path, name)

    def variant_for(self, requested: str | None) -> str | None:
        """The variant the scripts get: as requested, else the first listed.

        None when the OS has no variants and none was requested.
        """
        if requested is None:
            return self.variants[0] if self.variants else None
        if requested not in self.variants:
            raise UnknownVariant(self.name, requested, self.variants)
        return requested


@dataclass(frozen=True)
class OsImage:
    """A qcow2 base image; new disks are independent copies of it."""

    name: str
    path: str
    kind: ClassVar[str] = "image"


OsEntry = OsDefinition | OsImage


@dataclass(frozen=True)
class OsCatalog:
    """What discover() found: usable entries, and why others are not usable."""

    entries: dict[str, OsEntry]
    problems: list[str]
    invalid: dict[str, list[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class DiskEnv:
    """One disk as an OS script sees it."""

    path: str
    size_mib: int
    uuid: str
    name: str = ""
    access: str = "rw"
    backend: str = "file:loop"


@dataclass(frozen=True)
class NetworkEnv:
    """The network a NIC is on, as an OS script sees it (Ganeti's NIC_n_NETWORK_*; IPv4 only)."""

    name: str
    uuid: str
    subnet: str
    gateway: str = ""
    mac_prefix: str = ""
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class NicEnv:
    """One network interface as an OS script sees it."""

    mac: str
    mode: str
    link: str
    ip: str | None = None
    uuid: str = ""
    name: str = ""
    vlan: int | None = None
    network: NetworkEnv | None = None


def split_os_name(name: str) -> tuple[str, str | None]:
    """'debian+bookworm' -> ('debian', 'bookworm'); 'debian' -> ('debian', None)."""
    base, sep, variant = name.partition("+")
    return base, (variant if sep else None)


def discover(search_paths: Sequence[str], image_paths: Sequence[str]) -> OsCatalog:
    """Scan OS script directories and image directories.

    As in Ganeti, the first directory of a name in search-path order is the
    definition, even when it is invalid (later ones are shadowed). A script
    OS and an image of the same name: the script wins.
    """
    entries: dict[str, OsEntry] = {}
    problems: list[str] = []
    invalid: dict[str, list[str]] = {}
    scripts_seen: dict[str, str] = {}
    for base in search_paths:
        for name in _listdir(base):
            path = os.path.join(base, name)
            if name in scripts_seen or not os.path.isdir(path):
                continue
            scripts_seen[name] = path
            osdef, errors = _load_definition(name, path)
            if osdef is None:
                invalid[name] = [f"{path}: {e}" for e in errors]
                problems.extend(invalid[name])
            else:
                entries[name] = osdef
    for base in image_paths:
        for filename in _listdir(base):
            path = os.path.join(base, filename)
            if not filename.endswith(".qcow2") or not os.path.isfile(path):
                continue
            name = filename[: -len(".qcow2")]
            error = _image_problem(name, path, scripts_seen, entries)
            if error:
                problems.append(f"{path}: {error}")
            else:
                entries[name] = OsImage(name, path)
    return OsCatalog(entries, problems, invalid)


def lookup(catalog: OsCatalog, name: str) -> OsEntry:
    """The entry for 'os' or 'os+variant'; UnknownOs / UnknownVariant otherwise."""
    base, variant = split_os_name(name)
    entry = catalog.entries.get(base)
    if entry is None:
        raise UnknownOs(name, sorted(catalog.entries), catalog.invalid.get(base, []))
    if variant is not None:
        if isinstance(entry, OsImage):
            raise UnknownVariant(base, variant, ())
        entry.variant_for(variant)
    return entry


def os_environment(
    osdef: OsDefinition,
    *,
    instance_name: str,
    instance_uuid: str,
    primary_node: str,
    secondary_nodes: Sequence[str],
    hypervisor: str = "kvm",
    hvparams: Mapping[str, str],
    beparams: Mapping[str, str],
    disks: Sequence[DiskEnv],
    nics: Sequence[NicEnv],
    variant: str | None,
    osparams: Mapping[str, str],
    debug: bool = False,
    reinstall: bool = False,
) -> dict[str, str]:
    """The complete environment of an OS script (API 20), nothing inherited.

    variant None means the OS default (first in variants.list).
    """
    env = _core_env(osdef, variant, osparams, debug)
    env.update(
        INSTANCE_NAME=instance_name,
        INSTANCE_OS=osdef.name if variant is None else f"{osdef.name}+{variant}",
        INSTANCE_UUID=instance_uuid,
        INSTANCE_PRIMARY_NODE=primary_node,
        INSTANCE_SECONDARY_NODES=" ".join(secondary_nodes),
        HYPERVISOR=hypervisor,
        DISK_COUNT=str(len(disks)),
        NIC_COUNT=str(len(nics)),
    )
    env.update({f"INSTANCE_HV_{k}": v for k, v in hvparams.items()})
    env.update({f"INSTANCE_BE_{k}": v for k, v in beparams.items()})
    for i, disk in enumerate(disks):
        env.update(_disk_env(i, disk, hvparams.get("disk_type")))
    for i, nic in enumerate(nics):
        env.update(_nic_env(i, nic, hvparams.get("nic_type")))
    if reinstall:
        env["INSTANCE_REINSTALL"] = "1"
    return env


async def verify_parameters(
    osdef: OsDefinition,
    osparams: Mapping[str, str],
    *,
    variant: str | None = None,
    timeout_s: float = 60.0,
) -> None:
    """Ask the OS whether osparams are acceptable (`verify parameters`).

    Names missing from parameters.list are refused without running anything.
    """
    known = osdef.parameter_names
    unknown = sorted(k for k in osparams if k not in known)
    if unknown:
        raise UnknownOsParameters(osdef.name, unknown, known)
    result = await runner.run(
        [osdef.script("verify"), "parameters"],
        timeout_s=timeout_s,
        env=_core_env(osdef, variant, osparams, debug=False),
        cwd=osdef.path,
        check=False,
    )
    if result.rc != 0:
        output = (result.stdout + result.stderr).strip()
        raise OsParametersInvalid(osdef.name, output or f"verify exited with status {result.rc}")


async def run_create(
    osdef: OsDefinition, env: Mapping[str, str], log_dir: str, timeout_s: float
) -> str:
    """Run the OS `create` script with exactly env; return its log path.

    The log is `<log_dir>/add-<os>-<instance>-<timestamp>.log`; a non-zero
    exit raises OsScriptFailed carrying the last lines of it.
    """
    return await _run_script(osdef, "create", dict(env), f"add-{osdef.name}-{env['INSTANCE_NAME']}",
                             log_dir, timeout_s)


async def run_rename(
    osdef: OsDefinition, env: Mapping[str, str], old_name: str, log_dir: str, timeout_s: float
) -> str:
    """Run the OS `rename` script (Ganeti OS API: OLD_INSTANCE_NAME beside the usual environment, whose
    INSTANCE_NAME is the new name); return its log path. A non-zero exit raises OsScriptFailed."""
    return await _run_script(osdef, "rename", {**env, "OLD_INSTANCE_NAME": old_name},
                             f"rename-{osdef.name}-{old_name}-{env['INSTANCE_NAME']}", log_dir, timeout_s)


async def run_import(osdef: OsDefinition, env: Mapping[str, str], index: int, device: str, dump_path: str,
                     log_dir: str, timeout_s: float, on_open: Callable[[BinaryIO], None] | None = None) -> str:
    """Run the OS `import` script for disk `index` (Ganeti OS API: IMPORT_DEVICE, IMPORT_INDEX), the dump an
    export script wrote on its stdin; return its log path. A non-zero exit raises OsScriptFailed. `on_open`
    gets the dump's file, whose position the script shares: how far it has read (for progress)."""
    with open(dump_path, "rb") as dump:
        if on_open is not None:
            on_open(dump)
        return await _run_script(osdef, "import", {**env, "IMPORT_DEVICE": device, "IMPORT_INDEX": str(index)},
                                 f"import-{osdef.name}-{env['INSTANCE_NAME']}-disk{index}", log_dir, timeout_s,
                                 stdin=dump)


async def run_export(osdef: OsDefinition, env: Mapping[str, str], index: int, device: str, dump_path: str,
                     log_dir: str, timeout_s: float) -> str:
    """Run the OS `export` script for disk `index` (Ganeti OS API: EXPORT_DEVICE, EXPORT_INDEX), its stdout
    written to dump_path (what the `import` script reads back); return its log path (stderr)."""
    with open(dump_path, "wb") as dump:
        return await _run_script(osdef, "export", {**env, "EXPORT_DEVICE": device, "EXPORT_INDEX": str(index)},
                                 f"export-{osdef.name}-{env['INSTANCE_NAME']}-disk{index}", log_dir, timeout_s,
                                 stdout=dump)


async def _run_script(osdef: OsDefinition, script: str, env: dict[str, str], log_name: str, log_dir: str,
                      timeout_s: float, stdin: BinaryIO | None = None, stdout: BinaryIO | None = None) -> str:
    """One OS script, its output in `<log_dir>/<log_name>-<timestamp>.log`; OsScriptFailed/Timeout."""
    check_instance_name(env["INSTANCE_NAME"])
    os.makedirs(log_dir, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y-%m-%d_%H_%M_%S_%f")
    log_path = os.path.join(log_dir, f"{log_name}-{stamp}.log")
    try:
        result = await runner.run([osdef.script(script)], timeout_s=timeout_s, env=env, cwd=osdef.path,
                                  log_path=log_path, check=False, stdin=stdin, stdout=stdout)
    except CommandTimeout:
        raise OsScriptTimeout(osdef.name, script, timeout_s, log_path,
                              runner.tail_lines(log_path, LOG_TAIL_LINES)) from None
    if result.rc != 0:
        raise OsScriptFailed(osdef.name, script, result.rc, log_path, runner.tail_lines(log_path, LOG_TAIL_LINES))
    return log_path


def osparam_env_name(param: str) -> str:
    """'root-fs' -> 'OSP_ROOT_FS' (Ganeti's mapping)."""
    return "OSP_" + param.upper().replace("-", "_")


def _core_env(
    osdef: OsDefinition, variant: str | None, osparams: Mapping[str, str], debug: bool
) -> dict[str, str]:
    env = {
        "OS_API_VERSION": str(API_VERSION),
        "OS_NAME": osdef.name,
        "DEBUG_LEVEL": "1" if debug else "0",
        "PATH": SCRIPT_PATH,
    }
    resolved = osdef.variant_for(variant)
    if resolved is not None:
        env["OS_VARIANT"] = resolved
    env.update({osparam_env_name(k): v for k, v in osparams.items()})
    return env


def _disk_env(index: int, disk: DiskEnv, frontend: str | None) -> dict[str, str]:
    prefix = f"DISK_{index}_"
    env = {
        prefix + "PATH": disk.path,
        prefix + "ACCESS": disk.access,
        prefix + "SIZE": str(disk.size_mib),
        prefix + "BACKEND_TYPE": disk.backend,
    }
    if disk.uuid:
        env[prefix + "UUID"] = disk.uuid
    if disk.name:
        env[prefix + "NAME"] = disk.name
    if frontend:
        env[prefix + "FRONTEND_TYPE"] = frontend
    return env


def _nic_env(index: int, nic: NicEnv, frontend: str | None) -> dict[str, str]:
    prefix = f"NIC_{index}_"
    env = {prefix + "MAC": nic.mac, prefix + "MODE": nic.mode, prefix + "LINK": nic.link}
    if nic.mode == "bridged":
        env[prefix + "BRIDGE"] = nic.link
    if nic.ip:
        env[prefix + "IP"] = nic.ip
    if nic.uuid:
        env[prefix + "UUID"] = nic.uuid
    if nic.name:
        env[prefix + "NAME"] = nic.name
    if frontend:
        env[prefix + "FRONTEND_TYPE"] = frontend
    if nic.vlan is not None:
        env[prefix + "VLAN"] = str(nic.vlan)
    net = nic.network
    if net is not None:
        env.update({prefix + "NETWORK_NAME": net.name, prefix + "NETWORK_UUID": net.uuid,
                    prefix + "NETWORK_SUBNET": net.subnet, prefix + "NETWORK_TAGS": " ".join(net.tags)})
        if net.gateway:
            env[prefix + "NETWORK_GATEWAY"] = net.gateway
        if net.mac_prefix:
            env[prefix + "NETWORK_MAC_PREFIX"] = net.mac_prefix
    return env


def _listdir(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except (FileNotFoundError, NotADirectoryError):
        return []


def _read_lines(path: str) -> list[str]:
    with open(path, encoding="utf-8", errors="replace") as f:
        return [line.strip() for line in f if line.strip()]


def _load_definition(name: str, path: str) -> tuple[OsDefinition | None, list[str]]:
    """Parse one OS directory; (definition, []) or (None, every problem found)."""
    if "+" in name:
        return None, ["the name contains '+', which separates OS and variant; rename it"]
    api_file = os.path.join(path, "ganeti_api_version")
    try:
        api_lines = _read_lines(api_file)
    except FileNotFoundError:
        return None, ["missing ganeti_api_version"]
    except OSError as exc:
        return None, [f"cannot read ganeti_api_version: {exc.strerror}"]
    try:
        api_versions = tuple(int(line) for line in api_lines)
    except ValueError:
        return None, [f"ganeti_api_version must hold one number per line, got {api_lines!r}"]
    if API_VERSION not in api_versions:
        found = ", ".join(map(str, api_versions)) or "none"
        return None, [f"supports API {found} only; Corral needs {API_VERSION}"]

    errors = [e for e in (_script_problem(path, s) for s in REQUIRED_SCRIPTS) if e]
    parameters: list[tuple[str, str]] = []
    try:
        for line in _read_lines(os.path.join(path, "parameters.list")):
            param, *description = line.split(None, 1)
            parameters.append((param, description[0] if description else ""))
    except FileNotFoundError:
        errors.append("missing parameters.list (required by API 20; it may be empty)")
    except OSError as exc:
        errors.append(f"cannot read parameters.list: {exc.strerror}")
    variants: list[str] = []
    try:
        variants = _read_lines(os.path.join(path, "variants.list"))
    except FileNotFoundError:
        pass
    except OSError as exc:
        errors.append(f"cannot read variants.list: {exc.strerror}")
    if errors:
        return None, errors
    return OsDefinition(name, path, api_versions, tuple(variants), tuple(parameters)), []


def _script_problem(os_dir: str, script: str) -> str | None:
    path = os.path.join(os_dir, script)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return f"{script} is missing"
    except OSError as exc:
        return f"cannot stat {script}: {exc.strerror}"
    if not stat.S_ISREG(st.st_mode):
        return f"{script} is not a regular file"
    if not st.st_mode & stat.S_IXUSR:
        return f"{script} is not executable (chmod u+x {path})"
    return None


def _image_problem(
    name: str, path: str, scripts_seen: Mapping[str, str], entries: Mapping[str, OsEntry]
) -> str | None:
    if "+" in name:
        return "the name contains '+', which separates OS and variant; rename the file"
    if name in scripts_seen:
        return f"OS {name!r} is also the script OS at {scripts_seen[name]}; using the script"
    if name in entries:
        return f"OS {name!r} is already the image {entries[name].path}; using that one"
    try:
        with open(path, "rb") as f:
            magic = f.read(len(QCOW2_MAGIC))
    except OSError as exc:
        return f"cannot read: {exc.strerror}"
    if magic != QCOW2_MAGIC:
        return "not a qcow2 image (convert it with qemu-img convert -O qcow2)"
    return None
