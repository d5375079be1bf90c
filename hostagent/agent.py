"""The agent: wires the seams together and owns their startup and cleanup.

Startup order matters for operators: the local unix socket comes up first (so
`corral` can always say something), then, on a node in a cluster, etcd (on
master candidates), the config mirror, Serf, the node lease, the master role
(candidates only) and the TLS API.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import secrets
import shutil
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any

from election.etcd import EtcdClient, EtcdError, Op
from election.lease import FencingToken, MasterLease
from election.member import wait_healthy
from election.mirror import Mirror
from election.replica import Replica
from kvm.process import QemuManager
from membership.agent import new_gossip_key, serf_argv, write_serf_secrets
from membership.rpc import SerfError, SerfRpc
from membership.view import gossip_status, note_alive
from storage.filedisk import FileTemplate
from storage.lvm import PlainTemplate
from storage.osdef import OsCatalog, discover

from hostagent import model, pki
from hostagent.api import callers
from hostagent.master import vncpass
from hostagent.node import gossip, joining, reporter
from hostagent.node.boothealth import BootWatcher
from hostagent.api.callers import Caller
from hostagent.config import AgentConfig
from hostagent.node.executor import NodeExecutor, OrderError
from hostagent.node.media import NodeMedia
from hostagent.api.relay import RelayLimit
from hostagent.node.replication import NodeReplication
from hostagent.node.diskcopy import NodeDiskCopy
from hostagent.node.clusterfile import ClusterFile
from hostagent.node.etcdmember import EtcdMember
from hostagent.node.fencing import TokenGuard
from hostagent.node.reportloop import ReportLoop
from hostagent.node.isolation import Isolation
from hostagent.master.role import MasterRole
from hostagent.master.node_ops import NodeOperations
from hostagent.master.duties.autofailover import AutoFailover
from hostagent.master.jobarchive import JobArchive
from hostagent.node.looplag import LoopLag
from hostagent.node.nodelease import NodeLease
from hostagent.api.nodetrust import CrlKeeper, NodeTrust
from hostagent.node.selffence import SelfFence
from hostagent.node.notify import Notifier
from hostagent.master.operations import Operations, lock_keys
from hostagent.orders import NodeClient
from hostagent.master.rotation import Rotation
from hostagent.status import REPORT_STALE_AFTER_S
from hostagent.node.supervisor import ChildSupervisor, Loops

log = logging.getLogger(__name__)


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
    def __init__(self, cfg: AgentConfig, notifier: Notifier | None = None, guest_nice: int | None = None) -> None:
        self.cfg = cfg
        self.notifier = notifier or Notifier()
        self.pki = pki.PkiPaths(cfg.pki_dir)
        for path in (cfg.state_dir, cfg.run_dir, cfg.log_dir, cfg.file_storage):
            os.makedirs(path, mode=0o700, exist_ok=True)
        for path in (cfg.state_dir, cfg.log_dir):
            os.chmod(path, 0o700)  # job arguments and OS logs may hold secrets
        self._lock_fd = _lock_node(cfg.state_dir)
        self.replica = Replica(os.path.join(cfg.state_dir, "config.db"))
        self.qemu = QemuManager(cfg.run_dir, log_dir=os.path.join(cfg.log_dir, "console"),
                                qemu_binary=cfg.qemu_binary, guest_nice=guest_nice, kernel_dirs=cfg.kernel_dirs)
        self.boot = BootWatcher(os.path.join(cfg.log_dir, "console"), os.path.join(cfg.run_dir, "boot-watch.json"),
                                lambda name: self.replica.get_json(model.instance_key(name)), time.time())
        self.files = FileTemplate(cfg.file_storage)
        self.lvm = PlainTemplate(cfg.volume_group, lvm_args=cfg.lvm_args) if cfg.volume_group else None
        self._catalog: OsCatalog = discover(cfg.os_search_paths, cfg.image_paths)
        self.replication = NodeReplication(cfg.node_name, cfg.address, self.qemu, self.files, self.pki,
                                           cfg.run_dir)
        self.media = NodeMedia(cfg.node_name, cfg.address, self.qemu, cfg.iso_dirs,
                               lambda uuid: vncpass.password(self.replica, uuid))
        self.relays = RelayLimit()  # consoles and VNC displays this agent bridges (hostagent.api.relay)
        self.executor = NodeExecutor(cfg.node_name, self.qemu, self.files, self.catalog,
                                     os.path.join(cfg.log_dir, "os"), cfg.os_install_timeout_s,
                                     {**self.replication.orders(), **self.media.orders(), **NodeDiskCopy(
                                         cfg.node_name, self.qemu, self.files, self.pki, cfg.run_dir).orders()},
                                     self.replication.tls_dir)
        self.replication.tell_master = self.tell_master
        self.executor.dress = self.media.dress
        self.tokens = TokenGuard(os.path.join(cfg.state_dir, "fencing-token"))
        self.crl = CrlKeeper(self.replica, self.pki)
        self.cluster_file = ClusterFile(cfg.state_dir)
        self.member = EtcdMember(cfg, self.pki, self.crl, self.cluster_file)
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
        self._serf_child: ChildSupervisor | None = None
        self._role_task: asyncio.Task[None] | None = None
        self._init_lock = asyncio.Lock()
        self._gossip_seen: dict[str, float] = {}
        self.isolation = Isolation(cfg.node_name)  # the isolate drill
        self.reports = ReportLoop(cfg, self.replica, self.qemu, self.files, self.lvm, self.catalog, self.refresh_catalog,
                                  self.replication, self.boot, self.looplag, self.pki, self.tokens, self.isolation,
                                  self.member, self._role, self._serf_rpc)
        self.node_site: Callable[[], Awaitable[None]] | None = None
        self.server_ssl: ssl.SSLContext | None = None  # set by the node site; reloaded on rotation
        self.client_ssl: ssl.SSLContext | None = None

    # ---- local state --------------------------------------------------------
    def catalog(self) -> OsCatalog:
        return self._catalog

    def refresh_catalog(self) -> OsCatalog:
        self._catalog = discover(self.cfg.os_search_paths, self.cfg.image_paths)
        return self._catalog

    def _secret(self, name: str) -> str:
        with open(os.path.join(self.cfg.pki_dir, name)) as fh:
            return fh.read().strip()

    def _write_secret(self, name: str, value: str) -> None:
        pki.write_pem(os.path.join(self.cfg.pki_dir, name), value.encode(), secret=True)

    # ---- lifecycle ----------------------------------------------------------
    async def activate(self) -> None:
        """Bring up the cluster side on a node that belongs to a cluster."""
        cfg = self.cfg
        local = self.cluster_file.read()
        if local is None:
            raise NotInitialized("this node is not part of a cluster")
        self.loops = Loops()
        serf_config = os.path.join(cfg.pki_dir, "serf.json")
        serf_keyring = os.path.join(cfg.pki_dir, "serf.keyring")  # serf keeps rotated keys here

        def serf_command() -> list[str]:
            write_serf_secrets(serf_config, self._secret("gossip.key"), rpc_auth=self._secret("serf-rpc.key"),
                               keyring_file=serf_keyring)
            return serf_argv(cfg.node_name, f"{cfg.address}:{cfg.gossip_port}",
                             f"{cfg.address}:{cfg.serf_rpc_port}", self._secret("gossip.key"), self._tags(),
                             rpc_auth=self._secret("serf-rpc.key"), config_file=serf_config,
                             keyring_file=serf_keyring,
                             join=(self.cluster_file.read() or {}).get("serf_join", []),
                             snapshot_path=os.path.join(cfg.state_dir, "serf.snapshot"),
                             serf_binary=cfg.serf_binary)

        self._serf_child = ChildSupervisor("serf", serf_command, os.path.join(cfg.log_dir, "serf.log"))
        self._serf_child.start()
        if local.get("etcd_member"):
            self.member.start()
        ssl_client = self.client_ssl = pki.client_context(self.pki)
        self.etcd = EtcdClient(self.member.endpoints(local), ssl=ssl_client)
        if local.get("etcd_member"):
            try:
                await wait_healthy(self.etcd, timeout_s=30)
            except EtcdError as exc:  # keep serving reads from the replica; the loops retry
                log.warning("etcd has no quorum yet (%s); serving reads from this node's replica meanwhile", exc)
        self.mirror = Mirror(self.etcd, self.replica, prefix=model.PREFIX)
        self.nodes = NodeClient(ssl_client)
        lease = MasterLease(self.etcd, key=model.MASTER_KEY, ttl_s=cfg.master_lease_ttl_s)
        self.role = MasterRole(cfg.node_name, self.etcd, lease, lock_keys=lock_keys,
                               on_change=self.notifier.status, catch_up=self._catch_up)
        self.ops = Operations(self.role, self.nodes)
        self.node_ops = NodeOperations(self.ops, self.pki)
        rotation = Rotation(self.ops, self.pki, self._serf_rpc, lambda: self._secret("gossip.key"))
        self.role.handlers = {**self.ops.handlers(), **self.node_ops.handlers(),
                              "cluster.rotate-secrets": rotation.job}
        self.role.on_elected.append(self._fence_older_masters)
        self.autofailover = AutoFailover(self.ops)
        self.role.duties += [self._pool_duty, self._fence_stragglers, JobArchive(self.ops).step,
                             self.ops.moves.keep_mirrors,
                             self.ops.restarter.step, self.autofailover.step, self.node_ops.sweep_tokens]
        self.lease = NodeLease(self.etcd, cfg.node_name, cfg.node_lease_ttl_s)
        self.fence = SelfFence(cfg.node_name, self.lease, self.qemu, self.replica, cfg.run_dir, cfg.log_dir,
                               cfg.watchdog or None)
        self.executor.start_guard = self.fence.start_refusal
        if self.node_site is not None:
            await self.node_site()  # orders, even the master's to itself, arrive here
        stop = self.loops.stop
        self.loops.spawn(self.mirror.run(stop), name="mirror")
        self.loops.spawn(gossip.follow_events(self._serf_rpc, stop), name="gossip", cancel_at_end=True)  # only logs
        self.loops.spawn(self.lease.run(stop), name="node-lease")
        self.loops.spawn(self.fence.run(stop), name="self-fence")
        self.reports.start(self.etcd, self.fence, self.loops)
        self.loops.spawn(self.member.revocations(stop), name="revocations")
        self.loops.spawn(self.looplag.run(stop), name="loop-lag")
        if local.get("etcd_member"):
            self._start_role()

    def _start_role(self) -> None:
        if self._role_task is None and self.role is not None:
            self._role_task = self.loops.spawn(self.role.run(self.loops.stop), name="master")

    async def _stop_role(self) -> None:
        if self._role_task is not None:
            self._role_task.cancel()
            await asyncio.gather(self._role_task, return_exceptions=True)
            self._role_task = None

    async def _catch_up(self, revision: int, timeout_s: float) -> bool:
        """A new master acts only once its own replica has everything committed before it won."""
        assert self.mirror is not None
        return await self.mirror.wait_for_revision(revision, timeout_s=timeout_s)

    async def _fence_older_masters(self) -> None:
        """Record the new token and tell every node at once, so an older master's orders are refused."""
        assert self.ops is not None and self.role is not None and self.role.token is not None
        info = {"node": self.cfg.node_name, "token": self.role.token.to_str(), "since": time.time()}
        await self.ops._write([Op.put(model.MASTER_INFO_KEY, model.dumps(info))])
        nodes = await self.ops._prefix(model.NODES)

        async def hello(name: str) -> None:
            try:
                await self.ops._order(name, "node.hello", {}, timeout_s=5)  # type: ignore[union-attr]
            except Exception as exc:  # noqa: BLE001 - a node that is down learns the token later
                log.info("node '%s' did not take the new master token yet: %s", name, exc)

        await asyncio.gather(*(hello(n["name"]) for n in nodes))

    async def _pool_duty(self) -> None:
        assert self.node_ops is not None
        try:
            await self.node_ops.record_serials()
            await self.node_ops.pool_step()
        except Exception as exc:  # noqa: BLE001 - retried next pass; the reason is logged
            log.warning("could not change the master candidate pool: %s", exc)

    def _tags(self) -> dict[str, str]:
        return {"api": f"{self.cfg.address}:{self.cfg.api_port}", "version": reporter.AGENT_VERSION,
                "role": "candidate" if self.cluster_file.is_candidate else "regular"}

    async def init_cluster(self, name: str, hvparams: dict[str, Any], pool_size: int = 3,
                           settings: dict[str, float] | None = None, caller: Caller | None = None) -> int:
        """`corral cluster init`: secrets, a one-member etcd, the master lease, the cluster record.

        All or nothing: if any step fails, what was created is removed again so
        that the operator can simply run the command again.
        """
        async with self._init_lock:
            self._refuse_if_member()
            try:
                return await self._init_cluster(name, hvparams, pool_size, settings or {}, caller)
            except BaseException:
                await self._undo_local("cluster init")
                raise

    async def _init_cluster(self, name: str, hvparams: dict[str, Any], pool_size: int,
                            settings: dict[str, float], caller: Caller | None) -> int:
        pki.create_ca(self.pki, name)
        pki.issue_node_cert(self.pki, self.cfg.node_name, self.cfg.address)
        self._write_secret("gossip.key", new_gossip_key())
        self._write_secret("serf-rpc.key", secrets.token_urlsafe(24))
        self.cluster_file.save({"name": name, "joined": time.time(), "etcd_member": True,
                          "etcd_initial_cluster": f"{self.cfg.node_name}={self.member.peer_url}",
                          "etcd_cluster_state": "new", "etcd_endpoints": [self.member.client_url], "serf_join": []})
        log.info("initializing cluster '%s' on node '%s' (CA %s)", name, self.cfg.node_name,
                 pki.ca_fingerprint(self.pki))
        await self.activate()
        assert self.role is not None and self.ops is not None
        await asyncio.wait_for(self.role.became_master.wait(), timeout=30)
        await self.reports.now()
        record = {**self.node_record(), "cert_serials": [pki.own_serial(self.pki)]}
        with callers.acting(caller):  # only here: the tasks activate() started must not inherit it
            return await self.ops.submit_cluster_init(name, record, hvparams, pool_size, settings)

    async def join_cluster(self, address: str, token: str) -> dict[str, Any]:
        """`corral cluster join ADDR --token T`: get a certificate and the secrets, then come up."""
        async with self._init_lock:
            self._refuse_if_member()
            host, port = joining.split_address(address, self.cfg.api_port)
            try:
                csr = pki.new_node_key(self.pki)
                record = self.node_record()
                answer = await joining.request_join(host, port, token, {
                    "name": self.cfg.node_name, "address": self.cfg.address, "csr": csr.decode(),
                    "ports": {"api": record["api_port"], "gossip": record["gossip_port"],
                              "etcd_client": record["etcd_client_port"], "etcd_peer": record["etcd_peer_port"]}})
                pki.write_pem(self.pki.ca_cert, answer["ca_cert"].encode())
                pki.write_pem(self.pki.node_cert, answer["node_cert"].encode())
                self._write_secret("gossip.key", answer["gossip_key"])
                self._write_secret("serf-rpc.key", secrets.token_urlsafe(24))
                self.cluster_file.save({"name": answer["cluster"], "joined": time.time(), "etcd_member": False,
                                  "etcd_endpoints": answer["etcd_endpoints"], "serf_join": answer["serf_join"]})
                log.info("node '%s' joined cluster '%s' (admitted by master '%s')", self.cfg.node_name,
                         answer["cluster"], answer["master"])
                await self.activate()
                assert self.mirror is not None and self.etcd is not None
                revision = (await self.etcd.status())["revision"]
                await self.mirror.wait_for_revision(revision, timeout_s=15)
                await self.reports.now()
                return {"cluster": answer["cluster"], "node": self.cfg.node_name, "master": answer["master"]}
            except BaseException:
                await self._undo_local("cluster join")
                raise

    def _refuse_if_member(self) -> None:
        local = self.cluster_file.read()
        if local is not None:
            raise FileExistsError(f"node '{self.cfg.node_name}' already belongs to cluster '{local['name']}'")

    async def _undo_local(self, what: str) -> None:
        log.error("%s failed; removing what it created on node '%s'", what, self.cfg.node_name)
        await self._deactivate()
        for path in (self.cluster_file.path, self.cfg.pki_dir, self.member.data_dir,
                     os.path.join(self.cfg.state_dir, "serf.snapshot")):
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.exists(path):
                os.unlink(path)
        self.replica.reset([], 0)

    def node_record(self) -> dict[str, Any]:
        return {"name": self.cfg.node_name, "address": self.cfg.address, "api_port": self.cfg.api_port,
                "gossip_port": self.cfg.gossip_port, "etcd_client_port": self.cfg.etcd_client_port,
                "etcd_peer_port": self.cfg.etcd_peer_port, "candidate": True, "master_capable": True,
                "drained": False, "offline": False, "added": time.time()}

    async def _read_node_now(self, key: str) -> dict[str, Any] | None:
        """A node record as etcd has it this moment (the replica may lag a join or a new certificate)."""
        assert self.etcd is not None
        async with asyncio.timeout(3):
            kv = await self.etcd.get(key)
        return None if kv is None else model.loads(kv.value)

    # ---- orders about this node's own roles ---------------------------------------
    async def node_order(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        if op == "node.hello":
            return {"node": self.cfg.node_name}
        if op == "etcd.join":
            if await self.member.join(args["initial_cluster"], args["ca_key"], self.etcd):
                self._start_role()
            return {"member": True}
        if op == "etcd.leave":
            await self._stop_role()
            await self.member.leave(self.etcd)
            return {"member": False}
        if op == "secrets.gossip":
            self._write_secret("gossip.key", args["key"])
            return {}
        if op == "secrets.csr":
            return {"csr": pki.new_pending_key(self.pki).decode()}
        if op == "secrets.cert":
            pki.install_pending(self.pki, args["cert"].encode())
            self._reload_tls()
            log.info("node '%s' now uses its renewed certificate", self.cfg.node_name)
            return {}
        if op == "secrets.ca-trust":
            return await self._trust_next_ca(args["ca"].encode(), args.get("ca_key"))
        if op == "secrets.ca-retire":
            return await self._retire_old_ca(args["ca"].encode())
        raise OrderError(f"unknown order {op!r}")

    def _reload_tls(self) -> None:
        """New connections, both ways, use the certificate and CAs on disk now; open ones carry on."""
        self.client_ssl = pki.client_context(self.pki)
        if self.server_ssl is not None:
            pki.swap_server_context(self.server_ssl, pki.server_context(self.pki))
        if self.nodes is not None:
            self.nodes.renew(self.client_ssl)
        if self.etcd is not None:
            self.etcd.set_ssl(self.client_ssl)

    async def _trust_next_ca(self, ca_pem: bytes, ca_key: str | None) -> dict[str, Any]:
        """`rotate-secrets --new-ca`, step 1 on each node: trust the new CA beside the old one."""
        if ca_key is not None:  # candidates sign joins and revocation lists when master
            pki.write_pem(self.pki.ca_next_key, ca_key.encode(), secret=True)
        pki.write_pem(self.pki.ca_next_cert, ca_pem)
        with open(self.pki.ca_cert, "rb") as fh:
            current = pki.split_pems(fh.read())
        pki.write_trust(self.pki, current + [ca_pem])
        self._reload_tls()
        await self.member.restart("to trust the new cluster CA")
        log.info("node '%s' trusts the new cluster CA beside the old one", self.cfg.node_name)
        return {"trusted": len(current) + 1}

    async def _retire_old_ca(self, ca_pem: bytes) -> dict[str, Any]:
        """Last step: trust only the new CA; candidates sign with its key from now on."""
        if os.path.exists(self.pki.ca_next_key):
            os.replace(self.pki.ca_next_key, self.pki.ca_key)
        elif os.path.exists(self.pki.ca_key):
            os.unlink(self.pki.ca_key)  # a key of the retired CA must not outlive it
        pki.write_trust(self.pki, [ca_pem])
        if os.path.exists(self.pki.ca_next_cert):
            os.unlink(self.pki.ca_next_cert)
        self._reload_tls()
        if self.member.running:
            self.crl.sync(force=True)  # signed by the new CA
        await self.member.restart("to stop trusting the retired cluster CA")
        log.info("node '%s' trusts only the new cluster CA", self.cfg.node_name)
        return {"trusted": 1}

    async def verify_token(self, token: FencingToken) -> str | None:
        """The node holding the master key with exactly this token, according to etcd (or None)."""
        if self.etcd is None:
            return None
        kv = await self.etcd.get(model.MASTER_KEY)
        if kv is None or kv.create_revision != token.revision or kv.lease != token.lease_id:
            return None
        return str(model.loads(kv.value).get("node"))

    async def _serf_rpc(self) -> SerfRpc:
        return await SerfRpc.connect(self.cfg.address, self.cfg.serf_rpc_port,
                                     auth_key=self._secret("serf-rpc.key"), timeout_s=5)

    def child_pids(self) -> list[int]:
        return [pid for pid in (self._serf_child.pid if self._serf_child else None, self.member.pid) if pid is not None]

    async def _fence_stragglers(self) -> None:
        """Nodes that have not seen this master's token yet (they were away at the election) get it now."""
        assert self.ops is not None and self.role is not None and self.role.token is not None
        mine, now = self.role.token.to_str(), time.time()
        behind = [r["node"] for _, r in self.replica.prefix_json(model.REPORTS)
                  if r.get("fencing_token") != mine and now - r.get("time", 0) < REPORT_STALE_AFTER_S]

        async def hello(name: str) -> None:
            try:
                await self.ops._order(name, "node.hello", {}, timeout_s=3)  # type: ignore[union-attr]
            except Exception as exc:  # noqa: BLE001 - retried next pass
                log.info("node '%s' has not taken the new master token yet: %s", name, exc)

        await asyncio.gather(*(hello(n) for n in behind))

    # ---- reports --------------------------------------------------------------------
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

    def _role(self) -> str:
        if self.role is not None and self.role.is_master:
            return "master"
        return "candidate" if self.cluster_file.is_candidate else "regular"

    async def gossip(self) -> dict[str, dict[str, Any]]:
        """Gossip view for `node list`: status and why, by node name; empty when Serf is not answering."""
        if self.cluster_file.read() is None:
            return {}
        try:
            rpc = await self._serf_rpc()
        except (SerfError, OSError):
            return {}
        try:
            members = await rpc.members()
        except SerfError:
            return {}
        finally:
            await rpc.close()
        now = time.time()
        self._gossip_seen = note_alive(members, now, self._gossip_seen)
        return {name: {"status": g.status, "reason": g.reason}
                for name, g in gossip_status(members, now, self._gossip_seen).items()}

    async def _deactivate(self) -> None:
        """Stop the cluster side (tasks, etcd, serf); the local API stays up."""
        await self.loops.end()
        self._role_task = None
        self.reports.stop()
        if self._serf_child is not None:
            await self._serf_child.stop()
        self._serf_child = None
        await self.member.stop()
        if self.nodes is not None:
            await self.nodes.close()
        if self.etcd is not None:
            await self.etcd.close()
        self.etcd = self.mirror = self.role = self.ops = self.node_ops = self.nodes = self.lease = None
        self.fence = None
        self.executor.start_guard = None

    async def shutdown(self) -> None:
        await self._deactivate()
        self.replica.close()
