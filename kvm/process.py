"""Lifecycle of the QEMU processes of one node: start, find, stop, reset.

QEMU runs daemonized with a pidfile, so it survives the agent: a restarted
(or SIGKILLed) agent finds its instances again with ``discover()``. The
launch, the pidfile check and the signals are ``kvm.daemon``'s. Every wait
is bounded; every operation is idempotent so a restarted agent or a new
master can simply send it again.

Errors: ``QemuStartError`` (start failed, nothing left behind),
``QemuStopError`` (the process survived SIGKILL), ``InstanceNotRunning``
(reset of a stopped instance), ``InstanceStillRunning`` (cleanup of a live
one); QMP failures surface as ``kvm.qmp.QmpError``.
"""

import asyncio
import dataclasses
import logging
import os
import re
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil

from kvm import daemon
from kvm.cmdline import InstanceSpec, RunPaths, SpecError, build_argv, run_paths
from kvm.hvparams import KERNEL_FILE_PARAMS
from kvm.media import set_vnc_password
from kvm.qmp import Qmp, QmpError

log = logging.getLogger(__name__)

STATUS_STOPPED = "stopped"
STATUS_UNKNOWN = "unknown"
_POLL_INTERVAL_S = 0.05
_QUIT_WAIT_S = 5.0
_KILL_WAIT_S = 5.0
ACPI_REPRESS_S = 3.0  # the power button again after this long: a guest still booting drops a press
_ANSI_RE = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|[@-~])")  # CSI sequences, 2-byte escapes


class QemuStartError(Exception):
    """QEMU for ``name`` did not start; no process or runtime file is left."""

    def __init__(self, name: str, reason: str, stderr_tail: str) -> None:
        self.name = name
        self.reason = reason
        self.stderr_tail = stderr_tail
        detail = f": {stderr_tail}" if stderr_tail else ""
        super().__init__(f"instance {name!r}: QEMU did not start ({reason}){detail}")


class QemuStopError(Exception):
    """The QEMU of ``name`` (``pid``) would not die, not even from SIGKILL."""

    def __init__(self, name: str, pid: int, reason: str) -> None:
        self.name = name
        self.pid = pid
        self.reason = reason
        super().__init__(
            f"instance {name!r}: QEMU pid {pid} did not stop ({reason}); "
            "check for a process stuck in the kernel (state D) on this node"
        )


class InstanceNotRunning(Exception):
    """An operation needs the instance's QEMU, and there is none."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"instance {name!r} is not running on this node; start it first")


class InstanceStillRunning(Exception):
    """Runtime files of a live instance must stay: they are how it is found."""

    def __init__(self, name: str, pid: int) -> None:
        self.name = name
        self.pid = pid
        super().__init__(f"instance {name!r} is still running as pid {pid}; stop it first")


class QemuManager:
    """Starts and stops this node's QEMU processes under ``run_dir``."""

    def __init__(
        self,
        run_dir: str,
        log_dir: str | None = None,
        qemu_binary: str = "qemu-system-x86_64",
        *,
        launch_timeout_s: float = 30.0,
        qmp_timeout_s: float = 5.0,
        qmp_ready_timeout_s: float = 10.0,
        guest_nice: int | None = None,
        kernel_dirs: Sequence[str] | None = None,
    ) -> None:
        """``kernel_dirs``: the only directories a kernel or initrd QEMU loads may be in, after
        resolving symlinks (None: anywhere, for tests of this package alone)."""
        self.run_dir = os.path.abspath(run_dir)
        self.kernel_dirs = None if kernel_dirs is None else tuple(kernel_dirs)
        self.guest_nice = guest_nice  # QEMU's niceness when this process runs at another one (None: inherit)
        self.log_dir = os.path.abspath(log_dir) if log_dir else None
        self.qemu_binary = qemu_binary
        self.launch_timeout_s = launch_timeout_s
        self.qmp_timeout_s = qmp_timeout_s
        self.qmp_ready_timeout_s = qmp_ready_timeout_s
        self._locks: dict[str, asyncio.Lock] = {}

    def paths(self, name: str) -> RunPaths:
        """Runtime file locations of instance ``name``."""
        return run_paths(self.run_dir, name, self.log_dir)

    async def start(self, spec: InstanceSpec) -> int:
        """Start ``spec`` unless it already runs; return the QEMU pid either way."""
        async with self._lock(spec.name):
            running = self.find(spec.name)
            if running is not None:
                log.debug("instance %r: already running as pid %d", spec.name, running)
                return running
            paths = self.paths(spec.name)
            if self.kernel_dirs is not None:
                spec = resolved_kernel(spec, self.kernel_dirs)
            try:
                argv = build_argv(spec, paths, self.qemu_binary)
            except SpecError as exc:
                raise QemuStartError(spec.name, str(exc), "") from exc
            _remove_runtime_files(paths)
            os.makedirs(paths.instance_dir, mode=0o700, exist_ok=True)
            os.makedirs(os.path.dirname(paths.console_log), exist_ok=True)
            try:
                await self._launch(spec.name, argv)
                proc = _pidfile_process(paths)
                if proc is None:
                    raise QemuStartError(spec.name, "QEMU exited right after daemonizing", "")
                await self._wait_qmp_ready(spec.name, proc, paths)
                if spec.vnc_password:
                    await self._set_vnc_password(spec.name, paths, spec.vnc_password)
            except BaseException:
                await self._kill_leftover(paths)
                _remove_runtime_files(paths)
                raise
            log.info("instance %r: started QEMU pid %d", spec.name, proc.pid)
            return int(proc.pid)  # psutil has no type hints

    def find(self, name: str) -> int | None:
        """Pid of the live QEMU of ``name``, or None (stale pidfiles are not trusted)."""
        proc = _pidfile_process(self.paths(name))
        return proc.pid if proc else None

    def discover(self) -> dict[str, int]:
        """All instances whose QEMU runs under this run directory, by name."""
        found: dict[str, int] = {}
        instances = Path(self.run_dir) / "instances"
        if not instances.is_dir():
            return found
        for entry in sorted(instances.iterdir()):
            try:
                pid = self.find(entry.name)
            except SpecError:
                continue
            if pid is not None:
                found[entry.name] = pid
        return found

    async def status(self, name: str) -> str:
        """'stopped', QMP's run state (running, paused, guest-panicked, ...), or 'unknown'.

        'unknown' means the process lives but QMP does not answer in time
        (QEMU hung, stopped by a signal, or its monitor is busy).
        """
        paths = self.paths(name)
        if _pidfile_process(paths) is None:
            return STATUS_STOPPED
        try:
            async with await Qmp.connect(paths.qmp_socket, self.qmp_timeout_s) as qmp:
                return await qmp.status()
        except QmpError as exc:
            if _pidfile_process(paths) is None:
                return STATUS_STOPPED
            log.warning("instance %r: QEMU is alive but QMP failed: %s", name, exc.reason)
            return STATUS_UNKNOWN

    async def stop(self, name: str, timeout_s: float, force: bool = False) -> str:
        """Stop ``name``: 'acpi' if the guest powered off, 'hard' if killed, or 'not-running'.

        Without ``force`` the guest gets an ACPI power-button press and
        ``timeout_s`` to power off; then (or at once with ``force``) QEMU is
        told to quit, and SIGKILLed if it does not. Runtime files are removed;
        the console log is kept.
        """
        async with self._lock(name):
            paths = self.paths(name)
            proc = _pidfile_process(paths)
            if proc is None:
                _remove_runtime_files(paths)
                return "not-running"
            how = "hard"
            if not force and await self._acpi_stop(name, proc, paths, timeout_s):
                how = "acpi"
            else:
                await self._hard_stop(name, proc, paths)
            _remove_runtime_files(paths)
            log.info("instance %r: QEMU pid %d stopped (%s)", name, proc.pid, how)
            return how

    async def reset(self, name: str) -> None:
        """Hard reboot of the guest, like pressing the reset button."""
        async with self._lock(name):
            paths = self.paths(name)
            if _pidfile_process(paths) is None:
                raise InstanceNotRunning(name)
            async with await Qmp.connect(paths.qmp_socket, self.qmp_timeout_s) as qmp:
                await qmp.reset()
            log.info("instance %r: reset", name)

    async def vnc_address(self, name: str) -> str | None:
        """'127.0.0.1:5900' style VNC address of a running instance, None without VNC."""
        paths = self.paths(name)
        if _pidfile_process(paths) is None:
            raise InstanceNotRunning(name)
        async with await Qmp.connect(paths.qmp_socket, self.qmp_timeout_s) as qmp:
            return await qmp.vnc_address()

    async def _set_vnc_password(self, name: str, paths: RunPaths, password: str) -> None:
        """Without it a vnc=tcp display lets nobody in: that QEMU still runs, the failure is logged."""
        try:
            async with await Qmp.connect(paths.qmp_socket, self.qmp_timeout_s) as qmp:
                await set_vnc_password(qmp, password)
        except QmpError as exc:
            log.warning("instance %r: the VNC password was not set, so its display lets nobody in: %s",
                        name, exc.reason)

    def console_log_tail(self, name: str, lines: int = 20) -> list[str]:
        """Last ``lines`` lines of the serial console log, terminal escapes removed."""
        return _tail(self.paths(name).console_log, lines)

    def cleanup(self, name: str) -> None:
        """Remove the runtime files of a stopped instance; the console log stays."""
        paths = self.paths(name)
        proc = _pidfile_process(paths)
        if proc is not None:
            raise InstanceStillRunning(name, proc.pid)
        _remove_runtime_files(paths)

    def _set_guest_nice(self) -> None:
        """In the forked child, before exec: every QEMU thread then starts at the guests' niceness."""
        assert self.guest_nice is not None
        os.setpriority(os.PRIO_PROCESS, 0, self.guest_nice)

    def _lock(self, name: str) -> asyncio.Lock:
        """One lifecycle operation at a time per instance."""
        return self._locks.setdefault(name, asyncio.Lock())

    async def _launch(self, name: str, argv: list[str]) -> None:
        """Run QEMU until it has daemonized (its parent exits once devices are up)."""
        log.debug("instance %r: exec %s", name, argv)
        try:
            await daemon.launch(argv, self.launch_timeout_s,
                                None if self.guest_nice is None else self._set_guest_nice)
        except daemon.LaunchNotStarted as exc:
            reason = f"cannot run {argv[0]!r}: {exc.error}; install qemu-system-x86 or fix qemu_binary"
            raise QemuStartError(name, reason, "") from exc
        except daemon.LaunchTimeout as exc:
            raise QemuStartError(
                name, f"QEMU did not daemonize within {self.launch_timeout_s:g} s", ""
            ) from exc
        except daemon.LaunchFailed as exc:
            raise QemuStartError(name, f"QEMU exited with status {exc.rc}", exc.stderr_tail) from exc

    async def _wait_qmp_ready(self, name: str, proc: psutil.Process, paths: RunPaths) -> None:
        """Bounded retries until QMP answers query-status."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.qmp_ready_timeout_s
        attempts = max(1, int(self.qmp_ready_timeout_s / _POLL_INTERVAL_S))
        reason = "no attempt made"
        for _ in range(attempts):
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                async with await Qmp.connect(paths.qmp_socket, remaining) as qmp:
                    await qmp.status()
                return
            except QmpError as exc:
                reason = exc.reason
            if not daemon.alive(proc):
                raise QemuStartError(name, "QEMU exited during startup", "")
            await asyncio.sleep(_POLL_INTERVAL_S)
        raise QemuStartError(
            name, f"QMP did not answer within {self.qmp_ready_timeout_s:g} s: {reason}", ""
        )

    async def _acpi_stop(
        self, name: str, proc: psutil.Process, paths: RunPaths, timeout_s: float
    ) -> bool:
        """Press the power button and wait; False if the guest cannot or did not obey.

        The button is pressed again every ACPI_REPRESS_S: a guest still booting (its kernel has not
        enabled ACPI yet, or no daemon listens) drops a press, and one press only would then wait out
        the whole timeout and hard-stop a guest that would have powered off.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        pressed = False
        while True:
            try:
                async with await Qmp.connect(paths.qmp_socket, self.qmp_timeout_s) as qmp:
                    state = await qmp.status()
                    if state == "running":
                        await qmp.powerdown()
            except QmpError as exc:
                if not pressed:
                    log.warning("instance %r: ACPI power-down not sent: %s", name, exc.reason)
                    return False
                state = "no answer"  # QEMU may be exiting after the last press: wait for it as for one press
            if state != "running":
                if pressed:
                    return await daemon.wait_gone(proc, max(deadline - loop.time(), 0.0))
                log.info("instance %r: guest is %s, skipping ACPI power-down", name, state)
                return False
            pressed = True
            remaining = deadline - loop.time()
            if await daemon.wait_gone(proc, min(ACPI_REPRESS_S, max(remaining, 0.0))):
                return True
            if remaining <= ACPI_REPRESS_S:
                break
        log.info("instance %r: guest ignored ACPI power-down for %g s", name, timeout_s)
        return False

    async def _hard_stop(self, name: str, proc: psutil.Process, paths: RunPaths) -> None:
        """QMP quit (clean QEMU exit, disks flushed), then SIGKILL."""
        try:
            async with await Qmp.connect(paths.qmp_socket, self.qmp_timeout_s) as qmp:
                await qmp.quit()
        except QmpError as exc:
            log.warning("instance %r: QMP quit failed: %s", name, exc.reason)
        if await daemon.wait_gone(proc, _QUIT_WAIT_S):
            return
        log.warning("instance %r: sending SIGKILL to QEMU pid %d", name, proc.pid)
        if not daemon.send_signal(proc, signal.SIGKILL):
            return
        if not await daemon.wait_gone(proc, _KILL_WAIT_S):
            raise QemuStopError(name, proc.pid, f"still alive {_KILL_WAIT_S:g} s after SIGKILL")

    async def _kill_leftover(self, paths: RunPaths) -> None:
        """After a failed start, make sure no half-started QEMU keeps running."""
        proc = _pidfile_process(paths)
        if proc is None:
            return
        if daemon.send_signal(proc, signal.SIGKILL):
            await daemon.wait_gone(proc, _KILL_WAIT_S)


def resolved_kernel(spec: InstanceSpec, dirs: Sequence[str]) -> InstanceSpec:
    """``spec`` with its kernel and initrd paths resolved (symlinks, '..'), each a regular file
    inside one of ``dirs``; QemuStartError otherwise. QEMU is given the resolved path, so a
    link changed after this check cannot point it elsewhere."""
    real_dirs = [os.path.realpath(d).rstrip("/") + "/" for d in dirs]
    changes: dict[str, Any] = {}
    problems: list[str] = []
    for key in KERNEL_FILE_PARAMS:
        path = getattr(spec.hv, key)
        if not path:
            continue
        real = os.path.realpath(path)
        if not any(real.startswith(d) for d in real_dirs):
            shown = f"{path!r}" if real == path else f"{path!r} (which is {real!r})"
            problems.append(f"hypervisor parameter {key!r}: {shown} is not in the kernel directories of "
                            f"this node ({', '.join(dirs) or 'none'}; kernel_dirs in [paths] of agent.toml)")
        elif not os.path.isfile(real):
            problems.append(f"hypervisor parameter {key!r}: {path!r} is not a regular file on this node")
        else:
            changes[key] = real
    if problems:
        raise QemuStartError(spec.name, "; ".join(problems), "")
    return dataclasses.replace(spec, hv=dataclasses.replace(spec.hv, **changes))


def _pidfile_process(paths: RunPaths) -> psutil.Process | None:
    """The live process named by the pidfile, if it is this instance's QEMU."""
    return daemon.pidfile_process(paths.pidfile, "-pidfile")


def _remove_runtime_files(paths: RunPaths) -> None:
    """Pidfile and sockets go; the console log (maybe in the same dir) stays."""
    daemon.remove_files(paths.pidfile, paths.qmp_socket, paths.console_socket, paths.ga_socket)
    try:
        os.rmdir(paths.instance_dir)
    except OSError:
        pass


def _tail(path: str, lines: int) -> list[str]:
    """Last ``lines`` lines of a text file that may hold terminal escapes."""
    if lines <= 0:
        return []
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max(65536, lines * 512)))
            data = f.read()
    except FileNotFoundError:
        return []
    text = _ANSI_RE.sub("", data.decode("utf-8", errors="replace")).replace("\r", "")
    return text.splitlines()[-lines:]


