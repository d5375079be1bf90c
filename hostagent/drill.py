"""The agent's side of failure drills: crash or freeze itself on request.

Only for drills: the request arrives over mutual TLS from another node whose
operator ran `corral drill master-failover`. A kill leaves the restart to
whatever supervises the agent (systemd's Restart=on-failure, or the demo's
loop); a freeze arranges its own thaw before stopping.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys

log = logging.getLogger(__name__)

MODES = ("kill", "freeze")
MAX_FREEZE_S = 120.0
# A separate process wakes the frozen agent: argv only, no shell.
_THAW = "import os, signal, sys, time; time.sleep(float(sys.argv[1])); " \
        "[os.kill(int(p), signal.SIGCONT) for p in sys.argv[2:]]"


def crash(mode: str, freeze_s: float, child_pids: list[int]) -> None:
    """Shortly after the answer has gone out: SIGKILL this agent, or SIGSTOP it and its children."""
    loop = asyncio.get_running_loop()
    if mode == "kill":
        log.warning("drill: killing this agent with SIGKILL now (its serf and etcd die with it)")
        loop.call_later(0.3, os.kill, os.getpid(), signal.SIGKILL)
        return
    pids = [*child_pids, os.getpid()]
    log.warning("drill: freezing this agent and its children (pids %s) for %.0f s", pids, freeze_s)
    # The thawer is a separate process, started before we stop: a frozen agent can't wake itself.
    subprocess.Popen([sys.executable, "-c", _THAW, f"{freeze_s:.1f}", *map(str, pids)],
                     start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL)

    def stop_all() -> None:
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)

    loop.call_later(0.3, stop_all)
