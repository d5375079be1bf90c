"""storage.runner against real processes."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import pytest

from storage.errors import CommandFailed, CommandNotStarted, CommandTimeout
from storage.runner import run

pytestmark = pytest.mark.integration

PY = sys.executable


def _alive(pid: int) -> bool:
    """True while pid exists and is not a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _wait_until_gone(pid: int, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    for _ in range(500):
        if not _alive(pid):
            return True
        if time.monotonic() > deadline:
            break
        time.sleep(0.01)
    return False


async def test_run_captures_stdout_and_stderr() -> None:
    result = await run(
        [PY, "-c", "import sys; print('out'); print('err', file=sys.stderr)"], timeout_s=10
    )

    assert (result.rc, result.stdout, result.stderr) == (0, "out\n", "err\n")


async def test_non_zero_exit_raises_command_failed_with_stderr_tail() -> None:
    script = "import sys\nfor i in range(50): print(f'line {i}', file=sys.stderr)\nsys.exit(3)"

    with pytest.raises(CommandFailed) as info:
        await run([PY, "-c", script], timeout_s=10)

    assert info.value.rc == 3
    assert info.value.stderr_tail.splitlines() == [f"line {i}" for i in range(30, 50)]


async def test_check_false_returns_the_failed_result() -> None:
    result = await run([PY, "-c", "raise SystemExit(4)"], timeout_s=10, check=False)

    assert result.rc == 4


async def test_timeout_kills_the_process_and_its_children(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    script = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen(['sleep', '60'])\n"
        f"open({str(pidfile)!r}, 'w').write(str(child.pid))\n"
        "time.sleep(60)\n"
    )
    started = time.monotonic()

    with pytest.raises(CommandTimeout) as info:
        await run([PY, "-c", script], timeout_s=1.0)

    assert info.value.timeout_s == 1.0
    assert time.monotonic() - started < 10
    assert _wait_until_gone(int(pidfile.read_text()))


async def test_cancelled_caller_kills_the_process(tmp_path: Path) -> None:
    pidfile = tmp_path / "self.pid"
    script = f"import os, time\nopen({str(pidfile)!r}, 'w').write(str(os.getpid()))\ntime.sleep(60)"
    task = asyncio.create_task(run([PY, "-c", script], timeout_s=60))
    for _ in range(500):
        if pidfile.exists() and pidfile.read_text():
            break
        await asyncio.sleep(0.01)

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert _wait_until_gone(int(pidfile.read_text()))


async def test_given_env_is_the_whole_environment() -> None:
    result = await run(["/usr/bin/env"], timeout_s=10, env={"ONLY": "this"})

    assert result.stdout == "ONLY=this\n"


async def test_log_path_receives_stdout_and_stderr(tmp_path: Path) -> None:
    log = tmp_path / "script.log"
    script = "import sys; print('to out', flush=True); print('to err', file=sys.stderr)"

    result = await run([PY, "-c", script], timeout_s=10, log_path=str(log))

    assert result.stdout == "" and result.stderr == ""
    assert log.read_text().splitlines() == ["to out", "to err"]


async def test_failure_with_log_path_reports_the_log_tail(tmp_path: Path) -> None:
    log = tmp_path / "script.log"

    with pytest.raises(CommandFailed) as info:
        await run(
            [PY, "-c", "print('broken'); raise SystemExit(1)"], timeout_s=10, log_path=str(log)
        )

    assert info.value.stderr_tail == "broken"


async def test_stdin_and_cwd_are_passed(tmp_path: Path) -> None:
    script = "import os, sys; print(os.getcwd(), sys.stdin.read())"

    result = await run([PY, "-c", script], timeout_s=10, stdin=b"hello", cwd=str(tmp_path))

    assert result.stdout == f"{tmp_path} hello\n"


async def test_missing_program_raises_command_not_started(tmp_path: Path) -> None:
    with pytest.raises(CommandNotStarted) as info:
        await run([str(tmp_path / "no-such-tool")], timeout_s=10)

    assert "is it installed and executable?" in str(info.value)
