"""A node powered off by a drill stays off: its agent waits out the hold before it starts.

`corral drill node-loss NODE --mode kill` kills every process of the node, as
a power cut would. Whatever supervises the agent (systemd's Restart=on-failure,
the demo's and the tests' restart loop) starts it again within seconds, while
a machine that lost its power stays down for minutes. So before the agent kills
itself, it writes `<run_dir>/drill-held-down` with the time until which the node
stays down, and an agent that finds the file unexpired at start waits, serving
nothing (no socket, no serf, no etcd, no lease), and then starts as usual.

The agent waits rather than exits, so every supervisor holds it off alike and
none needs to know about drills: an exit would make systemd restart it every
`RestartSec` and, after five starts in ten seconds, give up on the unit for
good (StartLimitBurst), leaving the node down. While it waits it tells systemd
to extend its start timeout (EXTEND_TIMEOUT_USEC), so TimeoutStartSec does
not cut the hold short either. The file lives in the run directory (a tmpfs
on a real node): a real reboot forgets a drill's hold.

Bounded: a hold never lasts longer than MAX_HOLD_S from the agent's start, even
with a garbled file or a clock stepped back. Removing the file ends the hold
at once (checked every second). SIGTERM during the hold stops the agent.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable

from hostagent.clock import SYSTEM
from hostagent.node.notify import Notifier

log = logging.getLogger(__name__)

FILE_NAME = "drill-held-down"
MAX_HOLD_S = 120.0
CHECK_EVERY_S = 1.0


def path(run_dir: str) -> str:
    return os.path.join(run_dir, FILE_NAME)


def hold(run_dir: str, seconds: float, now: float, why: str) -> str:
    """Record that this node stays down until `now + seconds` (wall clock); returns the file's path.

    Written atomically and synced: the agent is killed right after. Raises OSError if it cannot be written."""
    target = path(run_dir)
    os.makedirs(run_dir, exist_ok=True)
    tmp = target + ".tmp"
    with open(tmp, "w") as fh:
        json.dump({"until": now + seconds, "seconds": seconds, "why": why}, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, target)
    return target


def remaining_s(run_dir: str, now: float) -> float:
    """Seconds this node must still stay down: 0 without a file, for an expired one, or one we cannot read."""
    try:
        with open(path(run_dir)) as fh:
            until = float(json.load(fh)["until"])
    except FileNotFoundError:
        return 0.0
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring the drill's hold-down file %s: %s", path(run_dir), exc)
        return 0.0
    return max(0.0, min(until - now, MAX_HOLD_S))


def wait_out(run_dir: str, notifier: Notifier, now: Callable[[], float] = SYSTEM.time,
             sleep: Callable[[float], None] = time.sleep) -> float:
    """Block until the hold recorded in `run_dir` has passed (or its file is removed); returns seconds waited.

    At most MAX_HOLD_S / CHECK_EVERY_S + 1 checks. The file is removed once the hold is over."""
    left = remaining_s(run_dir, now())
    if left <= 0:
        _remove(run_dir)
        return 0.0
    started = now()
    until = started + left
    log.warning("drill: this node was powered off by a drill and stays down for %.0f more s (until %s); "
                "remove %s to start now", left, time.strftime("%H:%M:%S", time.localtime(until)), path(run_dir))
    for _ in range(int(MAX_HOLD_S / CHECK_EVERY_S) + 1):
        left = min(remaining_s(run_dir, now()), until - now())
        if left <= 0:
            break
        # Each message must be followed by another within its extension, or systemd gives up on the start.
        notifier.send(STATUS=f"held down by a drill for {left:.0f} more s",
                      EXTEND_TIMEOUT_USEC=str(int((CHECK_EVERY_S + 10) * 1_000_000)))
        sleep(min(CHECK_EVERY_S, left))
    _remove(run_dir)
    waited = now() - started
    log.warning("drill: the hold-down is over after %.0f s; starting", waited)
    return waited


def _remove(run_dir: str) -> None:
    try:
        os.unlink(path(run_dir))
    except FileNotFoundError:
        pass
