"""The master's config store and order channel, shared by every job handler and duty.

Reads go straight to etcd: the master must not act on a lagging replica.
Writes and orders carry the master lease's fencing token, and stop with
JobFailed once this node is no longer certainly master, so that a handler
never acts on a lease it may have lost. Handlers get this object instead
of each other: none of them needs another to read, write or order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from election.etcd import Compare, Op
from kvm.hvparams import hvparams_to_dict, parse_hvparams

from hostagent import model
from hostagent.errors import Conflict, NotFound
from hostagent.master.decide import replicas
from hostagent.master.decide.restarts import Event
from hostagent.master.events import event_ops, log_committed
from hostagent.master.jobs import JobFailed
from hostagent.master.role import MasterRole
from hostagent.orders import NodeClient, OrderFailed
from hostagent.status import instance_status

ORDER_TIMEOUT_S = 600.0


class Store:
    """The replicated config as the master reads and writes it, and its orders to the nodes."""

    def __init__(self, role: MasterRole, nodes: NodeClient) -> None:
        self.role = role
        self.nodes = nodes
        self.clock = role.clock

    # ---- reads ------------------------------------------------------------------
    async def get(self, key: str) -> Any:
        """The record at `key`, or None when absent."""
        kv = await self.role.client.get(key)
        return None if kv is None else model.loads(kv.value)

    async def prefix(self, prefix: str) -> list[Any]:
        kvs, _ = await self.role.client.get_prefix(prefix)
        return [model.loads(kv.value) for kv in kvs]

    async def instances(self) -> list[dict[str, Any]]:
        return list(await self.prefix(model.INSTANCES))

    async def instance(self, name: str) -> dict[str, Any]:
        """The instance `name`; NotFound names the ones there are, for the operator's next try."""
        inst = await self.get(model.instance_key(name))
        if inst is None:
            names = [i["name"] for i in await self.prefix(model.INSTANCES)]
            raise NotFound(f"no instance named '{name}'"
                           + (f" (instances: {', '.join(names)})" if names else " (the cluster has no instances)"))
        return inst

    async def trusting_instances(self, reports: dict[str, Any]) -> list[dict[str, Any]]:
        """Every instance, with `replica_in_sync` from its replica record (hostagent.master.decide.replicas)."""
        records = {r["name"]: r for r in await self.prefix(model.REPLICAS) if "name" in r}
        return replicas.with_trust(await self.prefix(model.INSTANCES), records, reports)

    async def cluster_hv(self) -> dict[str, Any]:
        cluster = await self.get(model.CLUSTER_KEY) or {}
        return cluster.get("hvparams", {})

    async def hvparams(self, inst: dict[str, Any]) -> dict[str, Any]:
        """The instance's hypervisor parameters over the cluster's: what its QEMU is started with."""
        cluster_hv = await self.cluster_hv()
        return hvparams_to_dict(parse_hvparams(inst.get("hvparams", {}), parse_hvparams(cluster_hv)))

    async def running(self, inst: dict[str, Any]) -> bool:
        """Whether a QEMU may run it now: marked up (it may be starting, unreported yet) or seen running."""
        if inst.get("admin_state") == "up":
            return True
        report = await self.get(model.report_key(inst["primary_node"]))
        return instance_status(inst, report, self.clock.time()).pid is not None

    async def nic_networks(self, inst: dict[str, Any]) -> dict[str, Any]:
        """The networks an instance's NICs are on, for the OS scripts' NIC_n_NETWORK_* environment."""
        names = {n["network"] for n in inst.get("nics") or [] if n.get("network")}
        return {name: net for name in sorted(names) if (net := await self.get(model.network_key(name))) is not None}

    # ---- writes -----------------------------------------------------------------
    async def write(self, ops: list[Op], compares: list[Compare] | None = None, refused: str = "",
                    events: Sequence[Event] = (), now: float | None = None) -> None:
        """A guarded write; with `compares`, JobFailed(`refused`) when one does not hold.

        `events` explain the write: recorded in it at `now` (default: the clock's time), and logged once
        it is committed (hostagent.master.events), so an event is written and said only with its cause."""
        token = self.role.token
        if token is None or not self.role.lease_ok():
            raise JobFailed("this node is no longer certainly master (lease not renewed in time); stopped")
        told = await event_ops(self.role.client, events, self.clock.time() if now is None else now)
        result = await self.role.lease.guarded_txn(token, [*ops, *told], extra_compares=compares or [])
        if compares and not result.succeeded:
            raise JobFailed(refused)
        log_committed(events)

    async def put_new(self, key: str, record: dict[str, Any], exists_message: str) -> None:
        """Create `key` only if absent, guarded by the master lease."""
        token = self.role.token
        if token is None:
            raise Conflict("this node stopped being master; try again")
        result = await self.role.lease.guarded_txn(token, [Op.put(key, model.dumps(record))],
                                                   extra_compares=[Compare.create_revision(key, "=", 0)])
        if not result.succeeded:
            raise Conflict(exists_message)

    async def delete_existing(self, key: str, missing_message: str) -> None:
        """Delete `key` only if present, guarded by the master lease: NotFound(`missing_message`) otherwise."""
        token = self.role.token
        if token is None:
            raise Conflict("this node stopped being master; try again")
        result = await self.role.lease.guarded_txn(token, [Op.delete(key)],
                                                   extra_compares=[Compare.create_revision(key, ">", 0)])
        if not result.succeeded:
            raise NotFound(missing_message)

    @staticmethod
    def address_writes(before: dict[str, Any] | None, after: dict[str, Any] | None) -> tuple[list[Op], list[Compare]]:
        """What writing `after` over `before` (None: absent) does to the held addresses (model.address_key),
        with the compares that make it safe: a new address is free, the networks `after` uses exist."""
        held, holds = model.held_addresses(before), model.held_addresses(after)
        ops = [Op.delete(k) for k in held if k not in holds] + [Op.put(k, v) for k, v in holds.items() if k not in held]
        compares = [Compare.create_revision(k, "=", 0) for k in holds if k not in held]
        used = {n["network"] for n in (after or {}).get("nics") or [] if n.get("network")}
        compares += [Compare.create_revision(model.network_key(n), ">", 0) for n in sorted(used)]
        return ops, compares

    # ---- orders to the nodes ----------------------------------------------------------
    async def order(self, node_name: str, op: str, args: dict[str, Any],
                    timeout_s: float = ORDER_TIMEOUT_S) -> dict[str, Any]:
        """One order to a node of the cluster, with the master's fencing token; a refusal is JobFailed."""
        node = await self.get(model.node_key(node_name))
        if node is None:
            raise JobFailed(f"node '{node_name}' is not in the cluster")
        token = self.role.token
        if token is None or not self.role.lease_ok():
            raise JobFailed("this node is no longer certainly master (lease not renewed in time); "
                            "no order sent")
        try:
            return await self.nodes.order(node_name, node["address"], node["api_port"], op, args, token, timeout_s)
        except OrderFailed as exc:
            raise JobFailed(str(exc)) from exc
