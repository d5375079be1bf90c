"""The master's restart duty: runs hostagent.master.decide.restarts.decide on the config and carries it out.

Each pass reads the instances, the node reports and leases and the restart
tracks from etcd, asks `decide`, writes the tracks that changed to
/corral/restarts/<instance> (so a new master carries on where the old one
stopped, and every node shows "failed" with the reason) with the events that
say why (hostagent.master.events, which also logs them), and sends the
starts as background tasks so that one slow node never holds up the others.
An instance given up while its QEMU still runs (a guest that did not boot in
time) is stopped the same way, after its console is kept.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from election.etcd import Op

from hostagent import model
from hostagent.master.jobs import JobFailed
from hostagent.master.moves import Moves
from hostagent.master.decide.restarts import Event, Policy, Track, View, decide
from hostagent.master.store import Store
from hostagent.status import report_fresh

log = logging.getLogger(__name__)
JOB_UNSEEN_MAX_S = 30.0  # how long a restart waits for a node report made after a job on its instance

PASS_EVERY_S = 1.0


class Restarter:
    def __init__(self, store: Store, moves: Moves) -> None:
        self.store = store
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
        instances = await self.store.prefix(model.INSTANCES)
        reports = {r["node"]: r for r in await self.store.prefix(model.REPORTS)}
        leases = {key.rsplit("/", 1)[1] for key in await self._keys(model.LEASES)}
        now = self.store.clock.time()
        alive = frozenset(n for n, r in reports.items()
                          if report_fresh(r, now) and n in leases)
        tracks = {t["name"]: Track.from_dict(t) for t in await self.store.prefix(model.RESTARTS)}
        runner = self.store.role.runner
        busy = frozenset(i["name"] for i in instances
                         if runner is not None and (runner.busy(f"instance/{i['name']}") or unseen(
                             runner.ended_at(f"instance/{i['name']}"), reports.get(i["primary_node"]), now))
                         ) | set(self._starting)
        by_name = {i["name"]: i for i in instances}
        starting_on: dict[str, int] = {}
        for name in self._starting:
            node = by_name.get(name, {}).get("primary_node")
            if node:
                starting_on[node] = starting_on.get(node, 0) + 1
        cluster = await self.store.get(model.CLUSTER_KEY) or {}
        policy = Policy(backoff_s=float(cluster.get("restart_backoff_s", Policy.backoff_s)))
        decision = decide(View(tuple(instances), reports, alive, busy, starting_on), tracks, now, policy)
        await self._save(tracks, decision.tracks, decision.events, now)
        for event in decision.events:
            if event.kind == "give-up":
                await self._keep_console(event.instance, event.node, list(event.console))
        for name, _ in decision.stops:
            task = asyncio.create_task(self._stop(by_name[name]), name=f"stop-{name}")
            self._stopping.add(task)
            task.add_done_callback(self._stopping.discard)
        for name, node in decision.starts:
            seen = reports.get(node, {}).get("instances", {}).get(name)
            self._starting[name] = asyncio.create_task(self._start(by_name[name], dead_qemu=seen is not None),
                                                       name=f"restart-{name}")

    async def _keys(self, prefix: str) -> list[str]:
        kvs, _ = await self.store.role.client.get_prefix(prefix)
        return [kv.key for kv in kvs]

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


def unseen(job_ended_at: float, report: dict[str, Any] | None, now: float) -> bool:
    """A job on the instance ended after its node's last report was made: that report cannot show what the
    job did (a QEMU it just started would look absent, and be "restarted"). Waited for at most
    `JOB_UNSEEN_MAX_S`, so a node clock behind the master's only delays a restart."""
    if not job_ended_at or now - job_ended_at > JOB_UNSEEN_MAX_S:
        return False
    return report is None or float(report.get("time", 0.0)) <= job_ended_at
