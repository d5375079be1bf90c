"""The node's side of `corral cluster rotate-secrets [--new-ca]`: the orders that hand it a new gossip key,
certificate or cluster CA, each taken into use in place."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from hostagent import pki
from hostagent.node.nodetrust import CrlKeeper
from hostagent.node.etcdmember import EtcdMember
from hostagent.node.executor import Order

log = logging.getLogger(__name__)


class NodeSecrets:
    def __init__(self, node: str, paths: pki.PkiPaths, member: EtcdMember, crl: CrlKeeper,
                 reload: Callable[[], None]) -> None:
        """`reload`: make new connections, both ways, use what is on disk now."""
        self._node, self._pki, self._member, self._crl, self._reload = node, paths, member, crl, reload

    def orders(self) -> dict[str, Order]:
        return {
            "secrets.gossip": self.take_gossip_key,
            "secrets.csr": self.new_csr,
            "secrets.cert": self.take_cert,
            "secrets.ca-trust": self.trust_next_ca,
            "secrets.ca-retire": self.retire_old_ca,
        }

    async def take_gossip_key(self, args: dict[str, Any]) -> dict[str, Any]:
        """`rotate-secrets`: the gossip key Serf already uses, kept on disk for answering joins and for a restart."""
        pki.write_secret(self._pki, "gossip.key", args["key"])
        return {}

    async def new_csr(self, args: dict[str, Any]) -> dict[str, Any]:
        """`rotate-secrets`: a new key, kept pending until its certificate comes (no arguments)."""
        return {"csr": pki.new_pending_key(self._pki).decode()}

    async def take_cert(self, args: dict[str, Any]) -> dict[str, Any]:
        """`rotate-secrets`: the certificate of the pending key; new connections use it at once."""
        pki.install_pending(self._pki, args["cert"].encode())
        self._reload()
        log.info("node '%s' now uses its renewed certificate", self._node)
        return {}

    async def trust_next_ca(self, args: dict[str, Any]) -> dict[str, Any]:
        """`rotate-secrets --new-ca`, step 1 on each node: trust the new CA beside the old one."""
        ca_pem: bytes = args["ca"].encode()
        ca_key: str | None = args.get("ca_key")
        if ca_key is not None:  # candidates sign joins and revocation lists when master
            pki.write_pem(self._pki.ca_next_key, ca_key.encode(), secret=True)
        pki.write_pem(self._pki.ca_next_cert, ca_pem)
        with open(self._pki.ca_cert, "rb") as fh:
            current = pki.split_pems(fh.read())
        pki.write_trust(self._pki, current + [ca_pem])
        self._reload()
        await self._member.restart("to trust the new cluster CA")
        log.info("node '%s' trusts the new cluster CA beside the old one", self._node)
        return {"trusted": len(current) + 1}

    async def retire_old_ca(self, args: dict[str, Any]) -> dict[str, Any]:
        """Last step: trust only the new CA; candidates sign with its key from now on."""
        ca_pem: bytes = args["ca"].encode()
        if os.path.exists(self._pki.ca_next_key):
            os.replace(self._pki.ca_next_key, self._pki.ca_key)
        elif os.path.exists(self._pki.ca_key):
            os.unlink(self._pki.ca_key)  # a key of the retired CA must not outlive it
        pki.write_trust(self._pki, [ca_pem])
        if os.path.exists(self._pki.ca_next_cert):
            os.unlink(self._pki.ca_next_cert)
        self._reload()
        if self._member.running:
            self._crl.sync(force=True)  # signed by the new CA
        await self._member.restart("to stop trusting the retired cluster CA")
        log.info("node '%s' trusts only the new cluster CA", self._node)
        return {"trusted": 1}
