"""This node's part in the master election: the role with its job handlers and duties, run on candidates."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from election.etcd import EtcdClient, EtcdError, Op, WatchEvent
from election.lease import MasterLease
from election.mirror import Mirror
from election.replica import Replica
from membership.rpc import SerfRpc

from hostagent import model, pki
from hostagent.clock import SYSTEM, Clock
from hostagent.master.duties.autofailover import AutoFailover
from hostagent.master.duties.scheduled_backups import ScheduledBackups
from hostagent.master.jobarchive import JobArchive
from hostagent.master.node_ops import NodeOperations
from hostagent.master.jobs import lock_keys
from hostagent.master.operations import Operations
from hostagent.master.role import MasterRole
from hostagent.master.rotation import Rotation
from hostagent.node.supervisor import Loops
from hostagent.orders import NodeClient
from hostagent.status import report_fresh

log = logging.getLogger(__name__)


def slot_or_instance_freed(seen: dict[str, tuple[frozenset[str], frozenset[str]]],
                           events: Sequence[WatchEvent]) -> bool:
    """Whether a node's new report no longer lists an instance its previous one did, or no longer shows a boot
    under way that its previous one showed (the guest booted or timed out: its start slot is free for the next
    restart). `seen` (node -> the instances its last report listed, and those of them booting) is brought up
    to date."""
    wake = False
    for event in events:
        if not event.kv.key.startswith(model.REPORTS):
            continue
        node = event.kv.key[len(model.REPORTS):]
        try:
            report = json.loads(event.kv.value) if event.type == "put" else {}
        except ValueError:
            report = {}
        listed = report.get("instances") if isinstance(report, dict) else None
        listed = listed if isinstance(listed, dict) else {}
        now = frozenset(listed)
        booting = frozenset(name for name, row in listed.items()
                            if isinstance(row, dict) and row.get("boot") == "waiting")
        before, was_booting = seen.get(node, (frozenset(), frozenset()))
        wake = wake or bool(before - now) or bool(was_booting - booting)
        seen[node] = (now, booting)
    return wake


def master_lost(events: Sequence[WatchEvent]) -> bool:
    """Whether the master key was deleted (its lease expired or was revoked): time to campaign."""
    return any(e.type == "delete" and e.kv.key == model.MASTER_KEY for e in events)


class Candidacy:
    """Built with the cluster side on every node (the API asks `role` who is master); start() enters the
    election, on candidates only, until stop() (the node left the etcd members) or the loops end."""

    def __init__(self, node: str, etcd: EtcdClient, nodes: NodeClient, mirror: Mirror, replica: Replica,
                 paths: pki.PkiPaths, lease_ttl_s: int, on_change: Callable[[str], None],
                 serf: Callable[[], Awaitable[SerfRpc]], gossip_key: Callable[[], str], clock: Clock = SYSTEM) -> None:
        self._node = node
        self._mirror = mirror
        self._replica = replica
        self._etcd = etcd
        lease = MasterLease(etcd, key=model.MASTER_KEY, ttl_s=lease_ttl_s)
        self.role = MasterRole(node, etcd, lease, lock_keys=lock_keys, on_change=on_change, catch_up=self._catch_up,
                               clock=clock, defer=self._holds_etcd_leader)
        self.ops = Operations(self.role, nodes)
        self.node_ops = NodeOperations(self.ops.store, paths, self.ops.handlers(), self.ops.moves,
                                       self.ops.submit_simple)
        rotation = Rotation(self.ops.store, paths, serf, gossip_key)
        self.role.handlers = {**self.ops.handlers(), **self.node_ops.handlers(),
                              "cluster.rotate-secrets": rotation.job}
        self.role.on_elected.append(self._fence_older_masters)
        self.autofailover = AutoFailover(self.ops.store, self.ops.views)
        self.scheduled_backups = ScheduledBackups(self.ops.store, self.ops.views, self.ops.backups)
        self.role.duties += [self._pool_duty, self._fence_stragglers, JobArchive(self.ops.store).step,
                             self.ops.mirrors.keep_mirrors,
                             self.ops.restarter.step, self.autofailover.step, self.node_ops.tokens.sweep_tokens,
                             self.scheduled_backups.step]
        self._task: asyncio.Task[Any] | None = None
        self._running: dict[str, tuple[frozenset[str], frozenset[str]]] = {}  # node -> (listed, booting)
        mirror.listeners.append(self._reports_changed)
        mirror.listeners.append(self._master_changed)

    def _master_changed(self, events: Sequence[WatchEvent]) -> None:
        """The master key deleted: campaign now rather than at the next look at it."""
        if master_lost(events) and not self.role.is_master:
            self.role.wake()

    async def _holds_etcd_leader(self) -> bool:
        """Whether this node's etcd member is the Raft leader while other candidates exist: the master
        is better elsewhere, so that one node's death never costs an etcd election on top of the lease."""
        nodes = dict(self._replica.prefix_json(model.NODES))
        mine = next((n for n in nodes.values() if n.get("name") == self._node), None)
        others = [n for n in nodes.values() if n.get("candidate") and n.get("name") != self._node]
        if mine is None or not others:
            return False
        try:
            status = await self._etcd.status(model.etcd_client_url(mine))
        except EtcdError:
            return False  # no answer from our own member: nothing to leave to the others
        return bool(status["leader"]) and status["leader"] == status["member_id"]

    def _reports_changed(self, events: Sequence[WatchEvent]) -> None:
        """A report that no longer lists an instance (its QEMU died, or it was stopped), or whose guest's boot
        ended, wakes the master at once, so a restart does not wait for the next pass of the duties (up to
        two thirds of a second, once per boot of a storm). Read on the master only."""
        if not self.role.is_master:
            self._running.clear()
            return
        if slot_or_instance_freed(self._running, events):
            self.role.wake()

    def start(self, loops: Loops) -> None:
        """Take part in the election (again a no-op while already in it)."""
        if self._task is None:
            self._task = loops.spawn(self.role.run(loops.stop), name="master")

    async def stop(self) -> None:
        """Leave the election at once; when the agent stops, its loops have already ended the role."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _catch_up(self, revision: int, timeout_s: float) -> bool:
        """A new master acts only once its own replica has everything committed before it won."""
        return await self._mirror.wait_for_revision(revision, timeout_s=timeout_s)

    async def _fence_older_masters(self) -> None:
        """Record the new token and tell every node at once, so an older master's orders are refused."""
        assert self.role.token is not None
        info = {"node": self._node, "token": self.role.token.to_str(), "since": self.role.clock.time()}
        await self.ops.store.write([Op.put(model.MASTER_INFO_KEY, model.dumps(info))])
        nodes = await self.ops.store.prefix(model.NODES)

        async def hello(name: str) -> None:
            try:
                await self.ops.store.order(name, "node.hello", {}, timeout_s=5)
            except Exception as exc:  # noqa: BLE001 - a node that is down learns the token later
                log.info("node '%s' did not take the new master token yet: %s", name, exc)

        await asyncio.gather(*(hello(n["name"]) for n in nodes))

    async def _fence_stragglers(self) -> None:
        """Nodes that have not seen this master's token yet (they were away at the election) get it now."""
        assert self.role.token is not None
        mine, now = self.role.token.to_str(), self.role.clock.time()
        behind = [r["node"] for _, r in self._replica.prefix_json(model.REPORTS)
                  if r.get("fencing_token") != mine and report_fresh(r, now)]

        async def hello(name: str) -> None:
            try:
                await self.ops.store.order(name, "node.hello", {}, timeout_s=3)
            except Exception as exc:  # noqa: BLE001 - retried next pass
                log.info("node '%s' has not taken the new master token yet: %s", name, exc)

        await asyncio.gather(*(hello(n) for n in behind))

    async def _pool_duty(self) -> None:
        try:
            await self.node_ops.record_serials()
            await self.node_ops.pool_step()
        except Exception as exc:  # noqa: BLE001 - retried next pass; the reason is logged
            log.warning("could not change the master candidate pool: %s", exc)
