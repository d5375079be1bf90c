"""The mirror duty: keeps the disk mirror of every running replicated instance going, and its copy's record true.

Every few seconds, for each instance no job or restart is busy with, it
finishes what an interrupted migration left, cuts a mirror whose secondary
is gone or hangs (the primary goes on alone, its copy recorded out of date),
records from the primary's report whether the copy is in sync
(hostagent.master.decide.replicas), and starts a mirror that is not running.
Reports, liveness and who is busy come from this tick's view of the cluster
(hostagent.master.view).

Copies of the `mirror` template are paced (hostagent.master.decide.syncpace):
those waiting start critical first, a few at a time per node, and the
cluster's `sync_rate_mib_s` is shared among the copies through each node.
When the copies under way change, the duty sends each running copy its new
rate (`instance.mirror-rate`); a waiting copy's place in the queue goes into
its replica record, for `instance info`. DRBD paces its own resyncs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from hostagent import model
from hostagent.master.decide import replicas, syncpace
from hostagent.master.jobs import JobFailed
from hostagent.master.moves import Moves
from hostagent.master.store import Store
from hostagent.master.view import ClusterView, Views
from hostagent.status import COPYING, NO_PROGRESS

log = logging.getLogger(__name__)

DUTY_EVERY_S = 3.0
PROTECT_RETRY_S = 5.0  # after a failed attempt to restart a mirror (secondary unreachable, say)
DRBD_SETTLE_S = 10.0  # after bringing DRBD up: its next reports carry the new generation
SPLIT_BRAIN_RETRY_S = 60.0  # between attempts to reconnect a resource that refused its peer
STARTED_UNSEEN_MAX_S = 30.0  # a copy started holds its slot this long at most until a report shows it


class Mirrors:
    """The mirror duty (`keep_mirrors`), with when it last ran and when it may retry each mirror it could not start."""

    def __init__(self, store: Store, views: Views, moves: Moves, starting: Callable[[str], bool]) -> None:
        """`starting`: whether the restart duty is starting an instance (it protects it itself once started)."""
        self.store = store
        self.views = views
        self.moves = moves
        self.starting = starting
        self._last_duty = 0.0
        self._retry_at: dict[str, float] = {}  # DRBD instance -> when the duty may try to protect it again
        # Secondary -> when copies to it may be tried again: per node, not per copy, so that the copies waiting
        # for a node that did not answer are all tried again at once, in their order (critical first).
        self._retry_copies_to: dict[str, float] = {}
        self._copies: list[syncpace.Copy] = []  # the copies under way (or starting) at the last look
        self._sent: dict[str, float] = {}  # instance -> the rate its copy was last given (MiB/s, 0: no cap)
        self._queued: set[str] = set()  # instances whose copy waited its turn at the last look
        self._started: dict[str, float] = {}  # instance -> when its copy was last started (wall clock)
        moves.copy_rate = self._rate_for

    async def keep_mirrors(self) -> None:
        """Restart mirrors that are not running, paced, and record whether each secondary copy is in sync."""
        now = self.store.clock.monotonic()
        if now - self._last_duty < DUTY_EVERY_S:
            return
        self._last_duty = now
        view = await self.views.current()
        wanted: dict[str, dict[str, Any]] = {}
        for inst in view.instances:
            if inst.get("disk_template") not in model.REPLICATED or not inst.get("secondary_node"):
                continue
            if inst["name"] in view.busy or self.starting(inst["name"]):
                continue
            try:
                if inst["disk_template"] == "drbd":
                    await self._keep_drbd(view, dict(inst))
                elif await self._keep_one(view, dict(inst)):
                    wanted[inst["name"]] = dict(inst)
            except JobFailed as exc:
                log.warning("could not keep the disk mirror of instance '%s' running: %s", inst["name"], exc)
        await self._pace(view, wanted)

    async def _keep_one(self, view: ClusterView, inst: dict[str, Any]) -> bool:
        """Look after one `mirror` instance's copy; True when its mirror should start (the pacing decides when)."""
        if await self.moves.settle_migration(inst):
            return False
        name, primary = inst["name"], inst["primary_node"]
        report = view.reports.get(primary) or {}
        if primary not in view.fresh or name not in report.get("instances", {}):
            return False  # not running, or nothing known: nothing to mirror
        states = report.get("mirrors", {}).get(name, [])
        statuses = {s["status"] for s in states}
        secondary = inst["secondary_node"]
        record, revision = await self.moves.replica(name)
        if statuses & set(replicas.JOINED) and secondary not in view.alive:
            await self.moves.outdate(name, f"its secondary node '{secondary}' stopped answering")
            log.warning("the secondary '%s' of instance '%s' is gone: the primary goes on alone", secondary, name)
            await self.store.order(primary, "instance.mirror-detach", {"name": name, "disks": inst["disks"]})
            return False
        new = replicas.judge(record, states, float(report.get("time", 0)), self.store.clock.time())
        if new is not None and await self.moves.put_if_unchanged(name, new, revision):
            (log.info if new["in_sync"] else log.warning)(
                "the copy of instance '%s' on node '%s' is %s", name, secondary,
                "in sync" if new["in_sync"] else f"out of date ({new['why']})")
        if "stalled" in statuses:
            log.warning("the secondary '%s' of instance '%s' hangs and blocks its disk writes: cutting the mirror",
                        inst["secondary_node"], name)
            await self.store.order(primary, "instance.mirror-detach", {"name": name, "disks": inst["disks"]})
            return False
        # A disk with no mirror at all (none started yet, or one hot-plugged whose attach failed) lists no state.
        return bool((len(states) < len(inst["disks"]) or statuses & {"failed", "stopped"})
                    and secondary in view.fresh)

    # ---- pacing (hostagent.master.decide.syncpace) ---------------------------------------------
    async def _pace(self, view: ClusterView, wanted: Mapping[str, dict[str, Any]]) -> None:
        """Start the copies `wanted` in the decided order and number, and give each running copy its share."""
        cap = float(view.cluster.get("sync_rate_mib_s") or 0.0)
        # A copy started lately holds its slot until a report made since shows how it goes.
        by_name = {i["name"]: i for i in view.instances}
        self._started = {name: at for name, at in self._started.items() if name in by_name
                         and view.now - at < STARTED_UNSEEN_MAX_S
                         and float((view.reports.get(by_name[name]["primary_node"]) or {}).get("time", 0.0)) <= at}
        wanted = {name: i for name, i in wanted.items() if name not in self._started}
        under_way = {i["name"]: i for i in view.instances if _copying(view, i) or i["name"] in self._started}
        copies = [_copy(i, running=True) for i in under_way.values()] + \
            [_copy(i, running=False) for name, i in wanted.items() if name not in under_way]
        decided = syncpace.pace(copies, cap)
        self._copies = [c for c in copies if c.running or c.instance in decided.start]
        if set(decided.queued) - self._queued:
            log.info("%s", syncpace.queue_words(copies, decided, cap))
        self._queued = set(decided.queued)
        await self._note_queue(view, decided.queued)
        waiting = {c.instance: c for c in copies if not c.running}
        for copy in [waiting[name] for name in decided.start] + \
                [_copy(i, running=True) for name, i in wanted.items() if name in under_way]:
            inst = wanted[copy.instance]
            if self.store.clock.monotonic() < self._retry_copies_to.get(copy.secondary, 0.0):
                continue  # it keeps its turn (and its slot) until copies to that node may be tried again
            if copy.running:  # another of its disks is being copied already: it holds its slot
                log.info("the disk mirror of instance '%s' to node '%s' is not running on every disk: starting "
                         "it", copy.instance, copy.secondary)
            if await self.moves.protect(None, inst):  # it logs why not
                if not copy.running:
                    log.info("%s", syncpace.start_words(copy, decided, cap))
            else:
                self._retry_copies_to[copy.secondary] = self.store.clock.monotonic() + PROTECT_RETRY_S
        await self._reshare(view, decided.rates, under_way)

    def _rate_for(self, inst: Mapping[str, Any], cap: float) -> float:
        """The rate of a new copy of `inst` (Moves.copy_rate), the duty's or a job's: its share with the copies
        under way at the last look. The copy holds its slot from now on, and is not started again, until a
        report made since shows it."""
        me = _copy(inst, running=True)
        rate = syncpace.shares([c for c in self._copies if c.instance != me.instance] + [me], cap)[me.instance]
        self._sent[me.instance] = rate
        self._started[me.instance] = self.store.clock.time()
        return rate

    async def _reshare(self, view: ClusterView, rates: Mapping[str, float],
                       under_way: Mapping[str, Mapping[str, Any]]) -> None:
        """Send each copy under way whose share changed its new rate (one that a job holds: at a later look)."""
        for name in [n for n in self._sent if n not in rates]:
            del self._sent[name]
        for name, inst in sorted(under_way.items()):
            rate = rates[name]
            if name in view.busy or abs(self._sent.get(name, -1.0) - rate) < 0.01:
                continue
            try:
                await self.store.order(inst["primary_node"], "instance.mirror-rate",
                                       {"name": name, "disks": inst["disks"],
                                        "rate_mib_s": rate / max(1, len(inst["disks"]))})
            except JobFailed as exc:
                log.warning("could not give the disk copy of instance '%s' its new rate: %s", name, exc)
                continue
            if name in self._sent:
                log.info("the disk copy of instance '%s' to node '%s' goes on at %s (was %s): the copies through "
                         "its nodes changed", name, inst["secondary_node"], syncpace.rate_words(rate),
                         syncpace.rate_words(self._sent[name]))
            self._sent[name] = rate

    async def _note_queue(self, view: ClusterView, queued: Mapping[str, tuple[int, int]]) -> None:
        """Keep each waiting copy's place in its replica record (`instance info`: "queued (3rd of 12)"), and
        take it out of the records of copies no longer waiting."""
        for name, record in view.replicas.items():
            place = list(queued[name]) if name in queued else None
            if record.get("queued") == place:
                continue
            current, revision = await self.moves.replica(name)
            if revision:
                new = {k: v for k, v in current.items() if k != "queued"} | ({"queued": place} if place else {})
                await self.moves.put_if_unchanged(name, new, revision)

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


def _copying(view: ClusterView, inst: Mapping[str, Any]) -> bool:
    """Whether the primary's report shows a disk of this `mirror` instance being copied (it holds a slot)."""
    if inst.get("disk_template") not in model.QUORUM_MIRRORED or not inst.get("secondary_node") \
            or inst["primary_node"] not in view.fresh:
        return False
    states = ((view.reports.get(inst["primary_node"]) or {}).get("mirrors") or {}).get(inst["name"]) or []
    return any(s.get("status") in COPYING + NO_PROGRESS for s in states)


def _copy(inst: Mapping[str, Any], running: bool) -> syncpace.Copy:
    return syncpace.Copy(inst["name"], inst["primary_node"], inst["secondary_node"],
                         str(inst.get("priority") or "normal"), running)
