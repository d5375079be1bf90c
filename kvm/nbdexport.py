"""The secondary's side of the `mirror` template: an NBD export of its disk copy.

One ``qemu-storage-daemon`` per exported disk serves the file over NBD on
the node's replication address, to the primary's QEMU, which mirrors every
guest write into it. Choices that matter:

- TLS is mandatory, with x509 credentials from the cluster CA and
  ``verify-peer=on``, and an ``authz-simple`` object accepts exactly one
  client identity: the primary's certificate, so no other node (or anyone
  else on the replication network) can read or write the copy.
- ``writethrough=on`` makes the daemon flush after every write: QEMU's
  mirror does not pass the guest's flushes on to its target, so without it
  an acknowledged write could sit in the secondary's page cache.
- No ``max-connections`` limit: after a primary crash the secondary may
  keep a half-open connection for a long time, and a limit of one would then
  refuse the primary's reconnection.
- The daemon locks the image, so a QEMU on this node cannot open the copy
  while it is exported (stop the export before failing over to it).
- It daemonizes once it listens and writes a pidfile; like QEMU, it is
  launched and found again through ``kvm.daemon``, so a pid read back is
  trusted only if that live process was started with this pidfile.

It lives beside ``kvm.blockmirror``, the primary's side, because both drive
QEMU binaries; the storage templates only make the files it serves.

The TLS directory holds QEMU's file names: ``link_tls_dir`` makes one from
the node's own certificate and key (symlinks, so renewals carry over).

Errors: ``ExportError`` is the base of ``InvalidExportSpec`` (every
problem listed, also a ValueError), ``ExportStartFailed`` (it died right after
starting) and ``ExportStopFailed`` (it survived SIGKILL); a daemon that does
not start at all raises ``kvm.daemon.LaunchError`` with its stderr.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import signal
from dataclasses import dataclass

import psutil

from kvm import daemon

log = logging.getLogger(__name__)

FORMATS = ("raw", "qcow2")
PROTOCOLS = ("file", "host_device")  # QEMU refuses a block device opened with the file driver
_EXPORT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
_START_TIMEOUT_S = 30.0
# QEMU's file names for an x509 credentials directory, and what each holds.
TLS_FILES = {
    "ca-cert.pem": "ca",
    "server-cert.pem": "cert",
    "server-key.pem": "key",
    "client-cert.pem": "cert",
    "client-key.pem": "key",
}


class ExportError(Exception):
    """Base of the errors of an NBD export (the hostagent answers them as storage errors)."""


class InvalidExportSpec(ExportError, ValueError):
    """An export cannot be described to qemu-storage-daemon; ``problems`` says why."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid NBD export: " + "; ".join(self.problems))


class ExportStartFailed(ExportError):
    """The daemon reported a successful start, yet no live process holds ``pidfile``."""

    def __init__(self, export_name: str, pidfile: str) -> None:
        self.export_name = export_name
        self.pidfile = pidfile
        super().__init__(
            f"NBD export {export_name!r}: qemu-storage-daemon exited right after starting "
            f"(no live process behind {pidfile}); run its argv by hand to see why"
        )


class ExportStopFailed(ExportError):
    """The export daemon ``pid`` survived SIGKILL."""

    def __init__(self, pidfile: str, pid: int) -> None:
        self.pidfile = pidfile
        self.pid = pid
        super().__init__(
            f"NBD export daemon pid {pid} ({pidfile}) did not die after SIGKILL; "
            "check for a process stuck in the kernel (state D)"
        )


@dataclass(frozen=True)
class NbdExportSpec:
    """One disk copy served to one client.

    ``client_identity`` is the distinguished name QEMU sees in the
    primary's certificate, subject attributes in certificate order, e.g.
    ``CN=n1,OU=corral-node`` for a Corral node certificate of node n1.
    ``tls_dir`` holds ca-cert.pem, server-cert.pem and server-key.pem.
    """

    image_path: str
    fmt: str
    host: str
    port: int
    export_name: str
    pidfile: str
    tls_dir: str
    client_identity: str
    writethrough: bool = True
    protocol: str = "file"  # "host_device" for a block device (a logical volume)


def check_export_spec(spec: NbdExportSpec) -> list[str]:
    """Every reason the daemon could not serve ``spec``, or an empty list."""
    problems = []
    if spec.fmt not in FORMATS:
        problems.append(f"format {spec.fmt!r} is not one of {', '.join(FORMATS)}")
    if spec.protocol not in PROTOCOLS:
        problems.append(f"protocol {spec.protocol!r} is not one of {', '.join(PROTOCOLS)}")
    for label, path in (
        ("image_path", spec.image_path), ("pidfile", spec.pidfile), ("tls_dir", spec.tls_dir)
    ):
        if not path.startswith("/"):
            problems.append(f"{label} {path!r} must be absolute")
    try:
        ipaddress.ip_address(spec.host)
    except ValueError:
        problems.append(f"host {spec.host!r} must be an IP address (the replication address)")
    if not 0 < spec.port < 65536:
        problems.append(f"port {spec.port} must be 1-65535")
    if not _EXPORT_NAME_RE.match(spec.export_name):
        problems.append(
            f"export name {spec.export_name!r} must be 1-128 letters, digits, '.', '_' or '-'"
        )
    if not spec.client_identity.strip():
        problems.append("client_identity is empty; give the primary's certificate DN")
    return problems


def build_export_argv(spec: NbdExportSpec, binary: str = "qemu-storage-daemon") -> list[str]:
    """The daemon's argv; raises InvalidExportSpec."""
    problems = check_export_spec(spec)
    if problems:
        raise InvalidExportSpec(problems)
    return [
        binary,
        "--daemonize",
        "--pidfile", spec.pidfile,
        "--object",
        f"tls-creds-x509,id=tls0,dir={_opt(spec.tls_dir)},endpoint=server,verify-peer=on",
        "--object", f"authz-simple,id=authz0,identity={_opt(spec.client_identity)}",
        "--blockdev",
        f"driver={spec.protocol},node-name=file0,filename={_opt(spec.image_path)},discard=unmap",
        "--blockdev", f"driver={spec.fmt},node-name=disk0,file=file0,discard=unmap",
        "--nbd-server",
        f"addr.type=inet,addr.host={spec.host},addr.port={spec.port},"
        "tls-creds=tls0,tls-authz=authz0",
        "--export",
        f"type=nbd,id=export0,node-name=disk0,name={spec.export_name},writable=on,"
        f"writethrough={'on' if spec.writethrough else 'off'}",
    ]


def link_tls_dir(tls_dir: str, ca_cert: str, cert: str, key: str) -> None:
    """Make ``tls_dir`` a QEMU credentials directory pointing at the node's files.

    One directory serves both ends (the node certificate is valid for
    server and client use). Idempotent; the key itself is never copied.
    """
    os.makedirs(tls_dir, mode=0o700, exist_ok=True)
    sources = {"ca": ca_cert, "cert": cert, "key": key}
    for name, kind in TLS_FILES.items():
        link = os.path.join(tls_dir, name)
        target = os.path.abspath(sources[kind])
        if os.path.islink(link) and os.readlink(link) == target:
            continue
        tmp = f"{link}.tmp"
        if os.path.lexists(tmp):
            os.unlink(tmp)
        os.symlink(target, tmp)
        os.replace(tmp, link)


def export_pid(pidfile: str) -> int | None:
    """Pid of the live daemon started with ``pidfile``, or None (stale files ignored)."""
    proc = _pidfile_process(pidfile)
    return proc.pid if proc else None


def is_running(pidfile: str) -> bool:
    """Whether the daemon of ``pidfile`` is alive."""
    return _pidfile_process(pidfile) is not None


async def start_export(
    spec: NbdExportSpec,
    *,
    binary: str = "qemu-storage-daemon",
    timeout_s: float = _START_TIMEOUT_S,
) -> int:
    """Start serving ``spec`` unless already served; return the daemon's pid.

    The daemon's parent exits only once the server listens, so the export
    is reachable when this returns. A daemon that cannot start (port in
    use, unreadable image or credentials) raises kvm.daemon.LaunchFailed
    with its stderr.
    """
    argv = build_export_argv(spec, binary)
    running = export_pid(spec.pidfile)
    if running is not None:
        log.debug("NBD export %r: already served by pid %d", spec.export_name, running)
        return running
    os.makedirs(os.path.dirname(spec.pidfile), mode=0o700, exist_ok=True)
    await daemon.launch(argv, timeout_s)
    pid = export_pid(spec.pidfile)
    if pid is None:
        raise ExportStartFailed(spec.export_name, spec.pidfile)
    log.info(
        "NBD export %r of %s on %s:%d started (pid %d)",
        spec.export_name, spec.image_path, spec.host, spec.port, pid,
    )
    return pid


async def stop_export(pidfile: str, timeout_s: float = 10.0) -> bool:
    """Stop the daemon of ``pidfile``: SIGTERM, then SIGKILL after ``timeout_s``.

    Returns False when nothing was running (idempotent). The pidfile is
    removed either way.
    """
    proc = _pidfile_process(pidfile)
    if proc is None:
        daemon.remove_files(pidfile)
        return False
    daemon.send_signal(proc, signal.SIGTERM)
    if not await daemon.wait_gone(proc, timeout_s):
        log.warning("NBD export pid %d ignored SIGTERM for %g s, killing it", proc.pid, timeout_s)
        daemon.send_signal(proc, signal.SIGKILL)
        if not await daemon.wait_gone(proc, 5.0):
            raise ExportStopFailed(pidfile, proc.pid)
    daemon.remove_files(pidfile)
    log.info("NBD export daemon pid %d (%s) stopped", proc.pid, pidfile)
    return True


def _opt(value: str) -> str:
    """Escape a value inside a QEMU option list, where ',,' is a literal comma."""
    return value.replace(",", ",,")


def _pidfile_process(pidfile: str) -> psutil.Process | None:
    """The live daemon started with ``pidfile``, if any."""
    return daemon.pidfile_process(pidfile, "--pidfile")
