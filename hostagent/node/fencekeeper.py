"""corral-fence-keeper: stops this node's auto-failover QEMUs when the agent has stopped renewing the node lease.

The master starts a lost node's auto-failover instances elsewhere once that
node's lease has expired in etcd. The agent stops them itself before then
(`hostagent.node.selffence`), but a hung agent (frozen, deadlocked, swapping)
cannot. This small process, separate from the agent and outliving it, reads
the feed the agent rewrites every half second: a deadline on the boot-time
clock (which also runs while the machine is suspended) and the QEMU
processes to kill when it passes. A process is killed only if its start
time still matches, so a recycled pid is never hit. Where the operator
enables it, the keeper also pets a watchdog device while the deadline is
ahead, so that a node whose keeper hangs too is reset by the hardware.

Usage: corral-fence-keeper --feed FILE --pidfile FILE (the agent starts it; the watchdog device is in
the feed, from the agent's config).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from hostagent.clock import SYSTEM

log = logging.getLogger("corral-fence-keeper")

INTERVAL_S = 0.25
MODULE = "hostagent.node.fencekeeper"
# A killed QEMU's disks close within moments; its DRBD devices are demoted once they have (tries x pause).
DEMOTE_TRIES, DEMOTE_PAUSE_S = 50, 0.2


def process_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (None: gone, or a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] == "Z" else int(fields[19])


@dataclass(frozen=True)
class Feed:
    deadline: float | None  # boot-time seconds; None: nothing to fence (disarmed, or nothing guarded)
    victims: tuple[tuple[str, int, int], ...]  # (instance, pid, start time)
    watchdog: str | None
    # instance -> the commands that make its DRBD devices Secondary once its QEMU is gone, so that its peer can
    # be promoted by the failover even when this node is still connected to it (its agent hung, not its network)
    demote: Mapping[str, tuple[tuple[str, ...], ...]] = field(default_factory=dict)

    @staticmethod
    def parse(raw: dict[str, Any]) -> Feed:
        deadline = raw.get("deadline")
        return Feed(None if deadline is None else float(deadline),
                    tuple((str(v["instance"]), int(v["pid"]), int(v["start"])) for v in raw.get("victims", [])),
                    raw.get("watchdog") or None,
                    {str(name): tuple(tuple(str(word) for word in argv) for argv in commands)
                     for name, commands in (raw.get("demote") or {}).items()})


def write_feed(path: str, feed: Feed) -> None:
    """Atomically, so the keeper never reads half a feed."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as fh:
        json.dump({"deadline": feed.deadline, "watchdog": feed.watchdog,
                   "victims": [{"instance": i, "pid": p, "start": s} for i, p, s in feed.victims],
                   "demote": {name: [list(argv) for argv in commands] for name, commands in feed.demote.items()}}, fh)
    os.replace(tmp, path)


def read_feed(path: str) -> Feed | None:
    try:
        with open(path) as fh:
            return Feed.parse(json.load(fh))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def kill_victims(feed: Feed, why: str) -> list[str]:
    """SIGKILL every victim that is still the same process; the names of those killed."""
    killed = []
    for name, pid, start in feed.victims:
        if process_start(pid) != start:
            continue
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
        log.warning("killed the QEMU of instance '%s' (pid %d): %s", name, pid, why)
        killed.append(name)
        for argv in feed.demote.get(name, ()):
            demote_soon(name, argv)
    return killed


def demote_soon(instance: str, argv: Sequence[str]) -> None:
    """Run `argv` (a DRBD demote) in the background until it succeeds, as the killed QEMU lets go of the device:
    the caller (the keeper's loop, or the agent's) never waits on it."""
    retry = (f"for i in $(seq {DEMOTE_TRIES}); do {shlex.join(argv)} >/dev/null 2>&1 && exit 0; "
             f"sleep {DEMOTE_PAUSE_S}; done; exit 1")
    try:
        subprocess.Popen(["sh", "-c", retry], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,  # noqa: S603
                         stderr=subprocess.DEVNULL, start_new_session=True)
    except OSError as exc:
        log.error("could not demote the DRBD devices of instance '%s': %s", instance, exc)
        return
    log.warning("demoting the DRBD devices of instance '%s' (if still connected to the peer) so its secondary "
                "can take over", instance)


def keeper_running(pidfile: str, feed_path: str) -> int | None:
    """The pid of the keeper serving this feed, if one runs."""
    try:
        with open(pidfile) as fh:
            pid = int(fh.read().strip())
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            cmdline = fh.read().split(b"\0")
    except (OSError, ValueError):
        return None
    if process_start(pid) is None or feed_path.encode() not in cmdline:
        return None
    return pid


def keeper_argv(feed_path: str, pidfile: str, daemon: bool = False) -> list[str]:
    """`daemon`: detach from the caller (the agent), so that freezing or killing the agent leaves it alone."""
    return [sys.executable, "-m", MODULE, "--feed", feed_path, "--pidfile", pidfile] + (["--daemon"] if daemon else [])


class Watchdog:
    """A watchdog device, petted while the node is safe; closed with the magic 'V' on a clean exit."""

    def __init__(self) -> None:
        self._path: str | None = None
        self._fh: IO[bytes] | None = None

    def pet(self, path: str | None) -> None:
        if path != self._path:
            self.close()
            self._path = path
        if path is None:
            return
        try:
            if self._fh is None:
                self._fh = open(path, "wb", buffering=0)  # noqa: SIM115 - held open for the keeper's life
                log.info("watchdog %s armed: the node resets if this keeper stops petting it", path)
            self._fh.write(b"\0")
        except OSError as exc:
            log.error("cannot pet the watchdog %s: %s", path, exc)

    def close(self) -> None:
        if self._fh is not None:
            try:
                self._fh.write(b"V")
                self._fh.close()
            except OSError:
                pass
        self._fh = None


def fence_pass(feed: Feed, now: float, fenced: set[tuple[str, int, int]],
               kill: Callable[[Feed, str], list[str]] = kill_victims) -> bool:
    """One look at the feed: once its deadline has passed, kill the victims not killed yet (adding them to
    `fenced`). True while the node is safe, so the watchdog may be petted. `kill`: a simulated node's."""
    if feed.deadline is None or now < feed.deadline:
        return True
    pending = Feed(feed.deadline, tuple(v for v in feed.victims if v not in fenced), feed.watchdog, feed.demote)
    if pending.victims:
        kill(pending, f"the agent has not renewed the node lease in time (deadline passed "
                      f"{now - feed.deadline:.1f} s ago); the master may start it elsewhere")
        fenced.update(pending.victims)
    return False


def run(feed_path: str, stop: list[bool]) -> None:
    watchdog = Watchdog()
    feed = Feed(None, (), None)
    fenced: set[tuple[str, int, int]] = set()
    while not stop:
        feed = read_feed(feed_path) or feed
        if fence_pass(feed, SYSTEM.boot(), fenced):
            watchdog.pet(feed.watchdog)
        # else no petting: a node that must fence is reset by the watchdog if anything survives
        time.sleep(INTERVAL_S)
    watchdog.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="corral-fence-keeper", description=__doc__.split("\n\n")[0])
    parser.add_argument("--feed", required=True, help="the file the agent writes (deadline and QEMU processes)")
    parser.add_argument("--pidfile", required=True)
    parser.add_argument("--daemon", action="store_true", help="fork away from the caller, in a new session")
    args = parser.parse_args(argv)
    if args.daemon:
        if os.fork() > 0:
            return 0
        os.setsid()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s corral-fence-keeper: %(message)s")
    stop: list[bool] = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    signal.signal(signal.SIGINT, lambda *_: stop.append(True))
    with open(args.pidfile, "w") as fh:
        fh.write(str(os.getpid()))
    log.info("watching %s", args.feed)
    run(args.feed, stop)
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
