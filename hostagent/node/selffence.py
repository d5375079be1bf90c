"""Self-fencing: a node cut off from etcd stops its auto-failover instances before its lease can expire.

Why: the master starts a lost node's auto-failover instances elsewhere as soon
as that node's lease has expired in etcd. The lease expires at the earliest
one TTL after the last keepalive was *sent*, so the agent measures from the
send time of its last successful renewal, on the boot-time clock, and kills
the QEMUs of the instances it guards `FENCE_MARGIN_S` before that. The same
deadline and processes are written for the fence keeper
(`hostagent.node.fencekeeper`), which kills them if the agent itself hangs.

Guarded instances: those this node is primary of (in its config replica),
replicated, with auto-failover on, while fencing is armed. The node reports
them (`fencing.guarded`), and the master fails over only instances the node
has reported as guarded. A guarded instance is never started here without
a current lease.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
from collections.abc import Callable, Mapping
from typing import Any

from election.replica import Replica
from kvm.process import QemuManager

from hostagent import model
from hostagent.clock import SYSTEM, Clock
from hostagent.node.fencekeeper import (Feed, keeper_argv, keeper_running, kill_victims, process_start,
                                   read_feed, write_feed)
from hostagent.node.nodelease import NodeLease

log = logging.getLogger(__name__)

FENCE_MARGIN_S = 5.0  # fence this long before the lease can expire: time to kill QEMU, and clock-rate slack
STEP_S = 0.5
KEEPER_CHECK_S = 5.0


def guarded_names(instances: list[Mapping[str, Any]], node: str, cluster: Mapping[str, Any]) -> list[str]:
    """The instances this node must stop when it loses its lease."""
    if not model.armed(cluster):
        return []
    return sorted(i["name"] for i in instances
                  if i.get("primary_node") == node and i.get("disk_template") in model.REPLICATED
                  and i.get("secondary_node") and model.auto_failover(i, cluster))


class SelfFence:
    def __init__(self, node: str, lease: NodeLease, qemu: QemuManager, replica: Replica, run_dir: str,
                 log_dir: str, watchdog: str | None, clock: Clock = SYSTEM,
                 started: Callable[[int], int | None] = process_start,
                 kill: Callable[[Feed, str], list[str]] = kill_victims,
                 demotes: Callable[[Mapping[str, Any]], list[list[str]]] = lambda inst: []) -> None:
        """`started` and `kill`: how a QEMU's start time is read and the feed's QEMUs are killed (a simulated
        node has no processes). `demotes`: the commands that make a drbd instance's devices Secondary here."""
        self._node = node
        self._clock = clock
        self._started = started
        self._kill = kill
        self._lease = lease
        self._qemu = qemu
        self._replica = replica
        self._feed = os.path.join(run_dir, "fence-keeper.json")
        self._pidfile = os.path.join(run_dir, "fence-keeper.pid")
        self._keeper_log = os.path.join(log_dir, "fence-keeper.log")
        self._watchdog = watchdog
        # A restarted agent keeps the deadline its predecessor promised until it renews the lease itself.
        self._inherited = (read_feed(self._feed) or Feed(None, (), None)).deadline
        self._guarded: list[str] = []
        self._armed = True
        self._armed_since: float | None = None  # the cluster's fencing_since this node last saw
        self._fenced: set[str] = set()
        self._demotes = demotes

    def deadline(self) -> float | None:
        """When this node must have stopped its guarded instances (boot-time clock)."""
        sent = self._lease.renewed_at
        if sent is None:
            return self._inherited
        return sent + self._lease.ttl_s - FENCE_MARGIN_S

    def lease_current(self) -> bool:
        deadline = self.deadline()
        return deadline is not None and self._clock.boot() < deadline

    def start_refusal(self, name: str) -> str | None:
        """Why a start of this instance must be refused here now, if it must."""
        cluster = self._replica.get_json(model.CLUSTER_KEY) or {}
        inst = self._replica.get_json(model.instance_key(name)) or {}
        if name in guarded_names([inst], self._node, cluster) and not self.lease_current():
            return (f"node '{self._node}' does not hold a current node lease, so it may not start the "
                    f"auto-failover instance '{name}' (the master may be starting it elsewhere)")
        return None

    def report(self) -> dict[str, Any]:
        deadline = self.deadline()
        return {"armed": self._armed, "since": self._armed_since, "guarded": list(self._guarded),
                "fenced": sorted(self._fenced), "lease_ttl_s": self._lease.ttl_s,
                "deadline_in_s": None if deadline is None else round(deadline - self._clock.boot(), 1)}

    async def run(self, stop: asyncio.Event) -> None:
        last_keeper_check = -KEEPER_CHECK_S
        while not stop.is_set():
            try:
                self.step()
                if self._clock.boot() - last_keeper_check >= KEEPER_CHECK_S:
                    last_keeper_check = self._clock.boot()
                    await self.ensure_keeper()
            except Exception:  # noqa: BLE001 - the fencing loop must outlive any one bad pass
                log.exception("self-fencing pass failed; please report this bug")
            try:
                await asyncio.wait_for(stop.wait(), STEP_S)
            except asyncio.TimeoutError:
                pass

    def step(self) -> None:
        cluster = self._replica.get_json(model.CLUSTER_KEY) or {}
        instances = [i for _, i in self._replica.prefix_json(model.INSTANCES)]
        self._armed = model.armed(cluster)
        self._armed_since = cluster.get("fencing_since")
        self._guarded = guarded_names(instances, self._node, cluster)
        victims, demote = [], {}
        by_name = {i.get("name"): i for i in instances}
        for name in self._guarded:
            pid = self._qemu.find(name)
            start = self._started(pid) if pid is not None else None
            if pid is not None and start is not None:
                victims.append((name, pid, start))
                if commands := self._demotes(by_name[name]):
                    demote[name] = tuple(tuple(argv) for argv in commands)
        deadline = self.deadline() if self._armed else None
        feed = Feed(deadline, tuple(victims), self._watchdog, demote)
        write_feed(self._feed, feed)
        if self._lease.renewed_at is not None and self.lease_current():
            self._fenced.clear()
        if deadline is not None and self._clock.boot() >= deadline and victims:
            since = self._lease.renewed_at
            why = ("the node lease was last renewed "
                   + (f"{self._clock.boot() - since:.0f} s ago" if since is not None else "before this agent started")
                   + f" and expires within {FENCE_MARGIN_S:.0f} s; the master will start it on its secondary")
            self._fenced.update(self._kill(feed, why))

    async def ensure_keeper(self) -> None:
        """Start the fence keeper if none serves this node (it outlives the agent on purpose)."""
        if keeper_running(self._pidfile, self._feed) is not None:
            return
        with open(self._keeper_log, "ab") as out:
            launcher = await asyncio.create_subprocess_exec(*keeper_argv(self._feed, self._pidfile, daemon=True),
                                                            stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        try:
            code = await asyncio.wait_for(launcher.wait(), 30)
        except asyncio.TimeoutError:
            launcher.kill()
            code = await launcher.wait()
        if code != 0:
            log.error("could not start the fence keeper (exit %d); see %s", code, self._keeper_log)
            return
        log.info("fence keeper started: it stops the auto-failover instances of node '%s' if this agent hangs "
                 "past its lease", self._node)
