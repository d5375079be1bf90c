"""The QEMU command line of an instance, built as a pure function.

Nothing here touches the system: ``build_argv`` turns an instance's
description and its runtime paths into an argv list, so every
parameter combination is tested without starting QEMU. The choices
that matter operationally:

- QEMU daemonizes with a pidfile, so it outlives the agent that started it;
  the agent finds it again from the pidfile and the QMP socket.
- The serial console is a unix socket chardev that also writes a log file,
  so boot output is kept even when nobody is attached.
- Without a VGA device the machine runs with ``graphics=off``, which makes
  SeaBIOS print its messages ("No bootable device.") on the serial console.
- A pvpanic device plus ``-action panic=pause`` keeps a panicked guest in
  QMP status ``guest-panicked`` instead of exiting, so it is seen and reported.
- With hvparam ``guest_agent``, the guest agent's channel (a virtio-serial port
  named ``org.qemu.guest_agent.0`` whose host end is ``RunPaths.ga_socket``),
  so a qemu-ga in the guest can freeze its file systems around a snapshot or
  backup (kvm.guestagent). It is the last device on the PCI root bus: the
  devices before it keep the slots (and guest names) they had without it.
"""

import ipaddress
import re
import uuid as uuidlib
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from kvm.hvparams import HvParams

DISK_FORMATS = ("raw", "qcow2")
DISK_MEDIA = ("disk", "cdrom")
NIC_MODES = ("user", "bridged")
MAX_UNIX_SOCKET_PATH = 107  # sun_path is 108 bytes including the final NUL
# hvparam vnc=tcp: QEMU takes the first free port from VNC_PORTS (display = port - 5900), so instances
# of one node never collide and no port is recorded in the config (`corral instance console --vnc` asks QMP).
# VNC's own range: disk exports, migrations and DRBD take their ports from 11000 on (hostagent.master.decide.checks), and a
# display that took one of those first would make a mirror's export fail to listen.
VNC_PORTS = range(5900, 6900)
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}\Z")
_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}\Z")
_IFNAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,15}\Z")
_NIC_DEVICES = {"virtio": "virtio-net-pci", "e1000": "e1000", "rtl8139": "rtl8139"}


@dataclass(frozen=True)
class DiskSpec:
    """One disk image; ``media`` 'cdrom' attaches it read-only as a CD-ROM (``path`` "": the drive is
    empty, so a medium can be inserted later through QMP, see kvm.media).

    ``replicated``: the disk of a replicated template. The guest's device
    then sits on a quorum node that acknowledges a write only once both of
    its children took it (see kvm.blockmirror): the local image and, until
    a copy on another node joins, a sink of ``size_bytes`` (the image's
    virtual size, which the quorum requires its children to share).

    ``protocol``: QEMU's driver under the format, ``file`` for an image
    file, ``host_device`` for a block device (a logical volume).
    """

    path: str
    format: str
    media: str = "disk"
    replicated: bool = False
    size_bytes: int = 0
    protocol: str = "file"


@dataclass(frozen=True)
class NicSpec:
    """One network card; ``tap`` names the host tap device when bridged."""

    mac: str
    mode: str
    tap: str = ""


@dataclass(frozen=True)
class InstanceSpec:
    """Everything QEMU needs to run one instance on this node."""

    name: str
    uuid: str
    memory_mib: int
    vcpus: int
    hv: HvParams
    disks: tuple[DiskSpec, ...]
    nics: tuple[NicSpec, ...]
    # QEMU URI to receive a live migration on (kvm.migration.migration_uri); empty for a normal start.
    incoming: str = ""
    # With `incoming`: x509 credentials directory (ca-cert.pem, server-*.pem) and the only client
    # identity (certificate DN) whose migration stream is accepted; empty: no TLS.
    incoming_tls_dir: str = ""
    incoming_client: str = ""
    # hvparam vnc=tcp: the address VNC listens on (the node's), and the password QMP sets once QEMU is up
    # (never on the command line, which every local user can read in /proc).
    vnc_host: str = ""
    vnc_password: str = field(default="", repr=False)
    # A live migration's target: the disks and NICs the source has on its spare root ports (device id ->
    # port, kvm.hotplug.placement), so the target's devices sit where the arriving guest state expects them.
    placement: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class RunPaths:
    """Where one instance's runtime files live (the console log may persist)."""

    pidfile: str
    qmp_socket: str
    console_socket: str
    console_log: str

    @property
    def instance_dir(self) -> str:
        """Directory holding the pidfile and sockets, removed on cleanup."""
        return str(PurePosixPath(self.pidfile).parent)

    @property
    def vnc_socket(self) -> str:
        """The VNC server (hvparam vnc=localhost): a unix socket in the root-only instance directory."""
        return str(PurePosixPath(self.pidfile).parent / "vnc.sock")

    @property
    def guard_socket(self) -> str:
        """A second QMP monitor, on replicated instances only: the replication guard's own,
        held open for events, so it never waits for (or blocks) the main one."""
        return str(PurePosixPath(self.pidfile).parent / "guard.sock")

    @property
    def ga_socket(self) -> str:
        """The host end of the guest agent's virtio-serial port (kvm.guestagent speaks to qemu-ga there)."""
        return str(PurePosixPath(self.pidfile).parent / "qga.sock")


class SpecError(ValueError):
    """An instance cannot be described to QEMU; ``problems`` lists every reason."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid instance: " + "; ".join(self.problems))


def check_instance_name(name: str) -> str:
    """Return a problem with ``name`` or "" (names become paths and QEMU options)."""
    if _NAME_RE.match(name):
        return ""
    return (
        f"instance name {name!r} must be 1-63 characters of letters, digits, '.', '_' "
        "or '-', starting with a letter or digit"
    )


def run_paths(run_dir: str, name: str, log_dir: str | None = None) -> RunPaths:
    """Runtime files in <run_dir>/instances/<name>/; the log in ``log_dir`` if given.

    Keep ``log_dir`` on persistent storage so a console log survives a reboot
    of the node, while the run directory may be a tmpfs.
    """
    problem = check_instance_name(name)
    if problem:
        raise SpecError([problem])
    base = PurePosixPath(run_dir) / "instances" / name
    log = PurePosixPath(log_dir) / f"{name}.console.log" if log_dir else base / "console.log"
    return RunPaths(
        pidfile=str(base / "qemu.pid"),
        qmp_socket=str(base / "qmp.sock"),
        console_socket=str(base / "console.sock"),
        console_log=str(log),
    )


def check_spec(spec: InstanceSpec, paths: RunPaths) -> list[str]:
    """Every reason QEMU could not be given this instance, or an empty list."""
    name_problem = check_instance_name(spec.name)
    problems = [name_problem] if name_problem else []
    try:
        uuidlib.UUID(spec.uuid)
    except ValueError:
        problems.append(f"instance uuid {spec.uuid!r} is not a UUID")
    if spec.memory_mib < 16:
        problems.append(f"memory_mib {spec.memory_mib} is too small (at least 16)")
    if spec.vcpus < 1:
        problems.append(f"vcpus {spec.vcpus} must be at least 1")
    for index, disk in enumerate(spec.disks):
        if disk.format not in DISK_FORMATS:
            problems.append(
                f"disk {index}: format {disk.format!r} is not one of {', '.join(DISK_FORMATS)}"
            )
        if disk.media not in DISK_MEDIA:
            problems.append(
                f"disk {index}: media {disk.media!r} is not one of {', '.join(DISK_MEDIA)}"
            )
        if disk.protocol not in ("file", "host_device"):
            problems.append(f"disk {index}: protocol {disk.protocol!r} is not file or host_device")
        if not disk.path.startswith("/") and not (disk.media == "cdrom" and disk.path == ""):
            problems.append(f"disk {index}: path {disk.path!r} must be absolute")
    ide_devices = _count_ide_devices(spec)
    ide_limit = 6 if "q35" in spec.hv.machine else 4
    if ide_devices > ide_limit:
        problems.append(
            f"{ide_devices} IDE devices (CD-ROMs count) exceed the {ide_limit} machine "
            f"{spec.hv.machine!r} has; use disk_bus virtio or scsi"
        )
    for index, nic in enumerate(spec.nics):
        problems += _check_nic(index, nic)
    if spec.hv.vnc == "tcp" and not _is_ip(spec.vnc_host):
        problems.append(f"vnc=tcp needs the node's IP address to listen on, got {spec.vnc_host!r}")
    for label, path in (("QMP socket", paths.qmp_socket), ("console socket", paths.console_socket),
                        ("VNC socket", paths.vnc_socket), ("guest agent socket", paths.ga_socket)):
        if len(path.encode()) > MAX_UNIX_SOCKET_PATH:
            problems.append(
                f"{label} path {path!r} is longer than {MAX_UNIX_SOCKET_PATH} bytes; "
                "use a shorter run directory"
            )
    return problems


def build_argv(
    spec: InstanceSpec, paths: RunPaths, qemu_binary: str = "qemu-system-x86_64"
) -> list[str]:
    """The full argv of a daemonized QEMU for ``spec``; raises SpecError."""
    problems = check_spec(spec, paths)
    if problems:
        raise SpecError(problems)
    hv = spec.hv
    argv = [
        qemu_binary,
        "-name", f"guest={_opt(spec.name)},process=corral-{_opt(spec.name)}",
        "-uuid", spec.uuid,
        "-nodefaults",
        "-no-user-config",
        "-msg", "timestamp=on",
        "-accel", hv.accel,
        "-machine", _machine(hv),
        "-cpu", hv.cpu_model,
        "-m", str(spec.memory_mib),
        "-smp", str(spec.vcpus),
        "-chardev", f"socket,id=qmp,path={_opt(paths.qmp_socket)},server=on,wait=off",
        "-mon", "chardev=qmp,mode=control",
        *_guard_monitor(spec, paths),
        "-display", "none",
        "-device", "pvpanic",
        "-action", "panic=pause",
        "-daemonize",
        "-pidfile", paths.pidfile,
    ]
    argv += _serial(hv, paths)
    argv += _vnc(hv, paths, spec.vnc_host)
    argv += _kernel(hv)
    argv += _devices(spec)
    argv += _guest_agent(hv, paths) if hv.guest_agent else []
    if spec.incoming:
        argv += _incoming(spec)
    return argv


def _count_ide_devices(spec: InstanceSpec) -> int:
    """CD-ROMs use IDE unless the disks are on SCSI; disks too with disk_bus ide."""
    if spec.hv.disk_bus == "scsi":
        return 0
    return sum(1 for d in spec.disks if d.media == "cdrom" or spec.hv.disk_bus == "ide")


def _check_nic(index: int, nic: NicSpec) -> list[str]:
    problems = []
    if not _MAC_RE.match(nic.mac):
        problems.append(f"nic {index}: mac {nic.mac!r} is not like 52:54:00:12:34:56 (lower case)")
    if nic.mode not in NIC_MODES:
        problems.append(f"nic {index}: mode {nic.mode!r} is not one of {', '.join(NIC_MODES)}")
    if nic.mode == "bridged" and not _IFNAME_RE.match(nic.tap):
        problems.append(
            f"nic {index}: bridged mode needs a tap interface name of 1-15 characters, "
            f"got {nic.tap!r}"
        )
    return problems


def _incoming(spec: InstanceSpec) -> list[str]:
    """Wait for a migration stream; with TLS, accept it only from the named client certificate."""
    argv = []
    if spec.incoming_tls_dir:
        argv += [
            "-object", f"tls-creds-x509,id=migration-tls,dir={_opt(spec.incoming_tls_dir)},"
                       "endpoint=server,verify-peer=on",
            "-object", f"authz-simple,id=migration-authz,identity={_opt(spec.incoming_client)}",
            "-global", "migration.tls-creds=migration-tls",
            "-global", "migration.tls-authz=migration-authz",
        ]
    return argv + ["-incoming", spec.incoming]


def _opt(value: str) -> str:
    """Escape a value inside a QEMU option list, where ',,' is a literal comma."""
    return value.replace(",", ",,")


def _machine(hv: HvParams) -> str:
    if hv.vnc == "off":
        return f"{hv.machine},graphics=off"
    return hv.machine


def _serial(hv: HvParams, paths: RunPaths) -> list[str]:
    if not hv.serial_console:
        return []
    chardev = (
        f"socket,id=serial0,path={_opt(paths.console_socket)},server=on,wait=off,"
        f"logfile={_opt(paths.console_log)},logappend=on"
    )
    return ["-chardev", chardev, "-serial", "chardev:serial0"]


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _vnc(hv: HvParams, paths: RunPaths, host: str) -> list[str]:
    """vnc=localhost: a unix socket in the instance's directory (mode 0700): only root on the node
    reaches it (``ssh -L``, or the agent's relay). A loopback TCP port would let every local user and
    process in, and VNC's own password is 8 characters of DES. vnc=tcp: the node's address, a port of
    VNC_PORTS, and VNC authentication (the password is set through QMP; until then nobody gets in)."""
    if hv.vnc == "off":
        return []
    if hv.vnc == "tcp":
        bracketed = f"[{host}]" if ":" in host else host
        first, last = VNC_PORTS.start - 5900, VNC_PORTS.stop - 1 - 5900
        display = f"{bracketed}:{first},to={last},password=on"
    else:
        display = f"unix:{_opt(paths.vnc_socket)}"
    return [
        "-vnc", display,
        "-device", "VGA",
        "-device", "qemu-xhci,id=usb",
        "-device", "usb-tablet,bus=usb.0",
    ]


def _kernel(hv: HvParams) -> list[str]:
    if not hv.kernel_path:
        return []
    argv = ["-kernel", hv.kernel_path]
    if hv.initrd_path:
        argv += ["-initrd", hv.initrd_path]
    args = hv.kernel_args.split()
    if hv.serial_console and not any(a.split(",")[0] == "console=ttyS0" for a in args):
        args.append("console=ttyS0")
    if args:
        argv += ["-append", " ".join(args)]
    return argv


def _devices(spec: InstanceSpec) -> list[str]:
    """Disks and NICs, with boot indexes in the order ``hv.boot`` asks for."""
    hard = [(i, d) for i, d in enumerate(spec.disks) if d.media == "disk"]
    cdroms = [(i, d) for i, d in enumerate(spec.disks) if d.media == "cdrom"]
    nics = list(enumerate(spec.nics))
    groups = {"disk": len(hard), "cdrom": len(cdroms), "network": len(nics)}
    order = [spec.hv.boot] + [g for g in ("disk", "cdrom", "network") if g != spec.hv.boot]
    first_index: dict[str, int] = {}
    next_index = 1
    for group in order:
        first_index[group] = next_index
        next_index += groups[group]

    hv = spec.hv
    argv: list[str] = []
    if hv.disk_bus == "scsi" and spec.disks:
        argv += ["-device", "virtio-scsi-pci,id=scsi0"]
    ide_slots = iter(range(len(spec.disks)))
    for n, (i, disk) in enumerate(hard):
        slot = next(ide_slots) if hv.disk_bus == "ide" else -1
        argv += _hard_disk(i, disk, hv, first_index["disk"] + n, slot)
    for n, (_, disk) in enumerate(cdroms):
        slot = next(ide_slots) if hv.disk_bus != "scsi" else -1
        argv += _cdrom(n, disk, hv, first_index["cdrom"] + n, slot)
    for n, (i, nic) in enumerate(nics):
        argv += _nic(i, nic, hv, first_index["network"] + n)
    return _placed(argv, dict(spec.placement), hv)


def _placed(argv: list[str], placement: dict[str, str], hv: HvParams) -> list[str]:
    """The spare root ports after every device on the root bus (so those keep their PCI slots), then the
    devices a migration source has on those ports, each moved onto its port with what it needs (-blockdev,
    -drive, -netdev) moved along."""
    early: list[str] = []
    late: list[str] = []
    group: list[str] = []
    for arg in argv:
        group.append(arg)
        if len(group) % 2 == 0 and group[-2] == "-device":
            device_id = next((p[3:] for p in group[-1].split(",") if p.startswith("id=")), "")
            if device_id in placement:
                group[-1] += f",bus={placement[device_id]}"
                late += group
            else:
                early += group
            group = []
    return early + group + _hotplug_ports(hv) + late


def _ide_address(machine: str, slot: int) -> str:
    """q35's AHCI has six one-device buses; the PC's PIIX two buses of two."""
    if "q35" in machine:
        return f"bus=ide.{slot}"
    return f"bus=ide.{slot // 2},unit={slot % 2}"


def _hard_disk(
    index: int, disk: DiskSpec, hv: HvParams, bootindex: int, ide_slot: int
) -> list[str]:
    device = {
        "virtio": f"virtio-blk-pci,drive=disk{index}",
        "scsi": f"scsi-hd,bus=scsi0.0,drive=disk{index}",
        "ide": f"ide-hd,{_ide_address(hv.machine, ide_slot)},drive=disk{index}",
    }[hv.disk_bus]
    if disk.replicated:
        return _replicated_disk(index, disk, hv) + [
            "-device", f"{device},id={disk_device_id(index)},bootindex={bootindex}{_device_cache(hv)},werror=stop,rerror=stop"]
    protocol = "" if disk.protocol == "file" else f"file.driver={disk.protocol},"
    drive = (
        f"file={_opt(disk.path)},{protocol}format={disk.format},if=none,id=disk{index},"
        f"cache={hv.disk_cache},discard=unmap"
    )
    return ["-drive", drive, "-device", f"{device},id={disk_device_id(index)},bootindex={bootindex}"]


def disk_device_id(index: int) -> str:
    """The qdev id of disk ``index``'s device, the same at a cold start and when hot-plugged (kvm.hotplug)."""
    return f"disk{index}-dev"


def nic_device_id(index: int) -> str:
    """The qdev id of NIC ``index``'s device (its netdev is ``net<index>``)."""
    return f"net{index}-dev"


def hotplug_port(n: int) -> str:
    """The id of the n-th spare PCIe root port a q35 machine gets for hot-plugged disks and NICs."""
    return f"hotplug{n}"


def _hotplug_ports(hv: HvParams) -> list[str]:
    """q35's root bus takes no hot-plugged device: each one needs an empty root port, made at start.
    They come after every other device, so the cold-started devices keep their PCI slots (and the
    guest's names for them: vda, eth0, ...); a device hot-plugged into a port is named after them,
    as it is at the next start, where it sits on the root bus in index order. The PC machine's
    PCI bus takes hot-plugged devices itself."""
    if "q35" not in hv.machine:
        return []
    return [a for n in range(hv.hotplug_slots)
            for a in ("-device", f"pcie-root-port,id={hotplug_port(n)},chassis={n + 1}")]


# -drive's cache modes as -blockdev options: (cache.direct, cache.no-flush, guest write cache)
_CACHE = {"none": (True, False, True), "writeback": (False, False, True),
          "writethrough": (False, False, False), "directsync": (True, False, False),
          "unsafe": (False, True, True)}


def _replicated_disk(index: int, disk: DiskSpec, hv: HvParams) -> list[str]:
    """Image, format, sink and the quorum over them; the device attaches to node ``disk<i>``.

    A write or flush the quorum cannot complete on both children fails, and
    the device's ``werror=stop`` then pauses the guest with the request
    held for a retry: nothing is acknowledged that a child lacks.
    """
    if disk.size_bytes <= 0:
        raise ValueError(f"replicated disk {index} needs its virtual size")
    direct, no_flush, _ = _CACHE[hv.disk_cache]
    cache = f"cache.direct={_onoff(direct)},cache.no-flush={_onoff(no_flush)}"
    return [
        "-blockdev", f"driver={disk.protocol},filename={_opt(disk.path)},node-name=disk{index}-file,{cache},"
                     "discard=unmap",
        "-blockdev", f"driver={disk.format},file=disk{index}-file,node-name=disk{index}-local,"
                     f"{cache},discard=unmap",
        "-blockdev", f"driver=null-co,size={disk.size_bytes},node-name={sink_node(index)}",
        "-blockdev", f"driver=quorum,node-name=disk{index},vote-threshold=2,read-pattern=fifo,"
                     f"children.0=disk{index}-local,children.1={sink_node(index)}",
    ]


def _guard_monitor(spec: InstanceSpec, paths: RunPaths) -> list[str]:
    if not any(d.replicated for d in spec.disks):
        return []
    return ["-chardev", f"socket,id=guard,path={_opt(paths.guard_socket)},server=on,wait=off",
            "-mon", "chardev=guard,mode=control"]


GA_PORT_NAME = "org.qemu.guest_agent.0"  # the name qemu-ga looks for (/dev/virtio-ports/<name> in the guest)
_GA_PC_SLOT = "0x1f"


def _guest_agent(hv: HvParams, paths: RunPaths) -> list[str]:
    """The guest agent's channel: a virtio-serial controller with one port, its host end a unix socket that
    kvm.guestagent connects to when it needs the agent (QEMU keeps listening: ``wait=off``).

    It comes after every other device, the spare root ports included, so adding it moved no device the
    instance already had, and a migration source and target (same argv) put it in the same slot. On q35
    nothing is hot-plugged onto the root bus, so the next free slot is right. The PC machine hot-plugs
    onto its bus, into the first free slot, where a cold start later puts the device in index order: the
    controller takes the bus's last slot there, out of the way of both."""
    controller = "virtio-serial-pci,id=ga-serial"
    if "q35" not in hv.machine:
        controller += f",addr={_GA_PC_SLOT}"
    return [
        "-device", controller,
        "-chardev", f"socket,id=qga0,path={_opt(paths.ga_socket)},server=on,wait=off",
        "-device", f"virtserialport,bus=ga-serial.0,chardev=qga0,name={GA_PORT_NAME}",
    ]


def sink_node(index: int) -> str:
    """The node that stands in for the copy on another node while there is none."""
    return f"disk{index}-sink"


def _device_cache(hv: HvParams) -> str:
    return "" if _CACHE[hv.disk_cache][2] else ",write-cache=off"


def _onoff(value: bool) -> str:
    return "on" if value else "off"


def cdrom_device(n: int) -> str:
    """The qdev id of the n-th CD-ROM drive, which QMP's medium commands name (kvm.media)."""
    return f"cdrom{n}"


def _cdrom(
    n: int, disk: DiskSpec, hv: HvParams, bootindex: int, ide_slot: int
) -> list[str]:
    """CD-ROMs go on SCSI when the disks do, else on IDE (virtio-blk has no CD). Their ids are their
    own (cd<n>), apart from the disks', so a disk added live never takes a CD-ROM's name."""
    medium = f"file={_opt(disk.path)},format={disk.format}," if disk.path else ""
    drive = f"{medium}if=none,id=cd{n},media=cdrom,readonly=on"
    if hv.disk_bus == "scsi":
        device = f"scsi-cd,bus=scsi0.0,drive=cd{n}"
    else:
        device = f"ide-cd,{_ide_address(hv.machine, ide_slot)},drive=cd{n}"
    return ["-drive", drive, "-device", f"{device},id={cdrom_device(n)},bootindex={bootindex}"]


def _nic(index: int, nic: NicSpec, hv: HvParams, bootindex: int) -> list[str]:
    if nic.mode == "bridged":
        netdev = f"tap,id=net{index},ifname={nic.tap},script=no,downscript=no"
    else:
        netdev = f"user,id=net{index}"
    device = f"{_NIC_DEVICES[hv.nic_model]},netdev=net{index},id={nic_device_id(index)},mac={nic.mac},bootindex={bootindex}"
    return ["-netdev", netdev, "-device", device]
