"""`corral cluster rotate-secrets`: a new gossip key and new node certificates, no downtime.

Gossip: the new key is installed in every member's keyring first, then used,
then the old one removed, so members never stop understanding each other.
Certificates: each node makes a new key and gets it signed by the cluster CA;
the config accepts both serials while the node switches, then revokes the old
one (agents and etcd refuse it from then on); TLS contexts are reloaded in
place, so no connection is refused on the way.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from election.etcd import Op
from membership.agent import new_gossip_key
from membership.rpc import SerfError, SerfRpc

from hostagent import model, pki
from hostagent.jobs import JobContext, JobFailed
from hostagent.operations import Operations


class Rotation:
    def __init__(self, ops: Operations, pki_paths: pki.PkiPaths,
                 serf: Callable[[], Awaitable[SerfRpc]], gossip_key: Callable[[], str]) -> None:
        self.ops = ops
        self.pki = pki_paths
        self._serf = serf
        self._gossip_key = gossip_key

    async def job(self, ctx: JobContext, args: dict[str, Any]) -> dict[str, Any]:
        nodes = await self.ops._prefix(model.NODES)
        await ctx.log(f"rotating the gossip key on {len(nodes)} node(s)")
        await self._rotate_gossip(ctx, nodes)
        renewed = []
        for i, node in enumerate(nodes):
            await ctx.progress(i, len(nodes), f"renewing the certificate of node '{node['name']}'", ctx.started)
            csr = (await self.ops._order(node["name"], "secrets.csr", {}))["csr"]
            try:
                cert = pki.sign_node_key(self.pki, pki.csr_public_key(csr.encode()), node["name"], node["address"])
            except ValueError as exc:
                raise JobFailed(f"node '{node['name']}' sent a bad certificate request: {exc}") from exc
            await self._switch(node, pki.serial_of(cert), cert)
            await ctx.log(f"node '{node['name']}' now uses a new certificate (same cluster CA); "
                          "its old one is revoked")
            renewed.append(node["name"])
        return {"gossip_key": "rotated", "certificates": renewed}

    async def _switch(self, node: dict[str, Any], serial: str, cert: bytes) -> None:
        """Accept both certificates while the node switches, then only the new one.

        Stopped half-way, the record lists both: the node works with either, and
        the next rotation revokes whichever it no longer uses.
        """
        old = [s for s in node.get("cert_serials") or [] if s != serial]
        key = model.node_key(node["name"])
        await self.ops._write([Op.put(key, model.dumps({**node, "cert_serials": old + [serial]}))])
        await self.ops._order(node["name"], "secrets.cert", {"cert": cert.decode()})
        now = (await self.ops._get(key)) or node
        revoked = model.revocations({**node, "cert_serials": old}, "replaced by rotate-secrets", time.time())
        await self.ops._write([Op.put(key, model.dumps({**now, "cert_serials": [serial]}))]
                              + [Op.put(k, v) for k, v in revoked])

    async def _rotate_gossip(self, ctx: JobContext, nodes: list[dict[str, Any]]) -> None:
        old, new = self._gossip_key(), new_gossip_key()
        rpc = await self._serf()
        try:
            await rpc.install_key(new)
            await ctx.log("new gossip key installed on every member")
            await rpc.use_key(new)
            await ctx.log("every member now encrypts gossip with the new key")
            await rpc.remove_key(old)
            await ctx.log("old gossip key removed from every member")
        except SerfError as exc:
            raise JobFailed(f"gossip key rotation stopped: {exc}; every node must be up to rotate "
                            "(nothing is lost: members still share a key), run it again") from exc
        finally:
            await rpc.close()
        for node in nodes:  # the file is what joins are answered with, and what a restart reads
            await self.ops._order(node["name"], "secrets.gossip", {"key": new})
