"""This node's etcd member: run on master candidates, added and removed as the candidate pool changes."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from typing import Any

from election.etcd import EtcdClient, EtcdError
from election.member import EtcdTls, etcd_argv, wait_healthy
from election.replica import Replica

from hostagent import model, pki
from hostagent.clock import SYSTEM, Clock
from hostagent.node.nodetrust import CrlKeeper
from hostagent.config import AgentConfig
from hostagent.node.clusterfile import ClusterFile
from hostagent.node.executor import OrderError
from hostagent.node.supervisor import ChildSupervisor

log = logging.getLogger(__name__)


class EtcdMember:
    """The `etcd` child (start, stop, restart for a new CA), this node's etcd endpoints, its revocation list."""

    def __init__(self, cfg: AgentConfig, paths: pki.PkiPaths, crl: CrlKeeper, local: ClusterFile,
                 clock: Clock = SYSTEM) -> None:
        self._cfg = cfg
        self._clock = clock
        self._pki = paths
        self._crl = crl
        self._local = local
        self._child: ChildSupervisor | None = None
        self.data_dir = os.path.join(cfg.state_dir, "etcd")

    @property
    def client_url(self) -> str:
        return f"https://{self._cfg.address}:{self._cfg.etcd_client_port}"

    @property
    def peer_url(self) -> str:
        return f"https://{self._cfg.address}:{self._cfg.etcd_peer_port}"

    @property
    def running(self) -> bool:
        return self._child is not None

    @property
    def pid(self) -> int | None:
        return self._child.pid if self._child is not None else None

    def endpoints(self, local: dict[str, Any]) -> list[str]:
        """Where this node's etcd client connects: its own member first, when it has one."""
        endpoints = list(local.get("etcd_endpoints", []))
        if local.get("etcd_member"):
            endpoints = [self.client_url] + [e for e in endpoints if e != self.client_url]
        return endpoints or [self.client_url]

    def start(self) -> None:
        cfg = self._cfg
        tls = EtcdTls(ca=self._pki.ca_cert, cert=self._pki.node_cert, key=self._pki.node_key, crl=self._pki.crl)

        def command() -> list[str]:
            local = self._local.read() or {}
            self._crl.sync()  # etcd refuses to start without the file, and must start refusing revoked nodes
            return etcd_argv(cfg.node_name, self.data_dir, self.client_url, self.peer_url,
                             local["etcd_initial_cluster"], local["etcd_cluster_state"], tls, binary=cfg.etcd_binary,
                             heartbeat_ms=cfg.etcd_heartbeat_ms, election_timeout_ms=cfg.etcd_election_timeout_ms)

        self._child = ChildSupervisor("etcd", command, os.path.join(cfg.log_dir, "etcd.log"), clock=self._clock)
        self._child.start()

    async def stop(self) -> None:
        if self._child is not None:
            await self._child.stop()
        self._child = None

    async def restart(self, why: str) -> None:
        """etcd reads its CA file only at start (measured): restart this member, and return once it
        serves a linearizable read again, so the master restarts members one at a time."""
        if self._child is None:
            return
        log.info("restarting this node's etcd member %s", why)
        await self.stop()
        self.start()
        client = EtcdClient([self.client_url], ssl=pki.client_context(self._pki),
                            connect_timeout_s=self._cfg.etcd_connect_timeout_s)
        try:
            await wait_healthy(client, timeout_s=60)
        finally:
            await client.close()

    async def join(self, initial_cluster: str, ca_key: str, etcd: EtcdClient | None) -> bool:
        """The master's `etcd.join` order: become a member; False if this node already is one (a re-sent order)."""
        local = self._local.read() or {}
        if local.get("etcd_member") and self._child is not None:
            return False
        pki.write_pem(self._pki.ca_key, ca_key.encode(), secret=True)  # candidates sign joins when master
        if os.path.isdir(self.data_dir):
            shutil.rmtree(self.data_dir)  # an old member's data would make etcd refuse to join as new
        local.update(etcd_member=True, etcd_initial_cluster=initial_cluster, etcd_cluster_state="existing")
        self._local.save(local)
        self.start()
        assert etcd is not None
        await self._wait_follows(timeout_s=60)
        etcd.set_endpoints(self.endpoints(local))
        log.info("node '%s' is now an etcd member and master candidate", self._cfg.node_name)
        return True

    async def _wait_follows(self, timeout_s: float) -> None:
        """Until this node's new member knows the leader. (A learner serves no reads, so
        this asks for its status only; the master promotes it once it is in sync.)"""
        client = EtcdClient([self.client_url], ssl=pki.client_context(self._pki),
                            connect_timeout_s=self._cfg.etcd_connect_timeout_s)
        deadline = self._clock.monotonic() + timeout_s
        reason = "no answer yet"
        try:
            while self._clock.monotonic() < deadline:
                try:
                    if (await client.status()).get("leader"):
                        return
                    reason = "the member has no leader yet"
                except EtcdError as exc:
                    reason = str(exc)
                await asyncio.sleep(0.2)
        finally:
            await client.close()
        raise OrderError(f"the new etcd member on node '{self._cfg.node_name}' did not reach the cluster "
                         f"within {timeout_s:.0f} s: {reason} (see {self._cfg.log_dir}/etcd.log)")

    async def leave(self, etcd: EtcdClient | None) -> None:
        """The master's `etcd.leave` order, once this node's master role has stopped: a regular node again."""
        local = self._local.read() or {}
        await self.stop()
        if os.path.isdir(self.data_dir):
            shutil.rmtree(self.data_dir)
        if os.path.exists(self._pki.ca_key):
            os.unlink(self._pki.ca_key)
        local.update(etcd_member=False)
        local.pop("etcd_initial_cluster", None)
        self._local.save(local)
        if etcd is not None:
            etcd.set_endpoints(self.endpoints(local))
        log.info("node '%s' left the etcd members; it is now a regular node", self._cfg.node_name)

    async def health(self, etcd: EtcdClient | None) -> dict[str, Any]:
        """This node's own etcd member, as `node list` shows it (empty for regular nodes)."""
        if self._child is None or etcd is None:
            return {}
        try:
            status = await asyncio.wait_for(etcd.status(self.client_url), 3)
        except (EtcdError, TimeoutError) as exc:
            return {"member": True, "healthy": False, "reason": f"member unreachable ({exc})"}
        if not status.get("leader"):
            return {"member": True, "healthy": False, "reason": "member has no leader"}
        return {"member": True, "healthy": True, "reason": ""}

    def follow(self, etcd: EtcdClient | None, replica: Replica) -> None:
        """Keep the etcd endpoints (and cluster.json) in step with the candidates in the config."""
        local = self._local.read()
        if local is None or etcd is None:
            return
        urls = sorted(model.etcd_client_url(n) for _, n in replica.prefix_json(model.NODES) if n.get("candidate"))
        if urls and urls != sorted(local.get("etcd_endpoints", [])):
            local["etcd_endpoints"] = urls
            self._local.save(local)
            etcd.set_endpoints(self.endpoints(local))
            log.info("etcd endpoints are now %s", ", ".join(urls))

    async def revocations(self, stop: asyncio.Event) -> None:
        """Within about a second of a node's removal, this node's etcd member refuses its certificate."""
        while not stop.is_set():
            if self._child is not None and os.path.exists(self._pki.ca_key):
                try:
                    self._crl.sync()
                except (OSError, ValueError) as exc:
                    log.warning("could not rewrite etcd's revocation list: %s", exc)
            try:
                await asyncio.wait_for(stop.wait(), 1.0)
            except TimeoutError:
                pass
