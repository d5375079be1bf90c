"""The agent: wires the seams together and owns their startup and cleanup.

Startup order matters for operators: the local unix socket comes up first (so
`corral` can always say something), then, on a node in a cluster, Serf, etcd
(on master candidates), the config mirror, the master role, the node lease,
the TLS API, the loops and, on candidates, the election. Cleanup runs in
reverse.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

from election.etcd import EtcdClient, EtcdError
from election.lease import FencingToken
from election.member import wait_healthy
from election.mirror import Mirror
from election.replica import Replica
from kvm.process import QemuManager
from storage.filedisk import FileTemplate
from storage.lvm import PlainTemplate
from storage.osdef import OsCatalog, discover

from hostagent import model, pki
from hostagent import callers
from hostagent.callers import Caller
from hostagent.clock import SYSTEM, Clock
from hostagent.node.nodetrust import CrlKeeper, NodeTrust
from hostagent.api.relay import RelayLimit
from hostagent.config import AgentConfig
from hostagent.master import vncpass
from hostagent.master.candidacy import Candidacy
from hostagent.master.duties.autofailover import AutoFailover
from hostagent.master.node_ops import NodeOperations
from hostagent.master.operations import Operations
from hostagent.master.role import MasterRole
from hostagent.node import joining
from hostagent.node.boothealth import BootWatcher
from hostagent.node.clusterfile import ClusterFile
from hostagent.node.adoption import NodeAdoption
from hostagent.node.diskcopy import NodeDiskCopy
from hostagent.node.snapshots import NodeSnapshots
from hostagent.node.backups import NodeBackups
from hostagent.node.enrolment import Enrolment
from hostagent.node.etcdmember import EtcdMember
from hostagent.node.disks import NodeDisks
from hostagent.node.drbdnode import NodeDrbd, drbd_node
from hostagent.node.executor import NodeExecutor, Order, OrderError
from hostagent.node.fencing import TokenGuard
from hostagent.node.gossip import Gossip
from hostagent.node.isolation import Isolation
from hostagent.node.looplag import LoopLag
from hostagent.node.media import NodeMedia
from hostagent.node.nodelease import NodeLease
from hostagent.node.notify import Notifier
from hostagent.node.replication import NodeReplication
from hostagent.node.reportloop import ReportLoop
from hostagent.node.secrets import NodeSecrets
from hostagent.node.selffence import SelfFence
from hostagent.node.supervisor import Loops
from hostagent.orders import NodeClient

log = logging.getLogger(__name__)

JOIN_ETCD_PATIENCE_S = 60.0  # after admission: how long a joining node waits for a busy etcd


class NotInitialized(Exception):
    """This node is not part of a cluster yet."""


class AlreadyRunning(Exception):
    """Another agent owns this node's state directory."""


def _lock_node(state_dir: str) -> int:
    """One agent per node: hold a lock on the state dir for the agent's lifetime.

    The master role relies on it: a lease held under this node's name by a
    previous agent can be revoked at once, because that agent is certainly dead.
    """
    path = os.path.join(state_dir, "agent.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise AlreadyRunning(f"another corral-agent (pid {holder}) is running with state dir {state_dir}") from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


class Agent:
    """One node's agent: builds the node's seams once, then brings the cluster side up and down."""

    def __init__(self, cfg: AgentConfig, notifier: Notifier | None = None, guest_nice: int | None = None,
                 clock: Clock = SYSTEM) -> None:
        self.cfg = cfg
        self.clock = clock  # the one clock of this node's loops, handed to each; the API reads it too
        self.notifier = notifier or Notifier()
        self.pki = pki.PkiPaths(cfg.pki_dir)
        for path in (cfg.state_dir, cfg.run_dir, cfg.log_dir, cfg.file_storage):
            os.makedirs(path, mode=0o700, exist_ok=True)
        for path in (cfg.state_dir, cfg.log_dir):
            os.chmod(path, 0o700)  # job arguments and OS logs may hold secrets
        self._lock_fd = _lock_node(cfg.state_dir)
        self.replica = Replica(os.path.join(cfg.state_dir, "config.db"))
        self.qemu = QemuManager(cfg.run_dir, log_dir=os.path.join(cfg.log_dir, "console"),
                                qemu_binary=cfg.qemu_binary, guest_nice=guest_nice, kernel_dirs=cfg.kernel_dirs,
                                qmp_timeout_s=cfg.qmp_timeout_s, launch_timeout_s=cfg.qemu_start_timeout_s)
        self.boot = BootWatcher(os.path.join(cfg.log_dir, "console"), os.path.join(cfg.run_dir, "boot-watch.json"),
                                lambda name: self.replica.get_json(model.instance_key(name)), clock.time())
        self.files = FileTemplate(cfg.file_storage)
        self.lvm = PlainTemplate(cfg.volume_group, lvm_args=cfg.lvm_args) if cfg.volume_group else None
        self._catalog: OsCatalog = discover(cfg.os_search_paths, cfg.image_paths)
        self.disks = NodeDisks(cfg.node_name, self.files, self.lvm, drbd_node(cfg, self.lvm, lambda: self.replica.get_json(model.CLUSTER_KEY)),
                               self._address_of)
        self.replication = NodeReplication(cfg.node_name, cfg.address, self.qemu, self.disks, self.pki,
                                           cfg.run_dir, clock)
        self.media = NodeMedia(cfg.node_name, cfg.address, self.qemu, cfg.iso_dirs,
                               lambda uuid: vncpass.password(self.replica, uuid))
        self.relays = RelayLimit()  # consoles and VNC displays this agent bridges (hostagent.api.relay)
        self.drbd = NodeDrbd(cfg.node_name, self.disks, lambda name: self.replica.get_json(model.instance_key(name)),
                             cfg.run_dir, lambda name: self.qemu.stop(name, timeout_s=0, force=True), clock)
        self.executor = NodeExecutor(cfg.node_name, self.qemu, self.disks, self.catalog,
                                     os.path.join(cfg.log_dir, "os"), cfg.os_install_timeout_s,
                                     self.replication.tls_dir)
        self.diskcopy = NodeDiskCopy(cfg.node_name, self.qemu, self.disks, self.pki, cfg.run_dir)
        self.adoption = NodeAdoption(cfg.node_name, self.qemu, self.disks)
        self.snapshots = NodeSnapshots(cfg.node_name, self.qemu, self.disks, clock)
        self.backups = NodeBackups(cfg, self.qemu, self.disks, self.replication.tls_dir, self.catalog, clock)
        self.replication.tell_master = self.drbd.tell_master = self.tell_master
        self.executor.dress = self.media.dress
        self.executor.started = self.replication.started
        self.tokens = TokenGuard(os.path.join(cfg.state_dir, "fencing-token"))
        self.crl = CrlKeeper(self.replica, self.pki)
        self.cluster_file = ClusterFile(cfg.state_dir)
        self.member = EtcdMember(cfg, self.pki, self.crl, self.cluster_file, clock)
        self.looplag = LoopLag()
        self.trust = NodeTrust(self.replica, lambda: self._read_node_now if self.etcd is not None else None)
        self.loops = Loops()  # the cluster side's tasks, new at each activation
        self.etcd: EtcdClient | None = None
        self.mirror: Mirror | None = None
        self.role: MasterRole | None = None
        self.ops: Operations | None = None
        self.node_ops: NodeOperations | None = None
        self.nodes: NodeClient | None = None
        self.lease: NodeLease | None = None
        self.fence: SelfFence | None = None
        self.autofailover: AutoFailover | None = None
        self.candidacy: Candidacy | None = None
        self._init_lock = asyncio.Lock()
        self.isolation = Isolation(cfg.node_name, clock)  # the isolate drill
        self.gossip = Gossip(cfg, self.pki, self.cluster_file, clock)
        self.reports = ReportLoop(cfg, self.replica, self.qemu, self.files, self.lvm, self.catalog,
                                  self.refresh_catalog, self.replication, self.boot, self.looplag, self.pki,
                                  self.tokens, self.isolation, self.member, self._role, self.gossip.connect, clock)
        self.reports.drbd = self.drbd
        self.replication.joined = self.reports.soon
        self.reports.backups = self.backups.dirs
        self.secrets = NodeSecrets(cfg.node_name, self.pki, self.member, self.crl, self._reload_tls)
        self.orders = self._order_table()
        self.enrolment = Enrolment(cfg, self.pki, self.cluster_file, self.member, self.replica, clock)
        self.node_site: Callable[[], Awaitable[None]] | None = None
        self.server_ssl: ssl.SSLContext | None = None  # set by the node site; reloaded on rotation
        self.client_ssl: ssl.SSLContext | None = None

    # ---- local state --------------------------------------------------------
    def _address_of(self, node: str) -> str:
        """A node's address from this node's copy of the config (its own from agent.toml)."""
        if node == self.cfg.node_name:
            return self.cfg.address
        record = self.replica.get_json(model.node_key(node))
        return str(record.get("address", "")) if isinstance(record, dict) else ""

    def catalog(self) -> OsCatalog:
        return self._catalog

    def refresh_catalog(self) -> OsCatalog:
        self._catalog = discover(self.cfg.os_search_paths, self.cfg.image_paths)
        return self._catalog

    # ---- lifecycle: activate() starts the cluster side, _deactivate() stops it in reverse ----------
    async def activate(self) -> None:
        """Bring up the cluster side on a node that belongs to a cluster."""
        cfg = self.cfg
        local = self.cluster_file.read()
        if local is None:
            raise NotInitialized("this node is not part of a cluster")
        self.loops = Loops()
        self.gossip.start()
        if local.get("etcd_member"):
            self.member.start()
        ssl_client = self.client_ssl = pki.client_context(self.pki)
        self.etcd = EtcdClient(self.member.endpoints(local), ssl=ssl_client,
                               connect_timeout_s=self.cfg.etcd_connect_timeout_s)
        if local.get("etcd_member"):
            try:
                await wait_healthy(self.etcd, timeout_s=30)
            except EtcdError as exc:  # keep serving reads from the replica; the loops retry
                log.warning("etcd has no quorum yet (%s); serving reads from this node's replica meanwhile", exc)
        self.mirror = Mirror(self.etcd, self.replica, prefix=model.PREFIX, clock=self.clock.time)  # the API ages it
        self.nodes = NodeClient(ssl_client)
        self.candidacy = Candidacy(cfg.node_name, self.etcd, self.nodes, self.mirror, self.replica, self.pki,
                                   cfg.master_lease_ttl_s, self.notifier.status, self.gossip.connect,
                                   lambda: pki.read_secret(self.pki, "gossip.key"), self.clock)
        self.role, self.ops = self.candidacy.role, self.candidacy.ops
        self.node_ops, self.autofailover = self.candidacy.node_ops, self.candidacy.autofailover
        self.lease = NodeLease(self.etcd, cfg.node_name, cfg.node_lease_ttl_s, self.clock)
        self.fence = SelfFence(cfg.node_name, self.lease, self.qemu, self.replica, cfg.run_dir, cfg.log_dir,
                               cfg.watchdog or None, self.clock, demotes=self.drbd.demote_commands)
        self.executor.start_guard = self.fence.start_refusal
        if self.node_site is not None:
            await self.node_site()  # orders, even the master's to itself, arrive here
        stop = self.loops.stop
        self.loops.spawn(self.mirror.run(stop), name="mirror")
        self.loops.spawn(self.gossip.follow(stop), name="gossip", cancel_at_end=True)  # it only logs
        self.loops.spawn(self.lease.run(stop), name="node-lease")
        self.loops.spawn(self.fence.run(stop), name="self-fence")
        await self.drbd.probe()
        self.reports.start(self.etcd, self.fence, self.loops)
        self.loops.spawn(self.member.revocations(stop), name="revocations")
        self.loops.spawn(self.looplag.run(stop), name="loop-lag")
        if local.get("etcd_member"):
            self.candidacy.start(self.loops)

    async def _deactivate(self) -> None:
        """Stop the cluster side, in the reverse order of activate(); the local API stays up."""
        await self.loops.end()  # every loop, the election and pending reports end together
        if self.candidacy is not None:
            await self.candidacy.stop()
        self.reports.stop()
        self.executor.start_guard = None
        self.fence = self.lease = self.candidacy = self.role = self.ops = self.node_ops = self.autofailover = None
        if self.nodes is not None:
            await self.nodes.close()
        if self.etcd is not None:
            await self.etcd.close()
        self.etcd = self.mirror = self.nodes = None
        await self.member.stop()
        await self.gossip.stop()

    async def shutdown(self) -> None:
        await self._deactivate()
        self.replica.close()

    def child_pids(self) -> list[int]:
        return [pid for pid in (self.gossip.pid, self.member.pid) if pid is not None]

    def _role(self) -> str:
        if self.role is not None and self.role.is_master:
            return "master"
        return "candidate" if self.cluster_file.is_candidate else "regular"

    # ---- entering a cluster ------------------------------------------------------------------
    async def init_cluster(self, name: str, hvparams: dict[str, Any], pool_size: int = 3,
                           settings: dict[str, float] | None = None, caller: Caller | None = None) -> int:
        """`corral cluster init`: secrets, a one-member etcd, the master lease, the cluster record.

        All or nothing: if any step fails, what was created is removed again so
        that the operator can simply run the command again.
        """
        async with self._init_lock:
            self.enrolment.refuse_if_member()
            try:
                self.enrolment.found(name)
                await self.activate()
                assert self.role is not None and self.ops is not None
                await asyncio.wait_for(self.role.became_master.wait(), timeout=30)
                await self.reports.now()
                record = {**self.enrolment.node_record(), "cert_serials": [pki.own_serial(self.pki)]}
                with callers.acting(caller):  # only here: the tasks activate() started must not inherit it
                    return await self.ops.submit_cluster_init(name, record, hvparams, pool_size, settings or {})
            except BaseException:
                await self._undo_local("cluster init")
                raise

    async def join_cluster(self, address: str, token: str) -> dict[str, Any]:
        """`corral cluster join ADDR --token T`: get a certificate and the secrets, then come up."""
        async with self._init_lock:
            self.enrolment.refuse_if_member()
            host, port = joining.split_address(address, self.cfg.api_port)
            try:
                answer = await self.enrolment.admit(host, port, token)
                await self.activate()
                revision = await self._cluster_revision(JOIN_ETCD_PATIENCE_S)
                assert self.mirror is not None
                await self.mirror.wait_for_revision(revision, timeout_s=15)
                await self.reports.now()
                return {"cluster": answer["cluster"], "node": self.cfg.node_name, "master": answer["master"]}
            except BaseException:
                await self._undo_local("cluster join")
                raise

    async def _cluster_revision(self, patience_s: float) -> int:
        """The cluster's etcd revision, asked again while etcd is slow to answer: the master has admitted this
        node (its join token is spent), so a busy moment must not undo the join."""
        assert self.etcd is not None
        deadline = self.clock.monotonic() + patience_s
        while True:
            try:
                return int((await self.etcd.status())["revision"])
            except EtcdError as exc:
                if self.clock.monotonic() >= deadline:
                    raise
                log.warning("joining: etcd does not answer yet (%s); asking again", exc)
                await asyncio.sleep(2)

    async def _undo_local(self, what: str) -> None:
        log.error("%s failed; removing what it created on node '%s'", what, self.cfg.node_name)
        await self._deactivate()
        self.enrolment.forget()

    async def _read_node_now(self, key: str) -> dict[str, Any] | None:
        """A node record as etcd has it this moment (the replica may lag a join or a new certificate)."""
        assert self.etcd is not None
        async with asyncio.timeout(3):
            kv = await self.etcd.get(key)
        return None if kv is None else model.loads(kv.value)

    # ---- orders from the master --------------------------------------------------
    def _order_table(self) -> dict[str, Order]:
        """Every order this node carries out, by the name the master sends it under: one table, so a grep for
        an order's name lands on the line naming its handler. The node modules list theirs; these below are
        about this node's own roles."""
        return {
            **self.executor.orders(), **self.replication.orders(), **self.media.orders(), **self.diskcopy.orders(),
            **self.drbd.orders(), **self.adoption.orders(), **self.snapshots.orders(), **self.backups.orders(), **self.secrets.orders(),
            "node.hello": self._hello,
            "etcd.join": self._become_member,
            "etcd.leave": self._stop_being_member,
        }

    async def node_order(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        """Carry out order `op`, its sender already admitted as the master."""
        handler = self.orders.get(op)
        if handler is None:
            raise OrderError(f"unknown order {op!r}")
        try:
            return await handler(args)
        finally:  # orders make, grow and remove volumes: the next report reads the volume group again
            self.reports.storage_changed()

    async def _hello(self, args: dict[str, Any]) -> dict[str, Any]:
        """The master's check that this node takes orders (no arguments)."""
        return {"node": self.cfg.node_name}

    async def _become_member(self, args: dict[str, Any]) -> dict[str, Any]:
        """Join the etcd members and stand for master."""
        if await self.member.join(args["initial_cluster"], args["ca_key"], self.etcd) and self.candidacy:
            self.candidacy.start(self.loops)
        return {"member": True}

    async def _stop_being_member(self, args: dict[str, Any]) -> dict[str, Any]:
        """Leave the etcd members and be a regular node again (no arguments)."""
        if self.candidacy is not None:
            await self.candidacy.stop()
        await self.member.leave(self.etcd)
        return {"member": False}

    def _reload_tls(self) -> None:
        """New connections, both ways, use the certificate and CAs on disk now; open ones carry on."""
        self.client_ssl = pki.client_context(self.pki)
        if self.server_ssl is not None:
            pki.swap_server_context(self.server_ssl, pki.server_context(self.pki))
        if self.nodes is not None:
            self.nodes.renew(self.client_ssl)
        if self.etcd is not None:
            self.etcd.set_ssl(self.client_ssl)

    async def verify_token(self, token: FencingToken) -> str | None:
        """The node holding the master key with exactly this token, according to etcd (or None)."""
        if self.etcd is None:
            return None
        kv = await self.etcd.get(model.MASTER_KEY)
        if kv is None or kv.create_revision != token.revision or kv.lease != token.lease_id:
            return None
        return str(model.loads(kv.value).get("node"))

    async def tell_master(self, path: str, body: dict[str, Any]) -> bool:
        """POST to the master's node API (mutual TLS); True once it answered 200."""
        master = self.replica.get_json(model.MASTER_KEY)
        node = self.replica.get_json(model.node_key(master["node"])) if isinstance(master, dict) else None
        if node is None or self.nodes is None or self.isolation.active():
            return False
        status, data = await self.nodes.forward(node["address"], node["api_port"], "POST", path,
                                                json.dumps(body).encode(), timeout_s=5)
        if status != 200:
            log.info("the master did not take %s: %s", path, data.get("message", status))
        return status == 200
