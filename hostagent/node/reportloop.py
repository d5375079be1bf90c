"""The node's report: what runs here and how the node is, put in etcd every few seconds and after each order."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

from election.etcd import EtcdClient, EtcdError
from election.replica import Replica
from kvm.process import QemuManager
from membership.rpc import SerfError, SerfRpc
from storage.backupdir import BackupDirs
from storage.filedisk import FileTemplate
from storage.lvm import PlainTemplate
from storage.osdef import OsCatalog

from hostagent import model, pki
from hostagent.clock import SYSTEM, Clock
from hostagent.config import AgentConfig
from hostagent.node import gossip, reporter
from hostagent.node.boothealth import BootWatcher
from hostagent.node.coalesce import Coalesced
from hostagent.node.etcdmember import EtcdMember
from hostagent.node.fencing import TokenGuard
from hostagent.node.isolation import Isolation
from hostagent.node.loadgauge import LoadGauge
from hostagent.node.looplag import LoopLag
from hostagent.node.qemuwatch import QemuWatch
from hostagent.node.drbdnode import NodeDrbd
from hostagent.node.replication import NodeReplication
from hostagent.node.selffence import SelfFence
from hostagent.node.supervisor import Loops

log = logging.getLogger(__name__)

BOOT_POLL_S = 0.25  # the consoles of boots under way are read this often between reports


class ReportLoop:
    """Publishes the report while started (it needs the etcd client and the self-fence of the running
    cluster side), keeps the etcd endpoints in step, and sets this node's gossip `role` tag when it changes."""

    def __init__(self, cfg: AgentConfig, replica: Replica, qemu: QemuManager, files: FileTemplate,
                 lvm: PlainTemplate | None, catalog: Callable[[], OsCatalog], refresh_catalog: Callable[[], OsCatalog],
                 replication: NodeReplication, boot: BootWatcher, looplag: LoopLag, paths: pki.PkiPaths,
                 tokens: TokenGuard, isolation: Isolation, member: EtcdMember,
                 role: Callable[[], str], serf: Callable[[], Awaitable[SerfRpc]], clock: Clock = SYSTEM) -> None:
        self._cfg = cfg
        self._clock = clock
        self._replica = replica
        self._qemu = qemu
        self._files = files
        self._catalog = catalog
        self._refresh_catalog = refresh_catalog
        self._replication = replication
        self._boot = boot
        self._looplag = looplag
        self._pki = paths
        self._tokens = tokens
        self._isolation = isolation
        self._member = member
        self._role = role
        self._serf = serf
        self._etcd: EtcdClient | None = None
        self._fence: SelfFence | None = None
        self._loops: Loops | None = None
        self.drbd: NodeDrbd | None = None  # set by the agent: its DRBD resources join the report
        self.backups: BackupDirs | None = None  # set by the agent: its export directories' backups join the report
        self._lvm_seen = reporter.LvmSeen(lvm, clock) if lvm is not None else None
        self._qemus = QemuWatch(self._qemu_exited)
        self._load = LoadGauge(clock)
        self._soon = Coalesced(self._report_soon)

    def start(self, etcd: EtcdClient, fence: SelfFence, loops: Loops) -> None:
        self._etcd, self._fence, self._loops = etcd, fence, loops
        loops.spawn(self._run(loops.stop), name="reporter")
        loops.spawn(self._load.run(loops.stop), name="load-gauge")
        loops.spawn(self._watch_boots(loops.stop), name="boot-watch")

    def stop(self) -> None:
        """After the loops have ended: no report goes out until the next start."""
        self._etcd = self._fence = self._loops = None
        self._qemus.close()

    def _qemu_exited(self, name: str, pid: int) -> None:
        log.info("instance '%s': its QEMU (pid %d) exited on node '%s'; reporting at once", name, pid,
                 self._cfg.node_name)
        self.soon()

    async def now(self) -> None:
        if self._etcd is None or self._isolation.active():
            return
        self._refresh_catalog()
        report = await reporter.collect(self._cfg.node_name, self._qemu, self._files, self._catalog,
                                        self._replication.busy, self._boot, self._clock)
        self._qemus.follow({name: row.get("pid") for name, row in report["instances"].items()})
        report["mirrors"] = await self._mirror_states(report["instances"])
        if self._lvm_seen is not None:
            report["lvm"], lv_volumes, lv_snaps = await self._lvm_seen.state()
            report["volumes"] += lv_volumes
            report["snapshots"].update(lv_snaps.get("snapshots", {}))  # an instance's disks are in one place
            report["snapshot_problems"] += lv_snaps.get("snapshot_problems", [])
            report["snapshot_leftovers"].update(lv_snaps.get("snapshot_leftovers", {}))
        if self.drbd is not None:
            report["drbd"] = await self.drbd.report()
            report["mirrors"].update(await self._drbd_states(self.drbd))
        if self.backups is not None:
            report.update(reporter.backups(self.backups))
        report["agent_pid"] = os.getpid()
        report["loop_lag_ms"] = self._looplag.worst_ms()
        report["load_10s"] = self._load.value()
        report["cert_serial"] = pki.own_serial(self._pki)
        if self._fence is not None:
            report["fencing"] = self._fence.report()
        report["etcd"] = await self._member.health(self._etcd)
        report["fencing_token"] = self._tokens.seen.to_str() if self._tokens.seen else None
        await self._etcd.put(model.report_key(self._cfg.node_name), model.dumps(report))

    def storage_changed(self) -> None:
        """An order ran: the next report reads the volume group again."""
        if self._lvm_seen is not None:
            self._lvm_seen.changed()

    def soon(self) -> None:
        """Publish a report soon (after an order) without making the caller wait; asked again while one is
        under way, one more follows it (hostagent.node.coalesce)."""
        if self._loops is not None:
            loops = self._loops
            self._soon.ask(lambda work: loops.spawn(work, name="report-soon"))

    async def _report_soon(self) -> None:
        try:
            await self.now()
        except EtcdError as exc:
            log.warning("could not publish this node's report: %s", exc)

    async def _mirror_states(self, running: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
        """Per running `mirror` instance whose primary is this node: each disk's mirror state."""
        states: dict[str, list[dict[str, Any]]] = {}
        for name in running:
            inst = self._replica.get_json(model.instance_key(name))
            if not inst or inst.get("disk_template") != "mirror" or inst.get("primary_node") != self._cfg.node_name:
                continue
            try:
                states[name] = await self._replication.mirror_states(name, len(inst["disks"]))
            except Exception as exc:  # noqa: BLE001 - one instance's QMP trouble must not stop the report
                log.warning("could not read the disk mirror state of instance '%s': %s", name, exc)
        return states

    async def _drbd_states(self, drbd: NodeDrbd) -> dict[str, list[dict[str, Any]]]:
        """Per drbd instance whose primary is this node, running or not: each disk's copy (its resources stay
        connected while it is stopped)."""
        states = {}
        for _, inst in self._replica.prefix_json(model.INSTANCES):
            if isinstance(inst, dict) and inst.get("disk_template") == "drbd" and inst.get("primary_node") == self._cfg.node_name:
                states[inst["name"]] = await drbd.mirror_states(inst)
        return states

    async def _watch_boots(self, stop: asyncio.Event) -> None:
        """Report at once when a guest under way boots (or times out), not at the next report."""
        while not stop.is_set():
            try:
                if self._boot.poll(self._clock.time()):
                    self.soon()
            except OSError as exc:
                log.warning("could not read a booting guest's console: %s", exc)
            try:
                await asyncio.wait_for(stop.wait(), BOOT_POLL_S)
            except asyncio.TimeoutError:
                pass

    async def _run(self, stop: asyncio.Event) -> None:
        published = None
        while not stop.is_set():
            try:
                self._member.follow(self._etcd, self._replica)
                await self.now()
                role = self._role()
                if role != published:
                    await gossip.publish_role(self._serf, role)
                    published = role
            except EtcdError as exc:
                log.warning("could not publish this node's report: %s", exc)
            except (SerfError, OSError) as exc:
                log.info("could not update this node's gossip tags yet: %s", exc)
            except Exception:  # noqa: BLE001
                log.exception("node report failed; please report this bug")
            try:
                await asyncio.wait_for(stop.wait(), self._cfg.report_interval_s)
            except asyncio.TimeoutError:
                pass
