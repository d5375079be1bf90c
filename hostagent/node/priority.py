"""The control plane keeps the CPU when guests saturate it.

A node booting dozens of guests at once can leave its agent, etcd and Serf
waiting for a CPU long enough to lose the master lease, miss a node lease
renewal or time out on QMP: the cluster then flaps exactly when it is
busiest (measured by bench/outage_recovery.py: 19 master changes while 60
TCG guests booted on 2 CPUs). So the agent raises its own scheduling
priority at start, before it makes any thread or child; etcd, Serf and the
fence keeper inherit it, and QEMU is put back to the niceness the agent was
started with, so guests compete with the rest of the host as before.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

CONTROL_NICE = -5  # CFS weight about 3x a guest thread's at nice 0


def raise_control_plane() -> int:
    """Renice this process to CONTROL_NICE if it runs lower; return the niceness it had (for guests)."""
    base = os.getpriority(os.PRIO_PROCESS, 0)
    if base <= CONTROL_NICE:
        return base
    try:
        os.setpriority(os.PRIO_PROCESS, 0, CONTROL_NICE)
    except PermissionError:
        log.warning("cannot raise the agent's CPU priority to nice %d (not root?): under a full CPU the agent, "
                    "etcd and Serf compete with the guests as equals", CONTROL_NICE)
    return base
