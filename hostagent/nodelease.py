"""This node's lease in etcd: proof to the master that the node is alive and connected.

The key /corral/leases/<node> lives exactly as long as the lease. Issue 5's
fencing builds on it (self-fence before the lease can expire); here it feeds
`node list`.
"""

from __future__ import annotations

import asyncio
import logging
import time

from election.etcd import EtcdClient, EtcdError, LeaseExpired

from hostagent import model

log = logging.getLogger(__name__)

NODE_LEASE_TTL_S = 20


class NodeLease:
    def __init__(self, client: EtcdClient, node: str, ttl_s: int = NODE_LEASE_TTL_S) -> None:
        self._client = client
        self._node = node
        self._ttl_s = ttl_s
        self._lease_id: int | None = None

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self._renew()
            except EtcdError as exc:
                if self._lease_id is not None:
                    log.warning("could not renew node '%s''s lease: %s", self._node, exc)
            try:
                await asyncio.wait_for(stop.wait(), self._ttl_s / 4)
            except asyncio.TimeoutError:
                pass
        if self._lease_id is not None:
            try:
                await self._client.lease_revoke(self._lease_id)
            except EtcdError:
                pass

    async def _renew(self) -> None:
        if self._lease_id is not None:
            try:
                await self._client.lease_keepalive(self._lease_id)
                return
            except LeaseExpired:
                log.warning("node '%s''s lease expired; taking a new one", self._node)
                self._lease_id = None
        lease_id = await self._client.lease_grant(self._ttl_s)
        await self._client.put(model.lease_key(self._node),
                               model.dumps({"node": self._node, "since": time.time()}), lease=lease_id)
        self._lease_id = lease_id
        log.info("node '%s' holds its node lease (ttl %d s)", self._node, self._ttl_s)
