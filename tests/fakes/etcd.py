"""An etcd key space in memory, with etcd's revisions, transactions and leases on a clock the test moves.

It answers the calls of election.etcd.EtcdClient that the master and the nodes make (key-value reads and
writes, guarded transactions, leases), with the semantics tests/integration/test_fake_etcd_contract.py
checks against a real etcd: one revision per write, create/mod revisions and versions per key, a
transaction's compares judged before any of its ops, a lease's keys deleted when it expires or is revoked,
a put on a lease that is gone refused. `client(reachable)` hands out a client that raises EtcdUnavailable
while `reachable()` says the caller is cut off, as a partitioned node's would.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from election.etcd import KV, Compare, EtcdUnavailable, LeaseExpired, Op, TxnResponse, TxnResult

from fakes.clock import FakeClock


@dataclass
class _Lease:
    ttl_s: int
    expires: float
    keys: set[str] = field(default_factory=set)


class FakeEtcd:
    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.revision = 1
        self.kvs: dict[str, KV] = {}
        self._leases: dict[int, _Lease] = {}
        self._ids = itertools.count(0x1000)

    def client(self, reachable: Callable[[], bool] = lambda: True, silent_s: float = 0.0) -> FakeEtcdClient:
        """`silent_s`: how long a call of a cut-off client waits before it fails (a dropped packet waits out
        the real client's 5 s timeout; a refused connection fails at once)."""
        return FakeEtcdClient(self, reachable, silent_s)

    # ---- time -----------------------------------------------------------------
    def expire(self) -> None:
        """Drop the leases whose time ran out, and their keys (etcd does this on its own clock)."""
        now = self.clock.monotonic()
        for lease_id in [i for i, lease in self._leases.items() if lease.expires <= now]:
            self._drop_lease(lease_id)

    def _drop_lease(self, lease_id: int) -> None:
        lease = self._leases.pop(lease_id)
        live = [k for k in sorted(lease.keys) if k in self.kvs and self.kvs[k].lease == lease_id]
        if live:
            self.revision += 1
            for key in live:
                del self.kvs[key]

    def _live_lease(self, lease_id: int) -> _Lease:
        self.expire()
        lease = self._leases.get(lease_id)
        if lease is None:
            raise LeaseExpired(lease_id)
        return lease

    # ---- the key space ----------------------------------------------------------
    def _range(self, key: str, prefix: bool) -> list[KV]:
        if not prefix:
            return [self.kvs[key]] if key in self.kvs else []
        return [kv for k, kv in sorted(self.kvs.items()) if k.startswith(key)]

    def _put(self, key: str, value: bytes, lease_id: int) -> None:
        """One put inside the current revision (the caller has bumped it)."""
        old = self.kvs.get(key)
        if old is not None and old.lease and old.lease != lease_id and old.lease in self._leases:
            self._leases[old.lease].keys.discard(key)
        if lease_id:
            self._leases[lease_id].keys.add(key)
        self.kvs[key] = KV(key, value, old.create_revision if old else self.revision, self.revision,
                           old.version + 1 if old else 1, lease_id)

    def _delete(self, key: str, prefix: bool) -> int:
        gone = [kv.key for kv in self._range(key, prefix)]
        for k in gone:
            del self.kvs[k]
        return len(gone)

    def _holds(self, c: Compare) -> bool:
        kv = self.kvs.get(c.key)
        actual: int | bytes
        if c.target == "value":
            if kv is None:
                return False  # etcd: a value compare on a missing key is false
            actual = kv.value
        else:
            actual = 0 if kv is None else {"create_revision": kv.create_revision, "mod_revision": kv.mod_revision,
                                           "version": kv.version, "lease": kv.lease}[c.target]
        return {"=": actual == c.operand, "!=": actual != c.operand,
                ">": actual > c.operand, "<": actual < c.operand}[c.op]  # type: ignore[operator]

    def txn(self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op]) -> TxnResult:
        self.expire()
        ok = all(self._holds(c) for c in compares)
        ops = success if ok else failure
        for op in ops:
            if op.kind == "put" and op.lease:
                self._live_lease(op.lease)
        writes = any(op.kind != "get" for op in ops)
        if writes:
            self.revision += 1
        responses: list[TxnResponse] = []
        for op in ops:
            if op.kind == "get":
                responses.append(self._range(op.key, op.prefix))
            elif op.kind == "delete":
                responses.append(self._delete(op.key, op.prefix))
            else:
                self._put(op.key, op.value, op.lease)
                responses.append(None)
        return TxnResult(ok, self.revision, responses)

    def grant(self, ttl_s: int) -> int:
        lease_id = next(self._ids)
        self._leases[lease_id] = _Lease(ttl_s, self.clock.monotonic() + ttl_s)
        return lease_id

    def keepalive(self, lease_id: int) -> int:
        lease = self._live_lease(lease_id)
        lease.expires = self.clock.monotonic() + lease.ttl_s
        return lease.ttl_s

    def time_to_live(self, lease_id: int) -> int:
        lease = self._live_lease(lease_id)
        return max(0, int(lease.expires - self.clock.monotonic()))

    def revoke(self, lease_id: int) -> None:
        self.expire()
        if lease_id in self._leases:
            self._drop_lease(lease_id)

    def snapshot(self) -> tuple[list[KV], int]:
        """Every key and the revision: what a node's replica mirrors."""
        self.expire()
        return [kv for _, kv in sorted(self.kvs.items())], self.revision  # KVs are frozen: shared safely


class FakeEtcdClient:
    """election.etcd.EtcdClient's calls, answered by a FakeEtcd, or refused while the caller is cut off."""

    def __init__(self, etcd: FakeEtcd, reachable: Callable[[], bool], silent_s: float = 0.0) -> None:
        self._etcd = etcd
        self._reachable = reachable
        self._silent_s = silent_s

    async def _check(self) -> FakeEtcd:
        if not self._reachable():
            if self._silent_s:
                await asyncio.sleep(self._silent_s)
            raise EtcdUnavailable(["fake://etcd"], "this node is cut off from the etcd members")
        return self._etcd

    async def get(self, key: str) -> KV | None:
        result = (await self._check()).txn([], [Op.get(key)], [])
        kvs = result.responses[0]
        return kvs[0] if isinstance(kvs, list) and kvs else None

    async def last_key(self, prefix: str) -> str | None:
        kvs, _ = await self.get_prefix(prefix)
        return kvs[-1].key if kvs else None

    async def get_prefix(self, prefix: str) -> tuple[list[KV], int]:
        result = (await self._check()).txn([], [Op.get_prefix(prefix)], [])
        kvs = result.responses[0]
        return (kvs if isinstance(kvs, list) else []), result.revision

    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        return (await self._check()).txn([], [Op.put(key, value, lease)], []).revision

    async def delete(self, key: str) -> int:
        deleted = (await self._check()).txn([], [Op.delete(key)], []).responses[0]
        return int(deleted) if isinstance(deleted, int) else 0

    async def txn(self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()) -> TxnResult:
        return (await self._check()).txn(compares, success, failure)

    async def lease_grant(self, ttl_s: int) -> int:
        return (await self._check()).grant(ttl_s)

    async def lease_keepalive(self, lease_id: int) -> int:
        return (await self._check()).keepalive(lease_id)

    async def lease_time_to_live(self, lease_id: int) -> int:
        return (await self._check()).time_to_live(lease_id)

    async def lease_revoke(self, lease_id: int) -> None:
        (await self._check()).revoke(lease_id)

    async def member_list(self) -> list[Any]:
        return []  # one etcd for the whole simulated cluster: no members to tell apart

    async def status(self, endpoint: str | None = None) -> dict[str, Any]:
        etcd = (await self._check())
        return {"member_id": 1, "leader": 1, "raft_term": 1, "raft_index": etcd.revision, "db_size": 0,
                "revision": etcd.revision, "version": "fake"}

    async def close(self) -> None:
        return None
