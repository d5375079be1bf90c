"""The mirror duty: keeps the disk mirror of every running replicated instance going, and its copy's record true.

Every few seconds, for each instance no job or restart is busy with, it
finishes what an interrupted migration left, cuts a mirror whose secondary
is gone or hangs (the primary goes on alone, its copy recorded out of date),
records from the primary's report whether the copy is in sync
(hostagent.master.decide.replicas), and starts a mirror that is not running.
Reports, liveness and who is busy come from this tick's view of the cluster
(hostagent.master.view).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from hostagent import model
from hostagent.master.decide import replicas
from hostagent.master.jobs import JobFailed
from hostagent.master.moves import Moves
from hostagent.master.store import Store
from hostagent.master.view import ClusterView, Views

log = logging.getLogger(__name__)

DUTY_EVERY_S = 3.0
PROTECT_RETRY_S = 5.0  # after a failed attempt to restart a mirror (secondary unreachable, say)
DRBD_SETTLE_S = 10.0  # after bringing DRBD up: its next reports carry the new generation
SPLIT_BRAIN_RETRY_S = 60.0  # between attempts to reconnect a resource that refused its peer


class Mirrors:
    """The mirror duty (`keep_mirrors`), with when it last ran and when it may retry each mirror it could not start."""

    def __init__(self, store: Store, views: Views, moves: Moves, starting: Callable[[str], bool]) -> None:
        """`starting`: whether the restart duty is starting an instance (it protects it itself once started)."""
        self.store = store
        self.views = views
        self.moves = moves
        self.starting = starting
        self._last_duty = 0.0
        self._retry_at: dict[str, float] = {}  # instance -> when the duty may try to protect it again

    async def keep_mirrors(self) -> None:
        """Restart mirrors that are not running and record whether each secondary copy is in sync."""
        now = self.store.clock.monotonic()
        if now - self._last_duty < DUTY_EVERY_S:
            return
        self._last_duty = now
        view = await self.views.current()
        for inst in view.instances:
            if inst.get("disk_template") not in model.REPLICATED or not inst.get("secondary_node"):
                continue
            if inst["name"] in view.busy or self.starting(inst["name"]):
                continue
            try:
                if inst["disk_template"] == "drbd":
                    await self._keep_drbd(view, dict(inst))
                else:
                    await self._keep_one(view, dict(inst))
            except JobFailed as exc:
                log.warning("could not keep the disk mirror of instance '%s' running: %s", inst["name"], exc)

    async def _keep_one(self, view: ClusterView, inst: dict[str, Any]) -> None:
        if await self.moves.settle_migration(inst):
            return
        name, primary = inst["name"], inst["primary_node"]
        report = view.reports.get(primary) or {}
        if primary not in view.fresh or name not in report.get("instances", {}):
            return  # not running, or nothing known: nothing to mirror
        states = report.get("mirrors", {}).get(name, [])
        statuses = {s["status"] for s in states}
        secondary = inst["secondary_node"]
        record, revision = await self.moves.replica(name)
        if statuses & set(replicas.JOINED) and secondary not in view.alive:
            await self.moves.outdate(name, f"its secondary node '{secondary}' stopped answering")
            log.warning("the secondary '%s' of instance '%s' is gone: the primary goes on alone", secondary, name)
            await self.store.order(primary, "instance.mirror-detach", {"name": name, "disks": inst["disks"]})
            return
        new = replicas.judge(record, states, float(report.get("time", 0)), self.store.clock.time())
        if new is not None and await self.moves.put_if_unchanged(name, new, revision):
            (log.info if new["in_sync"] else log.warning)(
                "the copy of instance '%s' on node '%s' is %s", name, secondary,
                "in sync" if new["in_sync"] else f"out of date ({new['why']})")
        if "stalled" in statuses:
            log.warning("the secondary '%s' of instance '%s' hangs and blocks its disk writes: cutting the mirror",
                        inst["secondary_node"], name)
            await self.store.order(primary, "instance.mirror-detach", {"name": name, "disks": inst["disks"]})
            return
        # A disk with no mirror at all (none started yet, or one hot-plugged whose attach failed) lists no state.
        if (len(states) < len(inst["disks"]) or statuses & {"failed", "stopped"}) \
                and secondary in view.fresh:
            if self.store.clock.monotonic() < self._retry_at.get(name, 0.0):
                return
            log.info("the disk mirror of instance '%s' to node '%s' is not running: starting it",
                     name, inst["secondary_node"])
            if await self.moves.protect(None, inst):
                self._retry_at.pop(name, None)
            else:
                self._retry_at[name] = self.store.clock.monotonic() + PROTECT_RETRY_S

    async def _keep_drbd(self, view: ClusterView, inst: dict[str, Any]) -> None:
        """DRBD keeps its own copy in step; the duty records from the primary's report whether it is, and brings
        the resources up (again) where a disk is not up, or its state predates the copy the record names:
        a node back from an outage then reconnects and DRBD resyncs only what changed meanwhile."""
        name, primary, secondary = inst["name"], inst["primary_node"], inst["secondary_node"]
        report = view.reports.get(primary) or {}
        if primary not in view.fresh:
            return
        states = report.get("mirrors", {}).get(name, [])
        record, revision = await self.moves.replica(name)
        new = replicas.judge(record, states, float(report.get("time", 0)), self.store.clock.time())
        if new is not None and await self.moves.put_if_unchanged(name, new, revision):
            (log.info if new["in_sync"] else log.warning)(
                "the copy of instance '%s' on node '%s' is %s", name, secondary,
                "in sync" if new["in_sync"] else f"out of date ({new['why']})")
            record = new
        refused = any(s.get("drbd") == "StandAlone" for s in states)  # a split brain, or one the peer resolves
        stale = refused or len(states) < len(inst["disks"]) or any(s.get("gen") != record.get("gen") for s in states)
        if not stale or secondary not in view.fresh or self.store.clock.monotonic() < self._retry_at.get(name, 0.0):
            return
        if name not in report.get("instances", {}) and inst.get("admin_state") != "up" and \
                len(states) < len(inst["disks"]):
            return  # stopped and not up: its resources come up with its next start
        if refused:
            log.warning("DRBD of instance '%s' on node '%s' refuses to connect to node '%s' (StandAlone): both are "
                        "asked to connect again; a copy left Primary on '%s' by a failover gives up what it never "
                        "acknowledged, a real split brain stays (`corral cluster verify` says how to resolve it)",
                        name, primary, secondary, secondary)
        else:
            log.info("DRBD of instance '%s' is not up (or not under the current copy generation) on '%s' and '%s': "
                     "bringing it up", name, primary, secondary)
        if await self.moves.protect(None, inst):
            self._retry_at[name] = self.store.clock.monotonic() + (SPLIT_BRAIN_RETRY_S if refused else DRBD_SETTLE_S)
        else:
            self._retry_at[name] = self.store.clock.monotonic() + PROTECT_RETRY_S
