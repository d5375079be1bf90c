"""Which node certificates the agent still accepts: members only, with the serial recorded for them.

The CA signs every node's certificate, but a signature alone is forever (825
days): a removed node, or the key a node replaced at `rotate-secrets`, would
still open every agent. So a node-to-node call is accepted only when the
config lists the calling node and its record carries the certificate's serial.
The local replica answers first; a refusal is checked again against etcd
itself, because a node that just joined (or just got a new certificate) may
call before this node's replica has caught up.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

from hostagent import model, pki

log = logging.getLogger(__name__)

# (node key) -> the node record as etcd has it now, None if absent; raises if etcd cannot answer
FreshRead = Callable[[str], Awaitable[dict[str, Any] | None]]


def refusal(record: dict[str, Any] | None, name: str, serial: str | None) -> str | None:
    """Why a certificate for `name` with `serial` must be refused, or None to accept it."""
    if record is None:
        return (f"node '{name}' is not a member of this cluster (removed, or never joined): "
                "its certificate is no longer accepted")
    if "cert_serials" not in record:
        return None  # recorded before serials were: a member, and the master records its serial from its report
    if serial is None or serial not in (record.get("cert_serials") or []):
        return (f"this certificate of node '{name}' (serial {serial or 'unknown'}) is not the one the cluster "
                "recorded for it (replaced by rotate-secrets, or issued outside a join)")
    return None


class NodeTrust:
    def __init__(self, replica: Any, fresh: Callable[[], FreshRead | None]) -> None:
        self._replica = replica
        self._fresh = fresh

    async def check(self, name: str, serial: str | None) -> str | None:
        """None if the caller is a member with this certificate; otherwise why not."""
        reason = refusal(self._replica.get_json(model.node_key(name)), name, serial)
        if reason is None:
            return None
        read = self._fresh()
        if read is not None:
            try:
                reason = refusal(await read(model.node_key(name)), name, serial)
            except Exception as exc:  # noqa: BLE001 - etcd unreachable: the replica's answer stands
                log.info("could not confirm node '%s''s certificate with etcd (%s); going by the replica",
                         name, exc)
        if reason is not None:
            log.warning("refused a call with a node certificate: %s", reason)
        return reason


class CrlKeeper:
    """Keeps this etcd member's revocation list equal to the revoked serials in the config.

    etcd knows nothing of Corral's members, so a removed node's certificate is
    refused there by revocation. Only etcd members (candidates) keep one: they
    hold the CA key that signs it.
    """

    def __init__(self, replica: Any, paths: pki.PkiPaths) -> None:
        self._replica = replica
        self._paths = paths
        self._written: frozenset[str] | None = None

    def revoked(self) -> frozenset[str]:
        return frozenset(str(v.get("serial")) for _, v in self._replica.prefix_json(model.REVOKED))

    def sync(self, force: bool = False) -> bool:
        """Rewrite the list if the revoked set changed (or none was written yet); True if it did."""
        serials = self.revoked()
        if serials == self._written and os.path.exists(self._paths.crl) and not force:
            return False
        pki.write_crl(self._paths, sorted(serials))
        if self._written is not None:
            log.info("etcd now refuses %d revoked node certificate(s)", len(serials))
        self._written = serials
        return True
