"""The cluster as the master's duties see it: read once per pass of the master loop, shared by them all.

One definition each of "alive" (a fresh report and the node lease held) and "busy" (a job holds the
instance's lock), read from one snapshot, so the restart, failover and mirror duties of one pass never
judge the same node differently. `Views.current()` builds the view for the role's current tick (the
first duty to ask reads etcd, the others reuse it); `read()` builds one now, for a request such as
`cluster simulate`. The pure decisions keep their own small inputs: `for_restarts` and `for_failovers`
convert.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from hostagent import model
from hostagent.master.decide import failovers, replicas, restarts
from hostagent.master.store import Store
from hostagent.status import report_fresh

JOB_UNSEEN_MAX_S = 30.0  # how long an instance waits for a node report made after a job on it ended


@dataclass(frozen=True)
class ClusterView:
    """What etcd and this master's job runner said at `now` (wall clock)."""

    now: float
    nodes: tuple[Mapping[str, Any], ...]
    leases: frozenset[str]  # nodes whose node lease key exists
    reports: Mapping[str, Mapping[str, Any]]  # node -> its last report
    fresh: frozenset[str]  # nodes whose report is fresh (hostagent.status.report_fresh)
    instances: tuple[Mapping[str, Any], ...]
    replicas: Mapping[str, Mapping[str, Any]]  # instance -> its replica record (hostagent.master.decide.replicas)
    cluster: Mapping[str, Any]  # the cluster record ({} before init)
    busy: frozenset[str]  # instances a queued or running job holds the lock of
    unseen: frozenset[str]  # instances whose last job ended after their node's last report (see `unseen`)
    master_since: float  # when this master took office

    @property
    def alive(self) -> frozenset[str]:
        """Nodes with a fresh report that hold their node lease: the ones work may be given to."""
        return self.fresh & self.leases


async def read(store: Store) -> ClusterView:
    """The view as etcd and the job runner have it now."""
    now = store.clock.time()
    reports = {r["node"]: r for r in await store.prefix(model.REPORTS)}
    kvs, _ = await store.role.client.get_prefix(model.LEASES)
    instances = tuple(await store.prefix(model.INSTANCES))
    records = {r["name"]: r for r in await store.prefix(model.REPLICAS) if "name" in r}
    runner = store.role.runner
    busy: frozenset[str] = frozenset()
    late: frozenset[str] = frozenset()
    if runner is not None:
        busy = frozenset(i["name"] for i in instances if runner.busy(f"instance/{i['name']}"))
        late = frozenset(i["name"] for i in instances if unseen(runner.ended_at(f"instance/{i['name']}"),
                                                                 reports.get(i["primary_node"]), now))
    return ClusterView(now=now, nodes=tuple(await store.prefix(model.NODES)),
                       leases=frozenset(kv.key.rsplit("/", 1)[1] for kv in kvs), reports=reports,
                       fresh=frozenset(n for n, r in reports.items() if report_fresh(r, now)),
                       instances=instances, replicas=records, cluster=await store.get(model.CLUSTER_KEY) or {},
                       busy=busy, unseen=late, master_since=store.role.master_since)


def unseen(job_ended_at: float, report: Mapping[str, Any] | None, now: float) -> bool:
    """A job on the instance ended after its node's last report was made: that report cannot show what the
    job did (a QEMU it just started would look absent, and be "restarted"). Waited for at most
    `JOB_UNSEEN_MAX_S`, so a node clock behind the master's only delays a restart."""
    if not job_ended_at or now - job_ended_at > JOB_UNSEEN_MAX_S:
        return False
    return report is None or float(report.get("time", 0.0)) <= job_ended_at


class Views:
    """The view of the master role's current tick, read by the first duty that asks in it."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._lock = asyncio.Lock()  # duties of one tick ask at once: one of them reads, the others wait
        self._view: ClusterView | None = None
        self._tick = -1

    async def current(self) -> ClusterView:
        async with self._lock:
            tick = self.store.role.tick
            if self._view is None or self._tick != tick:
                self._view, self._tick = await read(self.store), tick
            return self._view


def for_restarts(view: ClusterView, starting: Collection[str]) -> restarts.View:
    """The restart decision's input; `starting`: instances the restart duty has a start order in flight for
    (busy too, and counted on their node's start slots)."""
    primary = {i["name"]: i["primary_node"] for i in view.instances}
    starting_on: dict[str, int] = {}
    for name in starting:
        node = primary.get(name)
        if node:
            starting_on[node] = starting_on.get(node, 0) + 1
    return restarts.View(view.instances, view.reports, view.alive,
                         view.busy | view.unseen | frozenset(starting), starting_on)


def for_failovers(view: ClusterView) -> failovers.View:
    """The failover decision's input: instances with `replica_in_sync` from their replica record."""
    trusting = replicas.with_trust([dict(i) for i in view.instances], view.replicas, view.reports)
    return failovers.View(view.nodes, view.leases, view.reports, tuple(trusting), view.cluster, view.alive,
                          view.master_since, view.busy)
