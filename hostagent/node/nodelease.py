"""This node's lease in etcd: proof to the master that the node is alive and connected.

The key /corral/leases/<node> lives exactly as long as the lease. The master
fails a node's auto-failover instances over only once that key is gone, and
`hostagent.node.selffence` stops them here before then, counting from
`renewed_at`: the boot-time clock reading taken just before the last
keepalive that succeeded was sent. The lease is not revoked when the agent
stops: its QEMUs outlive it, and a restarted agent renews in time.
"""

from __future__ import annotations

import asyncio
import logging

from election.etcd import EtcdClient, EtcdError, LeaseExpired

from hostagent import model
from hostagent.clock import SYSTEM, Clock

log = logging.getLogger(__name__)

NODE_LEASE_TTL_S = 20
RETRY_S = 1.0  # after a failed renewal: the deadline is near, try again soon


class NodeLease:
    def __init__(self, client: EtcdClient, node: str, ttl_s: int = NODE_LEASE_TTL_S, clock: Clock = SYSTEM) -> None:
        self._client = client
        self._clock = clock
        self._node = node
        self.ttl_s = ttl_s
        self.renewed_at: float | None = None
        self._lease_id: int | None = None
        self._paused_until = 0.0

    def pause(self, seconds: float) -> None:
        """Drill: stop renewing for `seconds`, as a node cut off from etcd would."""
        self._paused_until = self._clock.boot() + seconds

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            wait = self.ttl_s / 4
            try:
                if self._clock.boot() >= self._paused_until:
                    await self._renew()
            except EtcdError as exc:
                wait = RETRY_S
                if self._lease_id is not None:
                    log.warning("could not renew node '%s''s lease: %s", self._node, exc)
            try:
                await asyncio.wait_for(stop.wait(), wait)
            except asyncio.TimeoutError:
                pass

    async def _renew(self) -> None:
        sent = self._clock.boot()
        if self._lease_id is not None:
            try:
                await self._client.lease_keepalive(self._lease_id)
                self.renewed_at = sent
                return
            except LeaseExpired:
                log.warning("node '%s''s lease expired; taking a new one", self._node)
                self._lease_id = None
        lease_id = await self._client.lease_grant(self.ttl_s)
        await self._client.put(model.lease_key(self._node),
                               model.dumps({"node": self._node, "since": self._clock.time()}), lease=lease_id)
        self._lease_id = lease_id
        self.renewed_at = sent
        log.info("node '%s' holds its node lease (ttl %d s)", self._node, self.ttl_s)
