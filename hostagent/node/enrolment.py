"""What `cluster init` and `cluster join` write on this node before it comes up, and what undoing them removes."""

from __future__ import annotations

import logging
import os
import secrets
import shutil
from typing import Any

from election.replica import Replica
from membership.agent import new_gossip_key

from hostagent import pki
from hostagent.clock import SYSTEM, Clock
from hostagent.config import AgentConfig
from hostagent.node import joining
from hostagent.node.clusterfile import ClusterFile
from hostagent.node.etcdmember import EtcdMember

log = logging.getLogger(__name__)


class Enrolment:
    """The CA or the node certificate, the gossip and Serf RPC secrets, and cluster.json: all or none of them."""

    def __init__(self, cfg: AgentConfig, paths: pki.PkiPaths, local: ClusterFile, member: EtcdMember,
                 replica: Replica, clock: Clock = SYSTEM) -> None:
        self._cfg = cfg
        self._clock = clock
        self._pki = paths
        self._local = local
        self._member = member
        self._replica = replica

    def refuse_if_member(self) -> None:
        local = self._local.read()
        if local is not None:
            raise FileExistsError(f"node '{self._cfg.node_name}' already belongs to cluster '{local['name']}'")

    def found(self, name: str) -> None:
        """`cluster init`: a new CA, this node's certificate, new secrets, a one-member etcd to start."""
        pki.create_ca(self._pki, name)
        pki.issue_node_cert(self._pki, self._cfg.node_name, self._cfg.address)
        pki.write_secret(self._pki, "gossip.key", new_gossip_key())
        pki.write_secret(self._pki, "serf-rpc.key", secrets.token_urlsafe(24))
        self._local.save({"name": name, "joined": self._clock.time(), "etcd_member": True,
                          "etcd_initial_cluster": f"{self._cfg.node_name}={self._member.peer_url}",
                          "etcd_cluster_state": "new", "etcd_endpoints": [self._member.client_url], "serf_join": []})
        log.info("initializing cluster '%s' on node '%s' (CA %s)", name, self._cfg.node_name,
                 pki.ca_fingerprint(self._pki))

    async def admit(self, host: str, port: int, token: str) -> dict[str, Any]:
        """`cluster join`: the master at host:port signs this node's key and hands over the secrets; its answer."""
        csr = pki.new_node_key(self._pki)
        record = self.node_record()
        answer = await joining.request_join(host, port, token, {
            "name": self._cfg.node_name, "address": self._cfg.address, "csr": csr.decode(),
            "ports": {"api": record["api_port"], "gossip": record["gossip_port"],
                      "etcd_client": record["etcd_client_port"], "etcd_peer": record["etcd_peer_port"]}})
        pki.write_pem(self._pki.ca_cert, answer["ca_cert"].encode())
        pki.write_pem(self._pki.node_cert, answer["node_cert"].encode())
        pki.write_secret(self._pki, "gossip.key", answer["gossip_key"])
        pki.write_secret(self._pki, "serf-rpc.key", secrets.token_urlsafe(24))
        self._local.save({"name": answer["cluster"], "joined": self._clock.time(), "etcd_member": False,
                          "etcd_endpoints": answer["etcd_endpoints"], "serf_join": answer["serf_join"]})
        log.info("node '%s' joined cluster '%s' (admitted by master '%s')", self._cfg.node_name,
                 answer["cluster"], answer["master"])
        return answer

    def forget(self) -> None:
        """Once the cluster side is down: remove what init or join created, so the command can simply run again."""
        for path in (self._local.path, self._cfg.pki_dir, self._member.data_dir,
                     os.path.join(self._cfg.state_dir, "serf.snapshot")):
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.exists(path):
                os.unlink(path)
        self._replica.reset([], 0)

    def node_record(self) -> dict[str, Any]:
        """This node as the cluster config records it."""
        return {"name": self._cfg.node_name, "address": self._cfg.address, "api_port": self._cfg.api_port,
                "gossip_port": self._cfg.gossip_port, "etcd_client_port": self._cfg.etcd_client_port,
                "etcd_peer_port": self._cfg.etcd_peer_port, "candidate": True, "master_capable": True,
                "drained": False, "offline": False, "added": self._clock.time()}
