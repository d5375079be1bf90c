"""ChildSupervisor with real child processes: restart with backoff, stop for good."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time

import pytest

from hostagent.node.supervisor import ChildSupervisor

pytestmark = pytest.mark.integration


async def wait_pid(sup: ChildSupervisor, not_pid: int | None, timeout_s: float = 10) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if sup.pid is not None and sup.pid != not_pid:
            return sup.pid
        await asyncio.sleep(0.05)
    raise AssertionError("the supervised child did not (re)start in time")


async def test_a_child_that_dies_is_restarted_and_stop_ends_it(tmp_path):
    sup = ChildSupervisor("sleeper", lambda: ["sleep", "600"], str(tmp_path / "sleeper.log"))
    sup.start()
    first = await wait_pid(sup, None)
    os.kill(first, signal.SIGKILL)
    second = await wait_pid(sup, first)
    assert sup.restarts == 1
    await sup.stop()
    assert sup.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(second, 0)


async def test_a_child_crashing_in_a_loop_backs_off(tmp_path):
    sup = ChildSupervisor("crasher", lambda: ["false"], str(tmp_path / "crasher.log"))
    sup.start()
    await asyncio.sleep(2.0)
    await sup.stop()
    # 0.5 + 1 s of backoff fit in 2 s; without backoff it would have restarted hundreds of times.
    assert 1 <= sup.restarts <= 3


async def test_a_missing_binary_is_retried_not_fatal(tmp_path):
    sup = ChildSupervisor("ghost", lambda: [str(tmp_path / "no-such-binary")], str(tmp_path / "ghost.log"))
    sup.start()
    await asyncio.sleep(0.8)
    await sup.stop()
    assert sup.restarts >= 1 and sup.pid is None


async def test_children_die_with_a_killed_agent(tmp_path):
    """The parent-death signal: a child outliving a killed agent would hold its ports."""
    script = tmp_path / "agent.py"
    script.write_text(
        "import asyncio, sys\n"
        "from hostagent.node.supervisor import ChildSupervisor\n"
        "async def main():\n"
        f"    s = ChildSupervisor('sleeper', lambda: ['sleep', '600'], {str(tmp_path / 'c.log')!r})\n"
        "    s.start()\n"
        "    await s.started.wait()\n"
        "    print(s.pid, flush=True)\n"
        "    await asyncio.sleep(600)\n"
        "asyncio.run(main())\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(script),
        stdout=asyncio.subprocess.PIPE)
    child = int((await asyncio.wait_for(proc.stdout.readline(), 20)).decode())
    proc.kill()
    await proc.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return
        await asyncio.sleep(0.05)
    os.kill(child, signal.SIGKILL)
    raise AssertionError("the child outlived its killed parent")
