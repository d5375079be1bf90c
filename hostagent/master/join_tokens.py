"""Join tokens: the master issues one per node to add, admits the node that presents it, and sweeps the
expired ones.

A token is stored only as its hash (hostagent.node.joining), and deleted in
the same guarded write that records the node, so only one join can use it.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from dataclasses import dataclass
from typing import Any

from election.etcd import Compare, Op

from hostagent import model, pki
from hostagent.errors import BadRequest, Conflict, NotFound
from hostagent.master.decide.checks import NAME_RE
from hostagent.master.role import MasterRole
from hostagent.master.store import Store
from hostagent.node import joining

log = logging.getLogger(__name__)


class JoinTokens:
    """Issue, accept, revoke and sweep join tokens; the sweep is a master duty."""

    def __init__(self, store: Store, pki_paths: pki.PkiPaths) -> None:
        self.store = store
        self.role: MasterRole = store.role
        self.pki = pki_paths
        self._next_sweep = 0.0  # monotonic time of the next sweep of expired join tokens

    async def issue_token(self, name: str, address: str, ttl_s: float) -> dict[str, Any]:
        if not NAME_RE.match(name):
            raise BadRequest(f"node name {name!r} is not valid: lower-case letters, digits and '-'")
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise BadRequest(f"node address {address!r} is not an IP address") from None
        nodes = await self.store.prefix(model.NODES)
        if any(n["name"] == name for n in nodes):
            raise Conflict(f"node '{name}' is already in the cluster (if its join failed half-way: "
                           f"`corral node remove {name}`, then `corral node add` again)")
        if any(n["address"] == address for n in nodes):
            raise Conflict(f"address {address} is already used by node "
                           f"'{next(n['name'] for n in nodes if n['address'] == address)}'")
        if not 1 <= ttl_s <= 7 * 86400:
            raise BadRequest(f"token lifetime {ttl_s:g} s is out of range (1 s to 7 days)")
        token, digest = joining.make_token(pki.ca_fingerprint(self.pki))
        now = self.store.clock.time()
        record = {"node": name, "address": address, "created": now, "expires": now + ttl_s,
                  "issued_by": self.role.node}
        stale = [Op.delete(kv.key) for kv in await self._token_kvs() if joining.token_state(kv.record, now) != "valid"]
        await self.store.write([Op.put(model.join_token_key(digest), model.dumps(record)), *stale])
        log.info("issued a join token for node '%s' at %s, valid %.0f s", name, address, ttl_s)
        return {"token": token, "node": name, "address": address, "expires": record["expires"]}

    async def accept_join(self, req: dict[str, Any]) -> dict[str, Any]:
        """Admit a node presenting a valid token: sign its key, record it, hand it the secrets."""
        secret = str(req.get("token", ""))
        digest = joining.token_hash(secret)
        kv = await self.role.client.get(model.join_token_key(digest))
        record = None if kv is None else model.loads(kv.value)
        name, address = str(req.get("name", "")), str(req.get("address", ""))
        joining.check_token(record, name, address, self.store.clock.time())
        assert kv is not None and record is not None
        try:
            public_key = pki.csr_public_key(str(req.get("csr", "")).encode())
        except ValueError as exc:
            raise BadRequest(f"bad certificate request: {exc}") from None
        cert = pki.sign_node_key(self.pki, public_key, name, address)
        ports = req.get("ports")
        try:
            assert isinstance(ports, dict)
            node = {"name": name, "address": address, "api_port": int(ports["api"]),
                    "gossip_port": int(ports["gossip"]), "etcd_client_port": int(ports["etcd_client"]),
                    "etcd_peer_port": int(ports["etcd_peer"]), "candidate": False, "master_capable": True,
                    "drained": False, "offline": False, "added": self.store.clock.time(),
                    "cert_serials": [pki.serial_of(cert)]}
        except (AssertionError, KeyError, TypeError, ValueError):
            raise BadRequest("a join request needs ports {api, gossip, etcd_client, etcd_peer}") from None
        token = self.role.token
        if token is None:
            raise Conflict("this node stopped being master; try again")
        # The token is deleted as it is used; the compare on its revision lets only one join use it.
        result = await self.role.lease.guarded_txn(
            token, [Op.delete(model.join_token_key(digest)),
                    Op.put(model.node_key(name), model.dumps(node))],
            extra_compares=[Compare.mod_revision(model.join_token_key(digest), "=", kv.mod_revision),
                            Compare.create_revision(model.node_key(name), "=", 0)])
        if not result.succeeded:
            raise Conflict("this join token was used or revoked at the same moment by another request; "
                           "issue a new one with `corral node add`")
        nodes = await self.store.prefix(model.NODES)
        cluster = await self.store.get(model.CLUSTER_KEY) or {}
        with open(os.path.join(self.pki.directory, "gossip.key")) as fh:
            gossip_key = fh.read().strip()
        log.info("node '%s' at %s joined the cluster", name, address)
        return {"cluster": cluster.get("name"), "node_cert": cert.decode(), "gossip_key": gossip_key,
                "etcd_endpoints": [model.etcd_client_url(n) for n in nodes if n.get("candidate")],
                "serf_join": [f"{n['address']}:{n['gossip_port']}" for n in nodes if n["name"] != name],
                "master": self.role.node}

    async def _token_kvs(self) -> list[_TokenKv]:
        """The join token records in etcd, each kv with its decoded `record`."""
        kvs, _ = await self.role.client.get_prefix(model.JOIN_TOKENS)
        return [_TokenKv(kv.key, kv.mod_revision, model.loads(kv.value)) for kv in kvs]

    async def revoke_tokens(self, name: str) -> dict[str, Any]:
        """`node token-revoke NAME`: delete every token that would admit node NAME."""
        kvs = await self._token_kvs()
        mine = [kv for kv in kvs if kv.record.get("node") == name]
        if not mine:
            others = sorted({str(kv.record.get("node")) for kv in kvs})
            raise NotFound(f"no join token for node '{name}' (tokens for: {', '.join(others) or 'none'})")
        await self.store.write([Op.delete(kv.key) for kv in mine])
        log.info("revoked %d join token(s) for node '%s'", len(mine), name)
        return {"node": name, "revoked": len(mine)}

    async def sweep_tokens(self) -> None:
        """Master duty: delete expired (and used, kept by older agents) token records every TOKEN_SWEEP_S."""
        if self.store.clock.monotonic() < self._next_sweep:
            return
        self._next_sweep = self.store.clock.monotonic() + joining.TOKEN_SWEEP_S
        now = self.store.clock.time()
        stale = [kv for kv in await self._token_kvs() if joining.token_state(kv.record, now) != "valid"]
        token = self.role.token
        if not stale or token is None or not self.role.lease_ok():
            return
        # only as read: were one re-issued meanwhile, the next sweep looks again
        result = await self.role.lease.guarded_txn(
            token, [Op.delete(kv.key) for kv in stale],
            extra_compares=[Compare.mod_revision(kv.key, "=", kv.mod_revision) for kv in stale])
        if result.succeeded:
            log.info("deleted %d expired or used join token(s) (for %s)", len(stale),
                     ", ".join(sorted({str(kv.record.get("node")) for kv in stale})))


@dataclass(frozen=True)
class _TokenKv:
    key: str
    mod_revision: int
    record: dict[str, Any]
