"""The master's restart duty: runs hostagent.master.decide.restarts.decide on the config and carries it out.

Each pass takes this tick's view of the cluster (hostagent.master.view) and
reads the restart tracks from etcd, asks `decide`, writes the tracks that
changed to /corral/restarts/<instance> (so a new master carries on where the
old one stopped, and every node shows "failed" with the reason) with the
events that say why (hostagent.master.events, which also logs them), and
sends the starts as background tasks so that one slow node never holds up
the others. An instance given up while its QEMU still runs (a guest that
did not boot in time) is stopped the same way, after its console is kept.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from election.etcd import Op

from hostagent import model
from hostagent.master.jobs import JobFailed
from hostagent.master.moves import Moves
from hostagent.master.decide.restarts import Event, Policy, Track, decide
from hostagent.master.store import Store
from hostagent.master.view import Views, for_restarts

log = logging.getLogger(__name__)

PASS_EVERY_S = 0.2  # at most this often, however often the master is woken (hostagent.master.candidacy)


class Restarter:
    def __init__(self, store: Store, views: Views, moves: Moves) -> None:
        self.store = store
        self.views = views
        self.moves = moves  # starts apply pending changes and protect a mirror the way a start job does
        self._starting: dict[str, asyncio.Task[None]] = {}
        self._stopping: set[asyncio.Task[None]] = set()
        self._last_pass = 0.0

    def starting(self, name: str) -> bool:
        """A start of this instance is under way (other duties leave it alone meanwhile)."""
        task = self._starting.get(name)
        return task is not None and not task.done()

    async def step(self) -> None:
        if self.store.clock.monotonic() - self._last_pass < PASS_EVERY_S:
            return
        self._last_pass = self.store.clock.monotonic()
        self._starting = {n: t for n, t in self._starting.items() if not t.done()}
        view = await self.views.current()
        now = view.now
        tracks = {t["name"]: Track.from_dict(t) for t in await self.store.prefix(model.RESTARTS)}
        policy = Policy(backoff_s=float(view.cluster.get("restart_backoff_s", Policy.backoff_s)))
        decision = decide(for_restarts(view, set(self._starting)), tracks, now, policy)
        await self._save(tracks, decision.tracks, decision.events, now)
        for event in decision.events:
            if event.kind == "give-up":
                await self._keep_console(event.instance, event.node, list(event.console))
        by_name = {i["name"]: i for i in view.instances}
        for name, _ in decision.stops:
            task = asyncio.create_task(self._stop(dict(by_name[name])), name=f"stop-{name}")
            self._stopping.add(task)
            task.add_done_callback(self._stopping.discard)
        for name, node in decision.starts:
            seen = view.reports.get(node, {}).get("instances", {}).get(name)
            self._starting[name] = asyncio.create_task(self._start(dict(by_name[name]), dead_qemu=seen is not None),
                                                       name=f"restart-{name}")

    async def _save(self, before: dict[str, Track], after: dict[str, Track], events: list[Event], now: float) -> None:
        """Tracks that changed and the events that say why, in one write (hostagent.master.events)."""
        ops = [Op.put(model.restart_key(n), model.dumps({"name": n, **t.to_dict()}))
               for n, t in after.items() if before.get(n) != t]
        ops += [Op.delete(model.restart_key(n)) for n in before if n not in after]
        if ops or events:
            await self.store.write(ops, events=events, now=now)

    async def _keep_console(self, name: str, node: str, seen: list[str]) -> None:
        """The last console lines of an instance given up: they usually say why it did not come up.

        `seen`: the lines the node's boot watch reported, if any; else the node is asked."""
        tail = seen
        try:
            if not tail:
                tail = (await self.store.order(node, "instance.console-tail", {"name": name}, timeout_s=10))["lines"]
        except JobFailed as exc:
            tail = [f"(console of node '{node}' not readable: {exc})"]
        raw = await self.store.get(model.restart_key(name))
        if raw is not None:
            raw["console"] = tail
            await self.store.write([Op.put(model.restart_key(name), model.dumps(raw))])

    async def _stop(self, inst: dict[str, Any]) -> None:
        """Hard stop of a QEMU whose guest was given up: it would only hold memory and CPU."""
        name, node = inst["name"], inst["primary_node"]
        try:
            await self.store.order(node, "instance.stop", {"name": name, "timeout_s": 0, "force": True,
                                                           "nic_count": len(inst["nics"])})
            log.info("instance '%s': stopped its QEMU on node '%s' (given up)", name, node)
        except JobFailed as exc:
            log.warning("instance '%s': could not stop its QEMU on node '%s' after giving it up: %s; "
                        "`corral instance stop %s` stops it", name, node, exc, name)

    async def _start(self, inst: dict[str, Any], dead_qemu: bool) -> None:
        """One start order; a failure is recorded as the track's last error, for the next decision.

        `dead_qemu`: QEMU is there but its guest is not (panicked, shut down): stop it first."""
        name, node = inst["name"], inst["primary_node"]
        try:
            hv = await self.store.hvparams(inst)
            if dead_qemu:
                await self.store.order(node, "instance.stop", {"name": name, "timeout_s": 0, "force": True,
                                                               "nic_count": len(inst["nics"])})
            result = await self.moves.start_order(node, inst, hv)
            log.info("instance '%s' restarted on node '%s' (pid %s)", name, node, result.get("pid"))
            if inst.get("secondary_node"):
                await self.moves.protect(None, inst)
        except Exception as exc:  # noqa: BLE001 - nobody awaits this task: every failure ends here, in words
            log.warning("instance '%s': start on node '%s' failed: %s", name, node, exc)
            try:
                raw = await self.store.get(model.restart_key(name))
                if raw is not None:
                    raw["last_error"] = str(exc) or type(exc).__name__
                    await self.store.write([Op.put(model.restart_key(name), model.dumps(raw))])
            except Exception as record_exc:  # noqa: BLE001 - e.g. this node stopped being master meanwhile
                log.warning("instance '%s': could not record the failed start (%s); the next master judges it "
                            "from the node's report", name, record_exc)

