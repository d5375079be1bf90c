"""Keeps the agent's children running and ends them: child daemons (serf, etcd) and its own loops.

The agent owns these children; they must die with it (stop()) but QEMU must
not, which is why QEMU is daemonized elsewhere and never supervised here.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from hostagent.clock import SYSTEM, Clock

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Runs in the child before exec: if the agent dies (even kill -9), so does the child.

    Otherwise a restarted agent would find its old etcd/serf still holding the ports.
    """
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class ChildSupervisor:
    """Runs `argv` and restarts it when it exits, backing off 0.5 s .. 30 s.

    The backoff resets once the child has stayed up for `stable_after_s`, so a
    child crashing in a loop is visible in the log without burning a core.
    """

    def __init__(self, name: str, argv: Callable[[], Sequence[str]], log_path: str,
                 *, stop_timeout_s: float = 10.0, stable_after_s: float = 30.0, clock: Clock = SYSTEM) -> None:
        self.name = name
        self._clock = clock
        self._argv = argv
        self._log_path = log_path
        self._stop_timeout_s = stop_timeout_s
        self._stable_after_s = stable_after_s
        self._proc: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.restarts = 0
        self.started = asyncio.Event()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc and self._proc.returncode is None else None

    def start(self) -> None:
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name=f"supervise-{self.name}")

    async def _run(self) -> None:
        backoff = 0.5
        while not self._stopping:
            argv = list(self._argv())
            os.makedirs(os.path.dirname(self._log_path), exist_ok=True)
            with open(self._log_path, "ab") as out:
                try:
                    self._proc = await asyncio.create_subprocess_exec(
                        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out,
                        start_new_session=True, preexec_fn=_die_with_parent)
                except OSError as exc:
                    log.error("cannot start %s (%s): %s", self.name, argv[0], exc)
                    self._proc = None
            if self._proc is not None:
                log.info("started %s (pid %d), output in %s", self.name, self._proc.pid, self._log_path)
                self.started.set()
                began = self._clock.monotonic()
                rc = await self._proc.wait()
                if self._stopping:
                    return
                if self._clock.monotonic() - began >= self._stable_after_s:
                    backoff = 0.5
                log.warning("%s (pid %d) exited with code %s; restarting in %.1f s (see %s)",
                            self.name, self._proc.pid, rc, backoff, self._log_path)
            self.restarts += 1
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)

    async def stop(self) -> None:
        """SIGTERM the child, SIGKILL after the timeout; no restart afterwards."""
        self._stopping = True
        proc = self._proc
        if proc is not None and proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), self._stop_timeout_s)
            except asyncio.TimeoutError:
                log.warning("%s (pid %d) ignored SIGTERM for %.0f s; killing it",
                            self.name, proc.pid, self._stop_timeout_s)
                proc.kill()
                await proc.wait()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None


class Loops:
    """The agent's tasks while it is in a cluster: each ends at `stop`; end() waits for them together."""

    def __init__(self) -> None:
        self.stop = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._at_once: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str | None = None, *,
              cancel_at_end: bool = False) -> asyncio.Task[Any]:
        """`cancel_at_end`: a task with nothing to finish (it only logs) is cancelled rather than awaited."""
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if cancel_at_end:
            self._at_once.add(task)
            task.add_done_callback(self._at_once.discard)
        return task

    async def end(self, grace_s: float = 5.0) -> None:
        """Set `stop`, give the tasks `grace_s` to finish what they do, then cancel the rest."""
        self.stop.set()
        tasks = list(self._tasks)
        for task in self._at_once:
            task.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
