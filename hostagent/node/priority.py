"""The control plane keeps the CPU when guests saturate it.

A node booting dozens of guests at once can leave its agent, etcd and Serf
waiting for a CPU long enough to lose the master lease, miss a node lease
renewal or time out on QMP: the cluster then flaps exactly when it is
busiest (measured by bench/outage_recovery.py: 19 master changes while 60
TCG guests booted on 2 CPUs). So the agent raises its own scheduling
priority at start, before it makes any thread or child; etcd, Serf and the
fence keeper inherit it, and QEMU is put back to the niceness the agent was
started with, so guests compete with the rest of the host as before.

Niceness alone does not do it where the kernel groups tasks by session
(autogroup, on by default in Debian's kernels when the processes are in the
root CPU cgroup): the scheduler first shares the CPU between the sessions'
groups by each group's own nice, and a thread's nice counts only inside its
group. QEMU's -daemonize makes a session per guest, so 60 booting guests were
60 groups as heavy as the agent's, whatever its nice. So the agent also
raises its session's group when it leads that session, as under systemd
(raise_session); the guests' groups stay at the host's usual 0. etcd, Serf
and the fence keeper run in sessions of their own, at 0 like one guest.
Measured with bench/outage_recovery.py, 60 guests on 3 nodes sharing 2 CPUs,
master lease 2 s: with the agents in one group at 0 (the benchmark's session,
which they then shared), 8 master changes in the first 53 s of the recovery
(every one "could not renew the master lease in time"), the agents' event
loops late by up to 1.85 s, and etcd logging no late heartbeat: the agent was
the starved one. Each in a session of its own with its group at -5: no master
change, loop delays at most 0.2 s. Lowering the guests' groups instead (+5)
kept the master too, but made every guest 3x lighter than any other session on
the host, and the recovery took far longer on a machine busy with other work.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

CONTROL_NICE = -5  # CFS weight about 3x a guest thread's at nice 0
AUTOGROUP = "/proc/self/autogroup"


def raise_control_plane() -> int:
    """Renice this process to CONTROL_NICE if it runs lower; return the niceness it had (for guests).

    Its session's scheduler group too, if it leads its own session (as under systemd): see raise_session."""
    base = os.getpriority(os.PRIO_PROCESS, 0)
    if base <= CONTROL_NICE:
        return base
    try:
        os.setpriority(os.PRIO_PROCESS, 0, CONTROL_NICE)
    except PermissionError:
        log.warning("cannot raise the agent's CPU priority to nice %d (not root?): under a full CPU the agent, "
                    "etcd and Serf compete with the guests as equals", CONTROL_NICE)
        return base
    raise_session(CONTROL_NICE)
    return base


def raise_session(nice: int, autogroup: str = AUTOGROUP) -> bool:
    """Set the nice of this process's autogroup, if the kernel has them and this process leads its session.

    With autogroups the scheduler weighs whole sessions against each other by the group's nice: the
    agent's own nice then counts only against the other threads of its session. A process that does not
    lead its session (started from a shell or a test harness) leaves it alone: the group is its caller's.
    Returns whether the group was changed."""
    if os.getsid(0) != os.getpid():
        return False
    try:
        with open(autogroup, "w") as f:
            f.write(str(nice))
    except OSError as exc:  # no autogroups here (or turned off), or not allowed
        log.debug("the agent's session group keeps its nice: %s", exc)
        return False
    return True
