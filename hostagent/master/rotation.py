"""`corral cluster rotate-secrets [--new-ca]`: a new gossip key, new node certificates and, if
asked, a new cluster CA, with no downtime.

Gossip: the new key is installed in every member's keyring first, then used,
then the old one removed, so members never stop understanding each other.
Certificates: each node makes a new key and gets it signed by the cluster CA;
the config accepts both serials while the node switches, then revokes the old
one (agents and etcd refuse it from then on); TLS contexts are reloaded in
place, so no connection is refused on the way.
A new CA: every node trusts old and new first (etcd members restarted one at
a time, since etcd reads CAs only at start), then gets its certificate from the
new CA, then trusts the new CA only and the old CA key is deleted.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from election.etcd import Op
from membership.agent import new_gossip_key
from membership.rpc import SerfError, SerfRpc

from hostagent import model, pki
from hostagent.master.jobs import JobContext, JobFailed
from hostagent.master.store import Store


class Rotation:
    def __init__(self, store: Store, pki_paths: pki.PkiPaths,
                 serf: Callable[[], Awaitable[SerfRpc]], gossip_key: Callable[[], str]) -> None:
        self.store = store
        self.pki = pki_paths
        self._serf = serf
        self._gossip_key = gossip_key

    async def job(self, ctx: JobContext, args: dict[str, Any]) -> dict[str, Any]:
        nodes = await self.store.prefix(model.NODES)
        new_ca = bool(args.get("new_ca"))
        if new_ca:
            await self._trust_next_ca(ctx, nodes)
        await ctx.log(f"rotating the gossip key on {len(nodes)} node(s)")
        await self._rotate_gossip(ctx, nodes)
        renewed = []
        for i, node in enumerate(nodes):
            await ctx.progress(i, len(nodes), f"renewing the certificate of node '{node['name']}'", ctx.started)
            csr = (await self.store.order(node["name"], "secrets.csr", {}))["csr"]
            try:
                cert = pki.sign_node_key(self.pki, pki.csr_public_key(csr.encode()), node["name"], node["address"],
                                         next_ca=new_ca)
            except ValueError as exc:
                raise JobFailed(f"node '{node['name']}' sent a bad certificate request: {exc}") from exc
            await self._switch(node, pki.serial_of(cert), cert)
            await ctx.log(f"node '{node['name']}' now uses a new certificate"
                          + (" from the new CA" if new_ca else " (same cluster CA)") + "; its old one is revoked")
            renewed.append(node["name"])
        result: dict[str, Any] = {"gossip_key": "rotated", "certificates": renewed}
        if new_ca:
            result["ca"] = await self._retire_old_ca(ctx, nodes)
        return result

    async def _trust_next_ca(self, ctx: JobContext, nodes: list[dict[str, Any]]) -> None:
        """Every node trusts the new CA beside the old one before any certificate from it is used.

        One node at a time: each restarts its etcd member (etcd reads CAs only at
        start), and the order returns once that member serves reads again, so the
        etcd cluster never loses more than one member.
        """
        cluster = await self.store.get(model.CLUSTER_KEY) or {}
        key_pem, cert_pem = pki.create_next_ca(self.pki, str(cluster.get("name", "corral")))
        await ctx.log(f"new cluster CA {pki.fingerprint_of(cert_pem)}; every node trusts both CAs first")
        for i, node in enumerate(nodes):
            await ctx.progress(i, len(nodes), f"node '{node['name']}' trusts the new CA", ctx.started)
            args = {"ca": cert_pem.decode(), **({"ca_key": key_pem.decode()} if node.get("candidate") else {})}
            await self.store.order(node["name"], "secrets.ca-trust", args, timeout_s=120)

    async def _retire_old_ca(self, ctx: JobContext, nodes: list[dict[str, Any]]) -> str:
        with open(self.pki.ca_next_cert, "rb") as fh:
            cert_pem = fh.read()
        for i, node in enumerate(nodes):
            await ctx.progress(i, len(nodes), f"node '{node['name']}' stops trusting the old CA", ctx.started)
            await self.store.order(node["name"], "secrets.ca-retire", {"ca": cert_pem.decode()}, timeout_s=120)
        fingerprint = pki.fingerprint_of(cert_pem)
        await ctx.log(f"the old cluster CA is retired everywhere; the cluster CA is now {fingerprint} "
                      "(join tokens issued before pin the old one: issue new ones)")
        return fingerprint

    async def _switch(self, node: dict[str, Any], serial: str, cert: bytes) -> None:
        """Accept both certificates while the node switches, then only the new one.

        Stopped half-way, the record lists both: the node works with either, and
        the next rotation revokes whichever it no longer uses.
        """
        old = [s for s in node.get("cert_serials") or [] if s != serial]
        key = model.node_key(node["name"])
        await self.store.write([Op.put(key, model.dumps({**node, "cert_serials": old + [serial]}))])
        await self.store.order(node["name"], "secrets.cert", {"cert": cert.decode()})
        now = (await self.store.get(key)) or node
        revoked = model.revocations({**node, "cert_serials": old}, "replaced by rotate-secrets", self.store.clock.time())
        await self.store.write([Op.put(key, model.dumps({**now, "cert_serials": [serial]}))]
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
            await self.store.order(node["name"], "secrets.gossip", {"key": new})
