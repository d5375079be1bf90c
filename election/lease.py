"""The master lease: who is master, and the fencing that makes a deposed master harmless.

The master key holds `{"node": name}` attached to the winner's etcd lease.
Its fencing token is (create revision of the key, lease id): a later win
always creates the key at a higher revision, so tokens order by revision.
Every master write goes through `guarded_txn`, which etcd applies only while
that exact key (same creation, same lease) still exists; once the lease
expires or is revoked, etcd deletes the key and the guard fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from election.etcd import KV, Compare, EtcdClient, EtcdError, EtcdUnavailable, LeaseExpired, Op, OutcomeUnknown, TxnResult

log = logging.getLogger(__name__)

DEFAULT_MASTER_KEY = "/corral/master"
# Outside the mirrored /corral/ prefix: it changes on every master write.
DEFAULT_MARK_KEY = "/corral-write-mark"
# How long a write whose answer was lost is read back and re-sent: an etcd
# leader election plus etcd's own request timeout (5 s + 2 election timeouts).
SETTLE_S = 15.0
SETTLE_PAUSE_S = 0.3


class NotMaster(Exception):
    """A master write was refused because the token no longer holds the master key."""

    def __init__(self, master_hint: str | None, token: FencingToken) -> None:
        self.master_hint = master_hint
        self.token = token
        where = f"node {master_hint!r} is master now" if master_hint else "no node is master right now"
        super().__init__(
            f"master token {token.to_str()} is no longer valid ({where}); "
            "send the change to the current master, or campaign again"
        )


@dataclass(frozen=True, order=True, kw_only=True)
class FencingToken:
    """Proof of mastership carried by every master order; greater means newer.

    `revision` is declared first so that the generated ordering compares it
    first; fields are keyword-only so nobody builds one with them swapped.
    """

    revision: int
    lease_id: int

    def to_str(self) -> str:
        return f"{self.revision}:{self.lease_id:x}"

    @classmethod
    def from_str(cls, text: str) -> FencingToken:
        revision, sep, lease = text.partition(":")
        try:
            if not sep:
                raise ValueError("no ':'")
            return cls(revision=int(revision, 10), lease_id=int(lease, 16))
        except ValueError:
            raise ValueError(
                f"fencing token {text!r} is not '<revision>:<lease id in hex>', e.g. '1234:694d81d2c1a4e80b'"
            ) from None


class MasterLease:
    """Campaign for, hold and give up the master key of one cluster."""

    def __init__(
        self, client: EtcdClient, key: str = DEFAULT_MASTER_KEY, ttl_s: int = 10, mark_key: str = DEFAULT_MARK_KEY
    ) -> None:
        self._client = client
        self.key = key
        self.mark_key = mark_key
        self.ttl_s = ttl_s
        self._token: FencingToken | None = None

    @property
    def token(self) -> FencingToken | None:
        """The token of our last won campaign, until we resign or find the lease gone."""
        return self._token

    async def campaign(self, node_name: str) -> FencingToken | None:
        """Become master if nobody is; returns our token, or None when another node holds the key."""
        if self._token is not None:
            held = await self._client.get(self.key)
            if held is not None and _token_of(held) == self._token:
                return self._token
            self._token = None
        lease_id = await self._client.lease_grant(self.ttl_s)
        value = json.dumps({"node": node_name}).encode()
        try:
            result = await self._client.txn(
                [Compare.create_revision(self.key, "=", 0)],
                [Op.put(self.key, value, lease=lease_id)],
            )
        except EtcdError:
            # If the put did land, revoking deletes it: better no master for a moment than an unrenewed one for a TTL.
            with contextlib.suppress(EtcdError):
                await self._client.lease_revoke(lease_id)
            raise
        if not result.succeeded:
            await self._client.lease_revoke(lease_id)
            return None
        self._token = FencingToken(revision=result.revision, lease_id=lease_id)
        return self._token

    async def current(self) -> tuple[str, FencingToken] | None:
        """The master's node name and token, or None while nobody is master."""
        held = await self._client.get(self.key)
        if held is None:
            return None
        return _node_of(held), _token_of(held)

    async def keepalive(self) -> bool:
        """Renew our lease; False when we hold none or it is gone (then we are not master).

        EtcdUnavailable propagates: the caller measures how long it has gone
        without a renewal and stops acting as master before the TTL runs out.
        """
        if self._token is None:
            return False
        try:
            await self._client.lease_keepalive(self._token.lease_id)
        except LeaseExpired:
            log.info("master lease %x expired; no longer master", self._token.lease_id)
            self._token = None
            return False
        return True

    async def resign(self) -> None:
        """Give up mastership now instead of after the TTL; revoking the lease deletes the key."""
        if self._token is None:
            return
        token, self._token = self._token, None
        await self._client.lease_revoke(token.lease_id)

    async def guarded_txn(
        self,
        token: FencingToken,
        success_ops: Sequence[Op],
        extra_compares: Sequence[Compare] = (),
        failure_ops: Sequence[Op] = (),
    ) -> TxnResult:
        """Apply `success_ops` only while `token` is the master's and `extra_compares` hold.

        Raises NotMaster when the token is stale. When only `extra_compares`
        failed, returns succeeded=False with the responses of `failure_ops`.
        When etcd's answer is lost (say its leader died mid-request), reads
        back whether the write applied and re-sends it only if it surely did
        not; the responses of a write settled that way are not known ([]).
        """
        nonce = secrets.token_hex(8).encode()
        success = [*success_ops, Op.put(self.mark_key, nonce)]
        try:
            result, _ = await self._attempt(token, success, extra_compares, failure_ops)
        except OutcomeUnknown as lost:
            log.warning("the answer to a master write was lost (%s); reading back whether it was applied", lost.reason)
            return await self._settle(token, nonce, success, extra_compares, failure_ops, lost)
        return result

    async def _attempt(
        self, token: FencingToken, success: Sequence[Op], compares: Sequence[Compare], failure_ops: Sequence[Op]
    ) -> tuple[TxnResult, KV | None]:
        """One guarded txn; on failure also returns the write mark as it was."""
        guard = [
            Compare.create_revision(self.key, "=", token.revision),
            Compare.lease(self.key, "=", token.lease_id),
        ]
        result = await self._client.txn(
            [*guard, *compares],
            success,
            [Op.get(self.key), Op.get(self.mark_key), *failure_ops],
        )
        if result.succeeded:
            return result, None
        master_kvs, mark_kvs, *responses = result.responses
        held = master_kvs[0] if isinstance(master_kvs, list) and master_kvs else None
        if held is None or _token_of(held) != token:
            raise NotMaster(_node_of(held) if held is not None else None, token)
        mark = mark_kvs[0] if isinstance(mark_kvs, list) and mark_kvs else None
        return TxnResult(succeeded=False, revision=result.revision, responses=responses), mark

    async def _settle(
        self,
        token: FencingToken,
        nonce: bytes,
        success: Sequence[Op],
        extra_compares: Sequence[Compare],
        failure_ops: Sequence[Op],
        lost: EtcdUnavailable,
    ) -> TxnResult:
        """Learn whether a write whose answer was lost applied; re-send it when it did not.

        Every guarded write also stores its nonce under the mark key, so the
        mark tells whether it applied. A re-send is guarded by the mark not
        having moved since it was read, so an attempt that lands late makes
        the re-send fail instead of applying twice.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SETTLE_S
        while loop.time() < deadline:
            await asyncio.sleep(SETTLE_PAUSE_S)
            try:
                mark = await self._client.get(self.mark_key)
                if mark is not None and mark.value == nonce:
                    return TxnResult(succeeded=True, revision=mark.mod_revision, responses=[])
                seen = mark.mod_revision if mark is not None else 0
                unmoved = Compare.mod_revision(self.mark_key, "=", seen)
                result, now = await self._attempt(token, success, [*extra_compares, unmoved], failure_ops)
            except EtcdUnavailable as e:
                lost = e
                continue
            if result.succeeded:
                return result
            if now is not None and now.value == nonce:
                return TxnResult(succeeded=True, revision=now.mod_revision, responses=[])
            if (now.mod_revision if now is not None else 0) == seen:
                return result  # the caller's own compares failed
        raise lost


def _token_of(held: KV) -> FencingToken:
    return FencingToken(revision=held.create_revision, lease_id=held.lease)


def _node_of(held: KV) -> str:
    """The node named in the master key; a value we cannot read is shown as-is, not fatal."""
    try:
        node = json.loads(held.value)["node"]
    except (ValueError, KeyError, TypeError):
        return held.value.decode(errors="replace")
    return str(node)
