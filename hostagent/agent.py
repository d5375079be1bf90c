"""The agent: wires the seams together and owns their startup and cleanup.

Startup order matters for operators: the local unix socket comes up first (so
`corral` can always say something), then, on an initialized node, etcd, the
config mirror, Serf, the master role and the TLS API.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import secrets
import shutil
import time
from collections.abc import Awaitable, Callable
from typing import Any

from election.etcd import EtcdClient, EtcdError
from election.lease import MasterLease
from election.member import EtcdTls, etcd_argv, wait_healthy
from election.mirror import Mirror
from election.replica import Replica
from kvm.process import QemuManager
from membership.agent import new_gossip_key, serf_argv, write_serf_secrets
from membership.rpc import SerfError, SerfRpc
from storage.filedisk import FileTemplate
from storage.osdef import OsCatalog, discover

from hostagent import model, pki, reporter
from hostagent.config import AgentConfig
from hostagent.executor import NodeExecutor
from hostagent.fencing import TokenGuard
from hostagent.master import MasterRole
from hostagent.notify import Notifier
from hostagent.operations import Operations, lock_keys
from hostagent.orders import NodeClient
from hostagent.supervisor import ChildSupervisor

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
    def __init__(self, cfg: AgentConfig, notifier: Notifier | None = None) -> None:
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
                                qemu_binary=cfg.qemu_binary)
        self.files = FileTemplate(cfg.file_storage)
        self._catalog: OsCatalog = discover(cfg.os_search_paths, cfg.image_paths)
        self.executor = NodeExecutor(cfg.node_name, self.qemu, self.files, self.catalog,
                                     os.path.join(cfg.log_dir, "os"), cfg.os_install_timeout_s)
        self.tokens = TokenGuard(os.path.join(cfg.state_dir, "fencing-token"))
        self.stop_event = asyncio.Event()
        self.etcd: EtcdClient | None = None
        self.mirror: Mirror | None = None
        self.role: MasterRole | None = None
        self.ops: Operations | None = None
        self.nodes: NodeClient | None = None
        self._children: list[ChildSupervisor] = []
        self._tasks: list[asyncio.Task[Any]] = []
        self._init_lock = asyncio.Lock()
        self._report_tasks: set[asyncio.Task[None]] = set()
        self.node_site: Callable[[], Awaitable[None]] | None = None
        self.started_at = time.time()

    # ---- local state --------------------------------------------------------
    @property
    def _cluster_file(self) -> str:
        return os.path.join(self.cfg.state_dir, "cluster.json")

    def local_cluster(self) -> dict[str, Any] | None:
        try:
            with open(self._cluster_file) as fh:
                return json.load(fh)
        except FileNotFoundError:
            return None

    def catalog(self) -> OsCatalog:
        return self._catalog

    def refresh_catalog(self) -> OsCatalog:
        self._catalog = discover(self.cfg.os_search_paths, self.cfg.image_paths)
        return self._catalog

    def _secret(self, name: str) -> str:
        with open(os.path.join(self.cfg.pki_dir, name)) as fh:
            return fh.read().strip()

    # ---- lifecycle ----------------------------------------------------------
    async def activate(self) -> None:
        """Bring up the cluster side on a node that has been initialized."""
        cfg = self.cfg
        local = self.local_cluster()
        if local is None:
            raise NotInitialized("this node is not part of a cluster")
        tls = EtcdTls(ca=self.pki.ca_cert, cert=self.pki.node_cert, key=self.pki.node_key)
        client_url = f"https://{cfg.address}:{cfg.etcd_client_port}"
        peer_url = f"https://{cfg.address}:{cfg.etcd_peer_port}"
        etcd = ChildSupervisor("etcd", lambda: etcd_argv(
            cfg.node_name, os.path.join(cfg.state_dir, "etcd"), client_url, peer_url,
            local["etcd_initial_cluster"], local["etcd_cluster_state"], tls, binary=cfg.etcd_binary),
            os.path.join(cfg.log_dir, "etcd.log"))
        serf_config = os.path.join(cfg.pki_dir, "serf.json")

        def serf_command() -> list[str]:
            write_serf_secrets(serf_config, self._secret("gossip.key"), rpc_auth=self._secret("serf-rpc.key"))
            return serf_argv(cfg.node_name, f"{cfg.address}:{cfg.gossip_port}",
                             f"{cfg.address}:{cfg.serf_rpc_port}", self._secret("gossip.key"), self._tags(),
                             rpc_auth=self._secret("serf-rpc.key"), config_file=serf_config,
                             snapshot_path=os.path.join(cfg.state_dir, "serf.snapshot"),
                             serf_binary=cfg.serf_binary)

        serf = ChildSupervisor("serf", serf_command, os.path.join(cfg.log_dir, "serf.log"))
        self._children = [etcd, serf]
        for child in self._children:
            child.start()
        ssl_client = pki.client_context(self.pki)
        self.etcd = EtcdClient([client_url], ssl=ssl_client)
        await wait_healthy(self.etcd, timeout_s=30)
        self.mirror = Mirror(self.etcd, self.replica, prefix=model.PREFIX)
        self.nodes = NodeClient(ssl_client)
        lease = MasterLease(self.etcd, key=model.MASTER_KEY, ttl_s=cfg.master_lease_ttl_s)
        self.role = MasterRole(cfg.node_name, self.etcd, lease, lock_keys=lock_keys,
                               on_change=self.notifier.status)
        self.ops = Operations(self.role, self.nodes)
        self.role.handlers = self.ops.handlers()
        if self.node_site is not None:
            await self.node_site()  # orders, even the master's to itself, arrive here
        self._tasks += [asyncio.create_task(self.mirror.run(self.stop_event), name="mirror"),
                        asyncio.create_task(self.role.run(self.stop_event), name="master"),
                        asyncio.create_task(self._report_loop(), name="reporter")]

    def _tags(self) -> dict[str, str]:
        return {"api": f"{self.cfg.address}:{self.cfg.api_port}", "version": reporter.AGENT_VERSION}

    async def init_cluster(self, name: str, hvparams: dict[str, Any]) -> int:
        """`corral cluster init`: secrets, a one-member etcd, the master lease, the cluster record.

        All or nothing: if any step fails, what was created is removed again so
        that the operator can simply run the command again.
        """
        async with self._init_lock:
            local = self.local_cluster()
            if local is not None:
                raise FileExistsError(f"node '{self.cfg.node_name}' already belongs to cluster '{local['name']}'")
            try:
                return await self._init_cluster(name, hvparams)
            except BaseException:
                log.error("cluster init failed; removing what it created on node '%s'", self.cfg.node_name)
                await self._deactivate()
                for path in (self._cluster_file, self.cfg.pki_dir, os.path.join(self.cfg.state_dir, "etcd"),
                             os.path.join(self.cfg.state_dir, "serf.snapshot")):
                    if os.path.isdir(path):
                        shutil.rmtree(path)
                    elif os.path.exists(path):
                        os.unlink(path)
                self.replica.reset([], 0)
                raise

    async def _init_cluster(self, name: str, hvparams: dict[str, Any]) -> int:
        pki.create_ca(self.pki, name)
        pki.issue_node_cert(self.pki, self.cfg.node_name, self.cfg.address)
        for secret, value in (("gossip.key", new_gossip_key()),
                              ("serf-rpc.key", secrets.token_urlsafe(24))):
            fd = os.open(os.path.join(self.cfg.pki_dir, secret), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(value)
        local = {"name": name, "joined": time.time(),
                 "etcd_initial_cluster": f"{self.cfg.node_name}=https://{self.cfg.address}:{self.cfg.etcd_peer_port}",
                 "etcd_cluster_state": "new"}
        tmp = self._cluster_file + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(local, fh)
        os.replace(tmp, self._cluster_file)
        log.info("initializing cluster '%s' on node '%s' (CA %s)", name, self.cfg.node_name,
                 pki.ca_fingerprint(self.pki))
        await self.activate()
        assert self.role is not None and self.ops is not None
        await asyncio.wait_for(self.role.became_master.wait(), timeout=30)
        await self.report_now()
        return await self.ops.submit_cluster_init(name, self.node_record(), hvparams)

    def node_record(self) -> dict[str, Any]:
        return {"name": self.cfg.node_name, "address": self.cfg.address, "api_port": self.cfg.api_port,
                "gossip_port": self.cfg.gossip_port, "etcd_client_port": self.cfg.etcd_client_port,
                "etcd_peer_port": self.cfg.etcd_peer_port, "candidate": True,
                "drained": False, "offline": False, "added": time.time()}

    async def report_now(self) -> None:
        if self.etcd is None:
            return
        self.refresh_catalog()
        report = await reporter.collect(self.cfg.node_name, self.qemu, self.files, self.catalog)
        await self.etcd.put(model.report_key(self.cfg.node_name), model.dumps(report))

    async def _report_loop(self) -> None:
        while not self.stop_event.is_set():
            try:
                await self.report_now()
            except EtcdError as exc:
                log.warning("could not publish this node's report: %s", exc)
            except Exception:  # noqa: BLE001
                log.exception("node report failed; please report this bug")
            try:
                await asyncio.wait_for(self.stop_event.wait(), self.cfg.report_interval_s)
            except asyncio.TimeoutError:
                pass

    async def serf_members(self) -> list[dict[str, Any]]:
        """Gossip view for `node list`; empty when Serf is not answering."""
        if self.local_cluster() is None:
            return []
        try:
            rpc = await SerfRpc.connect(self.cfg.address, self.cfg.serf_rpc_port,
                                        auth_key=self._secret("serf-rpc.key"), timeout_s=2)
        except (SerfError, OSError):
            return []
        try:
            return [{"name": m.name, "addr": m.addr, "status": m.status, "tags": m.tags}
                    for m in await rpc.members()]
        except SerfError:
            return []
        finally:
            await rpc.close()

    def schedule_report(self) -> None:
        """Publish a report soon (after an order) without making the caller wait."""
        task = asyncio.get_running_loop().create_task(self.report_now())
        self._report_tasks.add(task)
        task.add_done_callback(self._report_tasks.discard)

    async def _deactivate(self) -> None:
        """Stop the cluster side (tasks, etcd, serf); the local API stays up."""
        self.stop_event.set()
        for task in [*self._tasks, *self._report_tasks]:
            try:
                await asyncio.wait_for(task, 15)
            except (asyncio.TimeoutError, asyncio.CancelledError, Exception):  # noqa: BLE001
                task.cancel()
        self._tasks = []
        for child in reversed(self._children):
            await child.stop()
        self._children = []
        if self.nodes is not None:
            await self.nodes.close()
        if self.etcd is not None:
            await self.etcd.close()
        self.etcd = self.mirror = self.role = self.ops = self.nodes = None
        self.stop_event = asyncio.Event()

    async def shutdown(self) -> None:
        await self._deactivate()
        self.replica.close()
