"""The one place in storage that runs programs.

Argv lists only (never a shell, so no quoting bugs), always a timeout, and
the child gets its own process group so a timeout or a cancelled caller
kills the whole tree an OS script may have started, not just its leader.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import signal
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO

from storage.errors import CommandFailed, CommandNotStarted, CommandTimeout

log = logging.getLogger(__name__)

_TAIL_LINES = 20
_REAP_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class CommandResult:
    """What a finished program left behind (stdout/stderr empty when logged to a file)."""

    argv: tuple[str, ...]
    rc: int
    stdout: str
    stderr: str


async def run(
    argv: Sequence[str],
    *,
    timeout_s: float,
    env: dict[str, str] | None = None,
    cwd: str | None = None,
    stdin: bytes | BinaryIO | None = None,
    stdout: BinaryIO | None = None,
    log_path: str | None = None,
    check: bool = True,
) -> CommandResult:
    """Run argv to completion within timeout_s.

    env, when given, is the child's whole environment (nothing inherited).
    stdin is bytes to write, or an open file the child reads itself (a dump of gigabytes); stdout, an open
    file the child writes itself (an OS export script's dump). With log_path, stdout (unless given) and
    stderr are appended to that file instead of being captured. Raises CommandFailed on non-zero exit when check is true,
    CommandTimeout after killing the process group, CommandNotStarted when
    the program cannot be executed.
    """
    args = tuple(argv)
    log.debug("run: %s", shlex.join(args))
    with _output(log_path) as out:
        try:
            proc = await asyncio.create_subprocess_exec(
                *args,
                stdin=asyncio.subprocess.PIPE if isinstance(stdin, bytes) else stdin or asyncio.subprocess.DEVNULL,
                stdout=stdout or out,
                stderr=(out if stdout is not None and log_path else
                        asyncio.subprocess.STDOUT if log_path else asyncio.subprocess.PIPE),
                env=env,
                cwd=cwd,
                start_new_session=True,
            )
        except OSError as exc:
            raise CommandNotStarted(args, exc.strerror or str(exc)) from exc
        try:
            raw_out, raw_err = await asyncio.wait_for(
                proc.communicate(stdin if isinstance(stdin, bytes) else None), timeout_s)
        except asyncio.TimeoutError:
            await _kill(proc)
            raise CommandTimeout(args, timeout_s) from None
        except BaseException:
            _kill_group(proc)
            raise
    rc = await proc.wait()  # already exited: communicate() returned
    result = CommandResult(args, rc, _text(raw_out), _text(raw_err))
    log.debug("exit %d: %s", rc, args[0])
    if check and rc != 0:
        tail = tail_lines(log_path) if log_path else result.stderr.splitlines()[-_TAIL_LINES:]
        raise CommandFailed(args, rc, "\n".join(tail))
    return result


def tail_lines(path: str, count: int = _TAIL_LINES) -> list[str]:
    """Last `count` lines of a log file; [] when it cannot be read."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            data = f.read()
    except OSError:
        return []
    return _text(data).splitlines()[-count:]


@contextlib.contextmanager
def _output(log_path: str | None) -> Iterator[int | BinaryIO]:
    if log_path is None:
        yield asyncio.subprocess.PIPE
        return
    with open(log_path, "ab") as f:
        yield f


def _text(data: bytes | None) -> str:
    return data.decode("utf-8", errors="replace") if data else ""


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


async def _kill(proc: asyncio.subprocess.Process) -> None:
    _kill_group(proc)
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(proc.wait(), _REAP_TIMEOUT_S)
