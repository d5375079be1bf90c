"""A master elected over the fake etcd: the real MasterRole, its job runner and its Store, for tests of the
master's own modules (its view, its events) without a whole SimCluster. Run it on virtual time
(fakes.loop.run): its loop keeps the master lease on the test's clock."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from election.lease import MasterLease

from fakes.etcd import FakeEtcd
from hostagent import model
from hostagent.master.jobs import Handler
from hostagent.master.jobs import lock_keys
from hostagent.master.role import MasterRole
from hostagent.master.store import Store

TTL_S = 10


@dataclass
class Master:
    role: MasterRole
    store: Store
    _stop: asyncio.Event
    _loop: asyncio.Task[None]

    async def close(self) -> None:
        self._stop.set()
        await self._loop


async def elected(etcd: FakeEtcd, handlers: dict[str, Handler] | None = None, node: str = "n1") -> Master:
    """Node `node` elected master (its loop running) with these job handlers; orders to nodes are not wired."""
    client = etcd.client()
    role = MasterRole(node, client, MasterLease(client, key=model.MASTER_KEY, ttl_s=TTL_S),  # type: ignore[arg-type]
                      lock_keys=lock_keys, clock=etcd.clock)
    role.handlers = handlers or {}
    stop = asyncio.Event()
    loop = asyncio.create_task(role.run(stop))
    await role.became_master.wait()
    nodes: Any = None
    return Master(role, Store(role, nodes), stop, loop)
