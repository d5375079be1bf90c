"""A simulated cluster that runs the master as the agent does: its election, job runner, store and duties.

Real: hostagent.master.role.MasterRole (election over election.lease), the Operations and their Store, the
restart duty, the job runner; the nodes' leases (hostagent.node.nodelease.NodeLease). Simulated: etcd
(tests/fakes/etcd.py, held to a real etcd by a contract test), time (virtual, tests/fakes/loop.py), and
each node's QEMUs and reports, the node side answering the master's orders. The harness never decides:
it applies the operator's commands and faults at their times, and records the events the product writes.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from election.lease import MasterLease
from fakes.clock import FakeClock
from fakes.etcd import FakeEtcd, FakeEtcdClient

from hostagent import model
from hostagent.master.operations import Operations, lock_keys
from hostagent.master.role import MasterRole
from hostagent.node.nodelease import NodeLease
from hostagent.orders import OrderFailed

REPORT_EVERY_S = 2.0
MASTER_TTL_S = 10
NODE_TTL_S = 20


@dataclass
class SimNode:
    """One node's QEMUs and reports; `broken` instances die as soon as they start (a guest that cannot boot)."""

    name: str
    memory_mib: int = 16000
    powered: bool = True
    qemus: dict[str, int] = field(default_factory=dict)  # instance -> pid
    broken: set[str] = field(default_factory=set)
    pids: Any = field(default_factory=lambda: itertools.count(1000))

    def report(self, now: float, instances: dict[str, dict[str, Any]]) -> dict[str, Any]:
        used = sum(int(instances.get(i, {}).get("memory_mib", 0)) for i in self.qemus)
        return {"node": self.name, "time": now, "cpus": 4, "load_1m": 0.1, "memory_free_mib": self.memory_mib - used,
                "instances": {i: {"status": "running", "pid": pid} for i, pid in self.qemus.items()}}

    def order(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        if not self.powered:
            raise OrderFailed(f"node '{self.name}' does not answer (powered off)")
        if op == "instance.start":
            name = args["instance"]["name"]
            if name in self.broken:
                return {"pid": next(self.pids)}  # it starts, then its guest dies before the next report
            self.qemus[name] = next(self.pids)
            return {"pid": self.qemus[name]}
        if op == "instance.stop":
            self.qemus.pop(args["name"], None)
            return {}
        if op == "instance.console-tail":
            return {"lines": ["Kernel panic - not syncing"] if args["name"] in self.broken else []}
        if op == "node.hello":
            return {"node": self.name}
        raise OrderFailed(f"the simulated node '{self.name}' has no answer for order {op!r}")


class SimNodeClient:
    """hostagent.orders.NodeClient's one call, delivered to the simulated node."""

    def __init__(self, nodes: dict[str, SimNode]) -> None:
        self._nodes = nodes

    async def order(self, node: str, address: str, port: int, op: str, args: dict[str, Any], token: Any,
                    timeout_s: float = 600.0) -> dict[str, Any]:
        await asyncio.sleep(0.05)
        return self._nodes[node].order(op, args)


class SimCluster:
    def __init__(self, clock: FakeClock, nodes: list[str], candidates: int = 3) -> None:
        self.clock = clock
        self.etcd = FakeEtcd(clock)
        self.nodes = {n: SimNode(n) for n in nodes}
        self.client = SimNodeClient(self.nodes)
        self.roles: dict[str, MasterRole] = {}
        self.leases: dict[str, NodeLease] = {}
        for name in nodes:
            etcd = self._etcd_of(name)
            self.leases[name] = NodeLease(etcd, name, NODE_TTL_S, clock)  # type: ignore[arg-type]
            if len(self.roles) < candidates:
                role = MasterRole(name, etcd, MasterLease(etcd, key=model.MASTER_KEY, ttl_s=MASTER_TTL_S),  # type: ignore[arg-type]
                                  lock_keys=lock_keys, clock=clock)
                ops = Operations(role, self.client)  # type: ignore[arg-type]
                role.handlers = ops.handlers()
                role.duties += [ops.restarter.step]
                self.roles[name] = role
        self._stops: dict[str, asyncio.Event] = {}
        self._tasks: list[asyncio.Task[Any]] = []

    def _etcd_of(self, name: str) -> FakeEtcdClient:
        return self.etcd.client(lambda: self.nodes[name].powered)

    def seed(self, instances: list[dict[str, Any]], cluster: dict[str, Any] | None = None) -> None:
        """The config before the story starts: nodes, instances, the cluster record."""
        from election.etcd import Op
        ops = [Op.put(model.CLUSTER_KEY, model.dumps({"name": "sim", **(cluster or {})}))]
        ops += [Op.put(model.node_key(n), model.dumps({"name": n, "address": "127.0.0.1", "api_port": 1}))
                for n in self.nodes]
        ops += [Op.put(model.instance_key(i["name"]), model.dumps(i)) for i in instances]
        self.etcd.txn([], ops, [])

    # ---- running -----------------------------------------------------------------
    def _start_node(self, name: str) -> None:
        stop = self._stops[name] = asyncio.Event()
        self._tasks.append(asyncio.create_task(self.leases[name].run(stop)))
        self._tasks.append(asyncio.create_task(self._reports(name, stop)))
        if name in self.roles:
            self._tasks.append(asyncio.create_task(self.roles[name].run(stop)))

    async def _reports(self, name: str, stop: asyncio.Event) -> None:
        etcd = self._etcd_of(name)
        while not stop.is_set():
            instances = {i["name"]: i for i in (await self._instances(etcd))}
            report = self.nodes[name].report(self.clock.time(), instances)
            await etcd.put(model.report_key(name), model.dumps(report))
            try:
                await asyncio.wait_for(stop.wait(), REPORT_EVERY_S)
            except TimeoutError:
                pass

    @staticmethod
    async def _instances(etcd: FakeEtcdClient) -> list[dict[str, Any]]:
        kvs, _ = await etcd.get_prefix(model.INSTANCES)
        return [model.loads(kv.value) for kv in kvs]

    def power_off(self, name: str) -> None:
        """The node, its agent and its QEMUs are gone at once."""
        node = self.nodes[name]
        node.powered = False
        node.qemus.clear()
        self._stops[name].set()

    def power_on(self, name: str) -> None:
        """The node boots: its agent starts with no QEMU running (they did not survive the power loss)."""
        self.nodes[name].powered = True
        self._start_node(name)

    async def stop(self) -> None:
        for stop in self._stops.values():
            stop.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # ---- what happened -------------------------------------------------------------
    def events(self, since: float = 0.0) -> list[str]:
        """The events the product wrote, as state changes: time from `since`, kind, instance or node."""
        kvs, _ = self.etcd.snapshot()
        rows = [model.loads(kv.value) for kv in kvs if kv.key.startswith(model.EVENTS)]
        return [f"t={e['time'] - since:.0f} {e['kind']} {e.get('instance') or e.get('node')}" for e in rows]

    def running(self) -> dict[str, str]:
        return {i: n.name for n in self.nodes.values() if n.powered for i in n.qemus}


def wait_until(clock: FakeClock, done: Callable[[], bool], within_s: float) -> Any:
    """A coroutine that returns (True) once `done()` holds, checked every virtual second, or False after
    `within_s`."""
    async def waiting() -> bool:
        for _ in range(int(within_s)):
            if done():
                return True
            await asyncio.sleep(1.0)
        return done()
    return waiting()
