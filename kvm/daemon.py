"""The one place in kvm that runs programs: QEMU binaries that daemonize with a pidfile.

``qemu-system-x86_64`` and ``qemu-storage-daemon`` both fork away, write a
pidfile and outlive the agent, so one seam serves both: ``launch`` runs the
program until its parent has exited (argv only, always a timeout, in its
own session, so a timeout or a cancelled caller kills only what it started),
and the rest finds the daemon again by its pidfile, signals it, waits for it
to go and removes its files. A pid read from a pidfile is trusted only when
that live process's command line names this very pidfile, so a recycled pid
never gets a signal meant for a VM or an export.

Errors, for ``launch`` only (callers translate them to their own words)::

    LaunchError              the program did not daemonize (argv)
    ├── LaunchNotStarted     could not be executed at all (error)
    ├── LaunchTimeout        killed after timeout_s
    └── LaunchFailed         exited non-zero (rc, stderr_tail)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import signal
from collections.abc import Callable, Sequence
from pathlib import Path

import psutil

log = logging.getLogger(__name__)

_POLL_INTERVAL_S = 0.05
_REAP_TIMEOUT_S = 5.0
_TAIL_LINES = 20


class LaunchError(Exception):
    """A daemonizing program did not get as far as running in the background."""

    def __init__(self, argv: Sequence[str], message: str) -> None:
        super().__init__(message)
        self.argv = list(argv)


class LaunchNotStarted(LaunchError):
    """``argv[0]`` could not be executed; ``error`` is the OS's reason."""

    def __init__(self, argv: Sequence[str], error: OSError) -> None:
        self.error = error
        self.reason = error.strerror or str(error)
        super().__init__(argv, f"could not execute {argv[0]}: {self.reason} (is it installed and executable?)")


class LaunchTimeout(LaunchError):
    """The program had not daemonized after ``timeout_s`` and was killed."""

    def __init__(self, argv: Sequence[str], timeout_s: float) -> None:
        self.timeout_s = timeout_s
        super().__init__(argv, f"{argv[0]} did not finish within {timeout_s:g} s and was killed")


class LaunchFailed(LaunchError):
    """The program exited with ``rc`` before daemonizing; its last stderr lines say why."""

    def __init__(self, argv: Sequence[str], rc: int, stderr_tail: str) -> None:
        self.rc = rc
        self.stderr_tail = stderr_tail
        super().__init__(argv, f"{' '.join(argv[:2])} exited with status {rc}: "
                               f"{stderr_tail.strip() or '(no output)'}")


async def launch(argv: Sequence[str], timeout_s: float,
                 preexec_fn: Callable[[], None] | None = None) -> None:
    """Run ``argv`` until its parent process exits, which a daemonizing QEMU does once it is up.

    ``preexec_fn`` runs in the child before exec (niceness, say). Raises a
    LaunchError; on timeout or cancellation the child's process group is
    killed first.
    """
    args = tuple(argv)
    log.debug("launch: %s", shlex.join(args))
    try:
        proc = await asyncio.create_subprocess_exec(
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
            preexec_fn=preexec_fn,
        )
    except OSError as exc:
        raise LaunchNotStarted(args, exc) from exc
    try:
        _, stderr = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        _kill_group(proc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), _REAP_TIMEOUT_S)
        raise LaunchTimeout(args, timeout_s) from None
    except BaseException:
        _kill_group(proc)
        raise
    rc = await proc.wait()  # already exited: communicate() returned
    if rc != 0:
        tail = (stderr or b"").decode("utf-8", errors="replace").splitlines()[-_TAIL_LINES:]
        raise LaunchFailed(args, rc, "\n".join(tail))


def pidfile_process(pidfile: str, flag: str) -> psutil.Process | None:
    """The live process named in ``pidfile``, if its command line has ``flag pidfile`` (else None)."""
    try:
        pid = int(Path(pidfile).read_text().strip())
    except (OSError, ValueError):
        return None
    if pid <= 0:
        return None
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        argv = proc.cmdline()
    except psutil.Error:
        return None
    if not any(a == flag and b == pidfile for a, b in zip(argv, argv[1:])):
        return None
    return proc


def alive(proc: psutil.Process) -> bool:
    """True while the process exists and is not a zombie waiting to be reaped."""
    try:
        return bool(proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE)  # psutil has no type hints
    except psutil.Error:
        return False


def send_signal(proc: psutil.Process, signum: int) -> bool:
    """Signal ``proc``; False if it was gone already (psutil also refuses a pid reused since)."""
    try:
        proc.send_signal(signum)
    except psutil.NoSuchProcess:
        return False
    return True


async def wait_gone(proc: psutil.Process, timeout_s: float) -> bool:
    """Wait until ``proc`` has exited, for at most ``timeout_s``; True if it did.

    Through a pidfd, readable the moment the process exits, so a stop inside a guest's pause (an export
    ended at a migration's switchover) costs no polling interval; polled where pidfds are missing."""
    try:
        fd = os.pidfd_open(proc.pid)
    except OSError:  # gone already (ESRCH), or a kernel without pidfds
        return await _poll_gone(proc, timeout_s)
    loop = asyncio.get_running_loop()
    exited: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not exited.done():
            exited.set_result(None)
    try:
        loop.add_reader(fd, readable)
        if not alive(proc):  # the pid seen is checked after the pidfd is open: a recycled one is not waited on
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(exited, timeout_s)
    finally:
        loop.remove_reader(fd)
        os.close(fd)
    return await _poll_gone(proc, _POLL_INTERVAL_S * 2)  # exited, or a zombie whose parent reaps it now


async def _poll_gone(proc: psutil.Process, timeout_s: float) -> bool:
    """Poll until ``proc`` has exited, for at most ``timeout_s``; True if it did."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    for _ in range(int(timeout_s / _POLL_INTERVAL_S) + 2):
        if not alive(proc):
            return True
        remaining = deadline - loop.time()
        if remaining <= 0:
            break
        await asyncio.sleep(min(_POLL_INTERVAL_S, remaining))
    return not alive(proc)


def remove_files(*paths: str) -> None:
    """A stopped daemon's pidfile and sockets go; one already gone is fine."""
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    """The launcher and whatever it forked before leaving the session; the daemon itself is not in it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
