"""The agent's side of failure drills: crash, freeze, isolate or power off its node on request.

Only for drills: the request arrives over mutual TLS from another node whose
operator ran `corral drill master-failover` or `corral drill node-loss`. A
kill leaves the restart to whatever supervises the agent (systemd's
Restart=on-failure, or the demo's loop); a freeze arranges its own thaw
before stopping. `power-off` (test and demo clusters) also kills the node's
QEMUs, disk exports and fence keeper first, as a power cut would, and keeps
the node down for the drill's duration: the restarted agent waits out the
hold (`holddown`) before it starts. `isolate` is carried out by the agent
itself (`hostagent.node.isolation`).
"""

from __future__ import annotations

import asyncio
import glob
import logging
import os
import signal
import subprocess
import sys

from hostagent.node import holddown

log = logging.getLogger(__name__)

MODES = ("kill", "freeze", "isolate", "power-off")
MAX_FREEZE_S = 120.0
# A separate process wakes the frozen agent: argv only, no shell.
_THAW = "import os, signal, sys, time; time.sleep(float(sys.argv[1])); " \
        "[os.kill(int(p), signal.SIGCONT) for p in sys.argv[2:]]"


def node_processes(run_dir: str) -> list[int]:
    """This node's QEMUs, disk exports and fence keeper, by pidfile, checked by command line."""
    pids = []
    for pidfile in [*glob.glob(os.path.join(run_dir, "instances", "*", "qemu.pid")),
                    *glob.glob(os.path.join(run_dir, "replication", "*.pid")),
                    os.path.join(run_dir, "fence-keeper.pid")]:
        try:
            with open(pidfile) as fh:
                pid = int(fh.read().strip())
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                if run_dir.encode() in fh.read():
                    pids.append(pid)
        except (OSError, ValueError):
            continue
    return pids


def power_off(run_dir: str, hold_s: float, now: float, why: str) -> None:
    """Shortly after the answer has gone out: SIGKILL every process of this node, the agent last.

    First records that the node stays down for `hold_s` from `now` (its next agent waits until then); raises
    OSError, with nothing killed, if that cannot be recorded."""
    held = holddown.hold(run_dir, hold_s, now, why)
    pids = node_processes(run_dir)
    log.warning("drill: powering this node off for %.0f s (%s): killing QEMUs, disk exports and the fence keeper "
                "(pids %s), then this agent; its next start waits until the time in %s", hold_s, why, pids, held)

    def kill_all() -> None:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        os.kill(os.getpid(), signal.SIGKILL)

    asyncio.get_running_loop().call_later(0.3, kill_all)


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
