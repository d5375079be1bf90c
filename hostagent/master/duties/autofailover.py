"""The master's node-failure duty: runs hostagent.master.decide.failovers.decide on the config and carries it out.

Each pass takes this tick's view of the cluster (hostagent.master.view) and
reads the previous decision state (/corral/failover-state, so a new master
goes on where the old one stopped), writes the new state, the events (logged
by hostagent.master.events) and a new cluster alert in one guarded write,
then submits one failover job per instance to move (a job: visible in `job
list`, resumed or ended by the next master). `simulate` runs the same decision on the live config with
nodes taken away, for `cluster simulate --fail`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from election.etcd import Op

from hostagent import model
from hostagent.errors import Conflict, NotFound
from hostagent.master.decide.failovers import Decision, Policy, State, View, decide, failbacks
from hostagent.master.store import Store
from hostagent.master.view import Views, for_failovers, read

log = logging.getLogger(__name__)

PASS_EVERY_S = 1.0


class AutoFailover:
    def __init__(self, store: Store, views: Views) -> None:
        self.store = store
        self.views = views
        self._last_pass = 0.0

    async def step(self) -> None:
        if self.store.clock.monotonic() - self._last_pass < PASS_EVERY_S:
            return
        self._last_pass = self.store.clock.monotonic()
        seen = await self.views.current()
        now, view = seen.now, for_failovers(seen)
        state = State.from_dict(await self.store.get(model.FAILOVER_STATE_KEY) or {})
        decision = decide(view, state, now)
        back = failbacks(view, decision.state, now)
        decision.events.extend(e for _, _, e in back)
        await self._save(state, decision, view.cluster, now)
        for name, _, target in decision.failovers:
            try:
                job = await self.store.role.require().submit(
                    "instance.failover", {"name": name, "fenced": True},
                    f"fail over instance '{name}' to node '{target}' (its node was lost)",
                    must_exist=[model.instance_key(name)])
                log.info("instance '%s': automatic failover is job %d", name, job)
            except Conflict as exc:
                log.info("instance '%s': automatic failover not submitted: %s", name, exc)
        for name, home, _ in back:
            try:
                await self.store.role.require().submit(
                    "instance.migrate", {"name": name}, f"fail back instance '{name}' to node '{home}'",
                    must_exist=[model.instance_key(name)])
            except Conflict as exc:
                log.info("instance '%s': failback not submitted: %s", name, exc)

    async def _save(self, before: State, decision: Decision, cluster: Mapping[str, Any], now: float) -> None:
        ops: list[Op] = []
        if decision.state != before:
            ops.append(Op.put(model.FAILOVER_STATE_KEY, model.dumps(decision.state.to_dict())))
        if decision.alert is not None:
            ops.append(Op.put(model.CLUSTER_KEY, model.dumps({**cluster, "alert": decision.alert})))
        if ops or decision.events:
            await self.store.write(ops, events=decision.events, now=now)

    async def simulate(self, fail: list[str]) -> dict[str, Any]:
        """What this master would decide if the nodes in `fail` were lost now (their leases gone)."""
        seen = await read(self.store)
        now, view = seen.now, for_failovers(seen)
        known = {n["name"] for n in view.nodes}
        unknown = [n for n in fail if n not in known]
        if unknown:
            raise NotFound(f"no node named {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        gone = frozenset(fail)
        view = View(view.nodes, view.leases - gone, view.reports, view.instances, view.cluster, view.alive - gone,
                    master_since=0.0, busy=view.busy)
        decision = decide(view, State(), now, Policy(grace_s=0.0))
        return {"fail": sorted(gone), "failovers": [{"instance": i, "from": f, "to": t}
                                                   for i, f, t in decision.failovers],
                "events": [{"kind": e.kind, "instance": e.instance, "node": e.node, "message": e.message}
                           for e in decision.events],
                "alert": decision.alert, "fits": not decision.short, "short": decision.short}
