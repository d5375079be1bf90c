"""The master's node operations: removing and modifying nodes, draining and
evacuating them, the candidate pool, and planned master hand-over; admitting
them is hostagent.master.join_tokens.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from election.etcd import EtcdError, EtcdRequestFailed, Op

from hostagent import model, pki
from hostagent.errors import BadRequest, Conflict, NotFound
from hostagent.master.balancing import Balancing, run_steps
from hostagent.master.config_jobs import ConfigJobs, SubmitInstance
from hostagent.master.decide.evacuation import Plan, Step, plan_evacuation
from hostagent.master.jobs import Handler, JobContext
from hostagent.master.join_tokens import JoinTokens
from hostagent.master.moves import Moves
from hostagent.master.role import MasterRole
from hostagent.master.store import Store
from hostagent.master.decide.pool import DEFAULT_POOL_SIZE, PoolChange, next_change
from hostagent.status import report_fresh

log = logging.getLogger(__name__)

HANDOVER_S = 15.0
ETCD_JOIN_TIMEOUT_S = 90.0


def _settling(exc: EtcdError) -> bool:
    """etcd's refusal of membership changes right after a member (re)connected."""
    return "unhealthy cluster" in str(exc)


class NodeOperations:
    def __init__(self, store: Store, pki_paths: pki.PkiPaths, instance_jobs: Mapping[str, Handler],
                 moves: Moves, submit_instance: SubmitInstance | None = None) -> None:
        """`instance_jobs`: the instance job handlers by op, which an evacuation runs as its steps;
        `submit_instance`: the submit of one instance job (op, name, params), for jobs that make jobs."""
        self.store = store
        self.role: MasterRole = store.role
        self.instance_jobs = instance_jobs
        self.pki = pki_paths
        self.tokens = JoinTokens(store, pki_paths)
        self.balancing = Balancing(store, moves, instance_jobs)
        self.config = ConfigJobs(store, self.modify, submit_instance)  # settings, flags and tags as jobs, for Ganeti's RAPI

    async def _nodes(self) -> list[dict[str, Any]]:
        return await self.store.prefix(model.NODES)

    async def _node(self, name: str) -> dict[str, Any]:
        node = await self.store.get(model.node_key(name))
        if node is None:
            names = sorted(n["name"] for n in await self._nodes())
            raise NotFound(f"no node named '{name}' (nodes: {', '.join(names)})")
        return node

    # ---- remove / modify -------------------------------------------------------------
    async def remove(self, name: str, force: bool) -> dict[str, Any]:
        node = await self._node(name)
        if name == self.role.node:
            raise Conflict(f"node '{name}' is the master; hand over first with "
                           "`corral cluster master-failover`, then remove it from the new master")
        hosted = [i["name"] for i in await self.store.prefix(model.INSTANCES)
                  if name in (i["primary_node"], i.get("secondary_node"))]
        if hosted and not force:
            raise Conflict(f"node '{name}' hosts instances ({', '.join(hosted)}); move or remove them, "
                           "or use --force to remove the node anyway (its instances will show as node-down)")
        if node.get("candidate"):
            await self._leave_etcd(node, "node removed")
        revoked = model.revocations(node, f"node '{name}' removed", self.store.clock.time())
        await self.store.write([Op.delete(model.node_key(name)), Op.delete(model.report_key(name)),
                                Op.delete(model.lease_key(name))] + [Op.put(k, v) for k, v in revoked])
        log.info("node '%s' removed from the cluster; its certificate is no longer accepted by agents or etcd",
                 name)
        return {"node": name, "instances_left": hosted}

    async def modify(self, name: str, changes: dict[str, Any]) -> dict[str, Any]:
        node = await self._node(name)
        flags = {"candidate": "master_capable", "drained": "drained", "offline": "offline"}
        unknown = set(changes) - set(flags)
        if unknown:
            raise BadRequest(f"unknown node setting(s) {', '.join(sorted(unknown))}; use candidate, drained, offline")
        for key, value in changes.items():
            if not isinstance(value, bool):
                raise BadRequest(f"{key} must be yes or no, got {value!r}")
            node[flags[key]] = value
        if name == self.role.node and (node.get("offline") or not node.get("master_capable", True)):
            raise Conflict(f"node '{name}' is the master; hand over first with `corral cluster master-failover`")
        await self.store.write([Op.put(model.node_key(name), model.dumps(node))])
        log.info("node '%s' modified: %s", name, ", ".join(f"{k}={v}" for k, v in changes.items()))
        return node

    # ---- drain / evacuate ------------------------------------------------------------
    async def set_drained(self, name: str, drained: bool) -> dict[str, Any]:
        """`node drain|undrain`: says whether anything changed, so a repeat is harmless and visible."""
        node = await self._node(name)
        changed = bool(node.get("drained")) != drained
        if changed:
            await self.store.write([Op.put(model.node_key(name), model.dumps({**node, "drained": drained}))])
            log.info("node '%s' %s", name, "drained: no new instances are placed there" if drained
                     else "undrained: it takes new instances again")
        return {"node": name, "drained": drained, "changed": changed}

    async def plan_evacuation(self, name: str) -> Plan:
        await self._node(name)
        reports = {r["node"]: r for r in await self.store.prefix(model.REPORTS)}
        return plan_evacuation(name, {n["name"]: n for n in await self._nodes()}, reports,
                               await self.store.trusting_instances(reports), self.store.clock.time())

    async def submit_evacuation(self, name: str) -> int:
        """Drain the node, then run the plan as one job; a plan that does not fit changes nothing."""
        plan = await self.plan_evacuation(name)
        if not plan.fits:
            raise Conflict(f"node '{name}' cannot be evacuated, so nothing was changed:\n"
                           + "\n".join(f"  - {problem}" for problem in plan.problems))
        await self.set_drained(name, True)
        return await self.role.require().submit(
            "node.evacuate", {"node": name, "steps": [s.to_dict() for s in plan.steps], "instances": plan.instances()},
            f"evacuate node '{name}'", reservations=[model.reservation_key("evacuation", name)])

    def handlers(self) -> dict[str, Handler]:
        return {"node.evacuate": self._job_evacuate, **self.balancing.handlers(), **self.config.handlers()}

    async def _job_evacuate(self, ctx: JobContext, args: dict[str, Any]) -> dict[str, Any]:
        """Each step is the instance job itself (its checks included); the first failure stops the rest."""
        name, steps = args["node"], [Step.from_dict(s) for s in args["steps"]]
        await ctx.log(f"evacuating node '{name}' (drained: nothing new is placed there) in {len(steps)} step(s)")
        await run_steps(ctx, self.instance_jobs, steps, lambda index: _so_far(name, steps, index))
        left = sorted(i["name"] for i in await self.store.prefix(model.INSTANCES)
                      if name in (i["primary_node"], i.get("secondary_node")))
        if left:
            await ctx.log(f"node '{name}' still holds {', '.join(left)} (changed while the evacuation ran); "
                          f"run `corral node evacuate {name}` again")
        else:
            await ctx.log(f"node '{name}' is empty: primary or secondary of no instance; it stays drained "
                          f"(`corral node undrain {name}` once it is back in service)")
        return {"node": name, "steps": len(steps), "left": left}

    # ---- candidate pool --------------------------------------------------------------
    async def record_serials(self) -> list[str]:
        """Nodes recorded before certificate serials were (an upgraded cluster) get the serial their own
        report gives; from then on only that certificate is accepted for them. The nodes done."""
        reports = {r["node"]: r for r in await self.store.prefix(model.REPORTS)}
        done = []
        for node in await self._nodes():
            serial = (reports.get(node["name"]) or {}).get("cert_serial")
            if "cert_serials" not in node and isinstance(serial, str) and serial:
                await self.store.write([Op.put(model.node_key(node["name"]),
                                               model.dumps({**node, "cert_serials": [serial]}))])
                log.info("node '%s': recorded its certificate serial %s (only that certificate is accepted now)",
                         node["name"], serial)
                done.append(node["name"])
        return done

    async def pool_step(self) -> PoolChange | None:
        """Carry out at most one pool change, only while every etcd member is healthy."""
        if not self.role.lease_ok():
            return None
        cluster = await self.store.get(model.CLUSTER_KEY) or {}
        nodes = await self._nodes()
        reports = {r["node"]: r for r in await self.store.prefix(model.REPORTS)}
        change = next_change(nodes, reports, self.role.node, int(cluster.get("candidate_pool_size",
                                                                                DEFAULT_POOL_SIZE)), self.store.clock.time())
        if change is None:
            return None
        members = await self.role.client.member_list()
        leaving = model.etcd_peer_url(next(n for n in nodes if n["name"] == change.node))
        for member in members:
            if change.action == "demote" and leaving in member.peer_urls:
                continue  # the member being removed may well be the dead one
            if member.is_learner or not member.client_urls:
                # a promotion that died half-way: a learner never votes, so removing it is safe
                log.warning("removing etcd member %s left by an unfinished promotion", member.name or member.peer_urls)
                await self.role.client.member_remove(member.id)
                return None
            try:
                await self.role.client.status(member.client_urls[0])
            except Exception:  # noqa: BLE001 - any failure means "not healthy now"
                return None
        node = next(n for n in nodes if n["name"] == change.node)
        if change.action == "promote":
            await self._join_etcd(node, members, change.reason)
        else:
            await self._leave_etcd(node, change.reason)
        return change

    async def _join_etcd(self, node: dict[str, Any], members: list[Any], reason: str) -> None:
        """Add the node as a non-voting learner, start its member, promote it once in sync.

        Until the promotion the quorum is unchanged, so a node that fails to
        start its member costs nothing but a retry.
        """
        try:
            member = await self.role.client.member_add([model.etcd_peer_url(node)], learner=True)
        except EtcdError as exc:
            if _settling(exc):
                return  # etcd's 5 s settling rule after a member (re)connected; next pass
            raise
        log.info("adding node '%s' to the master candidates (%s)", node["name"], reason)
        initial = [f"{m.name}={m.peer_urls[0]}" for m in members if m.name]
        initial.append(f"{node['name']}={model.etcd_peer_url(node)}")
        with open(self.pki.ca_key) as fh:
            ca_key = fh.read()
        try:
            await self.store.order(node["name"], "etcd.join", {"initial_cluster": ",".join(initial),
                                                                "ca_key": ca_key}, timeout_s=ETCD_JOIN_TIMEOUT_S)
            await self._promote(member.id, node["name"])
        except BaseException as exc:
            log.warning("node '%s' could not become an etcd member (%s); removing the learner again",
                        node["name"], exc)
            await self._patiently(lambda: self.role.client.member_remove(member.id))
            try:  # and reset the node, so a later promotion starts from scratch
                await self.store.order(node["name"], "etcd.leave", {}, timeout_s=30)
            except Exception as leave_exc:  # noqa: BLE001 - the node resets at its next promotion
                log.warning("node '%s' did not confirm the reset: %s", node["name"], leave_exc)
            raise
        await self.store.write([Op.put(model.node_key(node["name"]), model.dumps({**node, "candidate": True}))])
        log.info("node '%s' is now a master candidate", node["name"])

    async def _patiently(self, change: Callable[[], Awaitable[None]]) -> None:
        """etcd refuses membership changes for 5 s after a member (re)connects: wait that out."""
        deadline = self.store.clock.monotonic() + 20
        while True:
            try:
                await change()
                return
            except EtcdError as exc:
                if not _settling(exc) or self.store.clock.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)

    async def _promote(self, member_id: int, name: str) -> None:
        deadline = self.store.clock.monotonic() + ETCD_JOIN_TIMEOUT_S
        while True:
            try:
                await self.role.client.member_promote(member_id)
                return
            except EtcdRequestFailed as exc:
                if self.store.clock.monotonic() > deadline:
                    raise
                log.info("etcd member of node '%s' is catching up before promotion (%s)", name, exc.message)
                await asyncio.sleep(0.5)

    async def _leave_etcd(self, node: dict[str, Any], reason: str) -> None:
        log.info("removing node '%s' from the master candidates (%s)", node["name"], reason)
        for member in await self.role.client.member_list():
            if member.name == node["name"] or model.etcd_peer_url(node) in member.peer_urls:
                await self._patiently(lambda: self.role.client.member_remove(member.id))
        gone = model.etcd_client_url(node)  # a removed member answers "raft: stopped": stop asking it
        remaining = [e for e in self.role.client.endpoints if e != gone]
        if remaining:
            self.role.client.set_endpoints(remaining)
        await self.store.write([Op.put(model.node_key(node["name"]), model.dumps({**node, "candidate": False}))])
        try:
            await self.store.order(node["name"], "etcd.leave", {}, timeout_s=30)
        except Exception as exc:  # noqa: BLE001 - the member is already out; the node cleans up on restart
            log.warning("node '%s' did not confirm leaving etcd (%s); it will when it is back", node["name"], exc)

    # ---- planned hand-over -----------------------------------------------------------
    async def master_failover(self, to: str | None) -> dict[str, Any]:
        nodes = {n["name"]: n for n in await self._nodes()}
        candidates = sorted(n for n, rec in nodes.items() if rec.get("candidate") and n != self.role.node)
        if to is not None:
            if to == self.role.node:
                raise Conflict(f"node '{to}' is already the master")
            if to not in candidates:
                raise BadRequest(f"node '{to}' is not a master candidate (candidates: {', '.join(candidates) or 'none'})")
        elif not candidates:
            raise Conflict("there is no other master candidate to hand over to")
        if to is not None:
            report = await self.store.get(model.report_key(to))
            if not report_fresh(report, self.store.clock.time()):
                raise Conflict(f"node '{to}' has not reported recently; hand over to a healthy candidate")
        busy = self.role.require().running_jobs()
        if busy:
            raise Conflict(f"job(s) {', '.join(map(str, busy))} are running on this master; wait for them "
                           "(`corral job watch ID`) so that the hand-over interrupts nothing")
        handover = {"from": self.role.node, "to": to, "until": self.store.clock.time() + HANDOVER_S}
        await self.store.write([Op.put(model.HANDOVER_KEY, model.dumps(handover))])
        log.info("handing the master role over to %s", f"node '{to}'" if to else "another candidate")
        await self.role.step_down(HANDOVER_S)
        return {"from": handover["from"], "to": to}


def _so_far(node: str, steps: list[Step], failed: int) -> str:
    """What an evacuation stopped at the step `failed` (1-based) did, and what it left."""
    done = ", ".join(f"{s.action} '{s.instance}'" for s in steps[:failed - 1]) or "nothing"
    left = ", ".join(f"{s.action} '{s.instance}'" for s in steps[failed - 1:])
    return (f"Done: {done}. Not done: {left}. Node '{node}' stays drained; fix the cause and run "
            f"`corral node evacuate {node}` again (it plans what is left)")
