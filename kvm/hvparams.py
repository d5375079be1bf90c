"""Hypervisor parameters of an instance: one frozen value, validated whole.

Operators set these from the CLI as strings (``accel=tcg``,
``serial_console=no``) and the config stores them as JSON, so parsing
accepts both strings and native values and reports every problem in one
error: a typo and a bad value are fixed in one round trip, not two.
"""

import dataclasses
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

ACCELS = ("kvm", "tcg")
BOOT_DEVICES = ("disk", "cdrom", "network")
VNC_MODES = ("off", "localhost", "tcp")  # localhost: a unix socket; tcp: the node's address, a password
DISK_BUSES = ("virtio", "scsi", "ide")
DISK_CACHES = ("none", "writeback", "writethrough", "directsync", "unsafe")
NIC_MODELS = ("virtio", "e1000", "rtl8139")

_CHOICES: dict[str, tuple[str, ...]] = {
    "accel": ACCELS,
    "boot": BOOT_DEVICES,
    "vnc": VNC_MODES,
    "disk_bus": DISK_BUSES,
    "disk_cache": DISK_CACHES,
    "nic_model": NIC_MODELS,
}
_TRUE_WORDS = ("true", "yes", "on", "1")
_FALSE_WORDS = ("false", "no", "off", "0")
# QEMU option syntax: a machine is a bare name (options are Corral's to set);
# a CPU model may carry feature flags.
_MACHINE_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*\Z")
_CPU_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._,+=-]*\Z")
_INT_RANGES: dict[str, tuple[int, int]] = {"shutdown_timeout_s": (1, 3600), "hotplug_slots": (0, 16)}
# Where a kernel or initrd QEMU loads itself may come from: the guest reads an initrd's bytes,
# so any other host file (/etc/shadow) would be handed to whoever controls the guest.
DEFAULT_KERNEL_DIRS: tuple[str, ...] = ("/boot", "/var/cache/corral/guest")
KERNEL_FILE_PARAMS = ("kernel_path", "initrd_path")


@dataclass(frozen=True)
class HvParams:
    """How QEMU runs one instance; defaults suit a modern Linux guest."""

    accel: str = "kvm"
    machine: str = "q35"
    cpu_model: str = "max"
    kernel_path: str = ""
    initrd_path: str = ""
    kernel_args: str = ""
    boot: str = "disk"
    serial_console: bool = True
    vnc: str = "off"
    disk_bus: str = "virtio"
    disk_cache: str = "none"
    nic_model: str = "virtio"
    shutdown_timeout_s: int = 120
    # A channel to the QEMU guest agent (qemu-ga in the guest): snapshots and live exports freeze the guest's
    # file systems around their instant. Off by default, as Ganeti's use_guest_agent and Proxmox's agent: a
    # running instance migrates only to a QEMU with the same devices, so it changes at the next start.
    guest_agent: bool = False
    # Spare PCIe root ports of a q35 machine: at most this many disks and NICs hot-plugged at once.
    hotplug_slots: int = 4


HV_PARAM_NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(HvParams))
_FIELD_TYPES: dict[str, object] = {f.name: f.type for f in dataclasses.fields(HvParams)}


class HvParamError(ValueError):
    """Hypervisor parameters were rejected; ``problems`` lists every reason."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid hypervisor parameters: " + "; ".join(self.problems))


def parse_hvparams(values: Mapping[str, object], base: HvParams | None = None) -> HvParams:
    """Return ``base`` (or the defaults) overridden by ``values``.

    Raises HvParamError naming every unknown key and bad value at once.
    """
    start = base if base is not None else HvParams()
    problems: list[str] = []
    changes: dict[str, Any] = {}  # each value checked by _coerce
    for key, raw in values.items():
        if key not in HV_PARAM_NAMES:
            problems.append(
                f"unknown hypervisor parameter {key!r}; known: {', '.join(HV_PARAM_NAMES)}"
            )
            continue
        value, problem = _coerce(key, raw)
        if problem:
            problems.append(problem)
        else:
            changes[key] = value
    result = dataclasses.replace(start, **changes)
    problems += _check_consistency(result)
    if problems:
        raise HvParamError(problems)
    return result


def hvparams_to_dict(hv: HvParams) -> dict[str, object]:
    """Plain JSON-ready dict; ``parse_hvparams`` reads it back unchanged."""
    return dataclasses.asdict(hv)


def kernel_path_problems(hv: HvParams, dirs: tuple[str, ...] | list[str], where: str = "") -> list[str]:
    """Kernel and initrd paths that are not plainly inside one of ``dirs`` (no '..', '.' or '//').

    Only the path as written is judged: a symlink is resolved where the file is, on the node
    that starts QEMU (kvm.process checks that again before every start)."""
    problems = []
    for key in KERNEL_FILE_PARAMS:
        path = getattr(hv, key)
        if path and not within(path, dirs):
            problems.append(
                f"hypervisor parameter {key!r}: {path!r} is not a file in the kernel directories{where} "
                f"({', '.join(dirs) or 'none'}); put the kernel there, or add its directory to "
                "kernel_dirs in [paths] of agent.toml"
            )
    return problems


def within(path: str, dirs: tuple[str, ...] | list[str]) -> bool:
    """Whether ``path`` is written as a normal absolute path strictly below one of ``dirs``."""
    if not path.startswith("/") or posixpath.normpath(path) != path or path.startswith("//"):
        return False
    return any(path.startswith(posixpath.normpath(d).rstrip("/") + "/") for d in dirs if d.startswith("/"))


def _coerce(key: str, raw: object) -> tuple[object, str]:
    """Convert one value to its field's type; returns (value, problem)."""
    kind = _FIELD_TYPES[key]
    if kind is bool:
        return _coerce_bool(key, raw)
    if kind is int:
        return _coerce_int(key, raw)
    if not isinstance(raw, str):
        return None, f"hypervisor parameter {key!r}: {raw!r} is not a string"
    if key in _CHOICES and raw not in _CHOICES[key]:
        return None, (
            f"hypervisor parameter {key!r}: {raw!r} is not one of {', '.join(_CHOICES[key])}"
        )
    if key == "machine" and not _MACHINE_RE.match(raw):
        return None, (
            f"hypervisor parameter {key!r}: {raw!r} is not a machine type name "
            "(e.g. q35, pc, pc-q35-7.2)"
        )
    if key == "cpu_model" and not _CPU_RE.match(raw):
        return None, (
            f"hypervisor parameter {key!r}: {raw!r} is not a CPU model "
            "(e.g. max, host, qemu64, Haswell,+vmx)"
        )
    if key in ("kernel_path", "initrd_path") and raw and not raw.startswith("/"):
        return None, f"hypervisor parameter {key!r}: {raw!r} must be an absolute path"
    return raw, ""


def _coerce_bool(key: str, raw: object) -> tuple[object, str]:
    if isinstance(raw, bool):
        return raw, ""
    if isinstance(raw, str) and raw.lower() in _TRUE_WORDS:
        return True, ""
    if isinstance(raw, str) and raw.lower() in _FALSE_WORDS:
        return False, ""
    words = ", ".join(_TRUE_WORDS + _FALSE_WORDS)
    return None, f"hypervisor parameter {key!r}: {raw!r} is not a boolean ({words})"


def _coerce_int(key: str, raw: object) -> tuple[object, str]:
    value: int | None = None
    if isinstance(raw, int) and not isinstance(raw, bool):
        value = raw
    elif isinstance(raw, str) and raw.strip().lstrip("-").isdigit():
        value = int(raw.strip())
    if value is None:
        return None, f"hypervisor parameter {key!r}: {raw!r} is not a whole number"
    low, high = _INT_RANGES[key]
    if not low <= value <= high:
        return None, f"hypervisor parameter {key!r}: {value} is out of range {low}..{high}"
    return value, ""


def _check_consistency(hv: HvParams) -> list[str]:
    """Rules between parameters, checked after every value is valid alone."""
    problems: list[str] = []
    if hv.cpu_model.split(",")[0] == "host" and hv.accel != "kvm":
        problems.append(
            f"hypervisor parameter 'cpu_model': 'host' needs accel 'kvm' "
            f"(accel is {hv.accel!r}); use cpu_model 'max' with tcg"
        )
    if hv.initrd_path and not hv.kernel_path:
        problems.append(
            "hypervisor parameter 'initrd_path': set only with 'kernel_path' "
            "(QEMU loads an initrd only together with a kernel)"
        )
    if hv.kernel_args and not hv.kernel_path:
        problems.append(
            "hypervisor parameter 'kernel_args': set only with 'kernel_path' "
            "(kernel arguments are passed only to a kernel QEMU loads itself)"
        )
    return problems
