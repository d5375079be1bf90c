"""The node side of the `mirror` template and of live migration: orders only.

On the secondary, each disk copy is served by its own qemu-storage-daemon
(storage.nbdexport) on this node's address, to the primary's certificate
only. On the primary, QEMU mirrors every disk into those exports
(kvm.blockmirror). Live migration (kvm.migration) stops at the switchover
point, so that the master can end the mirror and the secondary's export
(which holds the image lock) before the destination QEMU takes the disks.

Disk i of an instance uses port `port_base + i`; its mirror job is
`mirror<i>` and its NBD node `mirror-target<i>`. Every order is idempotent.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

from kvm import blockmirror, migration
from kvm.process import QemuManager
from kvm.qmp import Qmp
from storage import nbdexport
from storage.filedisk import FileTemplate

from hostagent import pki
from hostagent.executor import OrderError, client_identity, read_small_file

log = logging.getLogger(__name__)

Order = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
TLS_CREDS_ID = "mirror-tls"
MIGRATION_TLS_ID = "migration-tls"
PROBE_TIMEOUT_S = 2.0
MIGRATION_TIMEOUT_S = 1800.0


def job_id(index: int) -> str:
    return f"mirror{index}"


def target_node(index: int) -> str:
    return f"mirror-target{index}"


def export_name(instance: str, index: int) -> str:
    return f"{instance}-disk{index}"


class NodeReplication:
    """This node's exports, mirrors and migrations."""

    def __init__(self, node: str, address: str, qemu: QemuManager, files: FileTemplate,
                 pki_paths: pki.PkiPaths, run_dir: str) -> None:
        self._node = node
        self._address = address
        self._qemu = qemu
        self._files = files
        self._pki = pki_paths
        self._run_dir = os.path.join(run_dir, "replication")
        self._tls_dir = os.path.join(self._run_dir, "tls")
        self._previous: dict[tuple[str, int], blockmirror.MirrorState] = {}
        # QMP takes one client at a time: while a migration holds it, reports and
        # status orders use these instead of waiting for the monitor.
        self.busy: dict[str, str] = {}
        self._progress: dict[str, migration.MigrationProgress] = {}

    def orders(self) -> dict[str, Order]:
        return {
            "instance.replica-prepare": self._prepare,
            "instance.replica-export": self._export,
            "instance.replica-unexport": self._unexport,
            "instance.mirror-attach": self._attach,
            "instance.mirror-detach": self._detach,
            "instance.migrate-to-switchover": self._migrate_to_switchover,
            "instance.migrate-status": self._migrate_status,
            "instance.migrate-complete": self._migrate_complete,
            "instance.migrate-cancel": self._migrate_cancel,
        }

    def tls_dir(self) -> str:
        """This node's certificate, key and CA in QEMU's credentials layout (made on first use)."""
        return self._tls()

    def _tls(self) -> str:
        nbdexport.link_tls_dir(self._tls_dir, self._pki.ca_cert, self._pki.node_cert, self._pki.node_key)
        return self._tls_dir

    def _pidfile(self, instance: str, index: int) -> str:
        return os.path.join(self._run_dir, f"{export_name(instance, index)}.pid")

    def _qmp(self, name: str) -> Awaitable[Qmp]:
        if self._qemu.find(name) is None:
            raise ReplicationError(f"instance '{name}' is not running on node '{self._node}'")
        return Qmp.connect(self._qemu.paths(name).qmp_socket, 10.0)

    # ---- secondary -------------------------------------------------------------
    async def _prepare(self, args: dict[str, Any]) -> dict[str, Any]:
        """Blank disk copies of the right size: the mirror's first full sync fills them."""
        name, created = args["name"], []
        for disk in args["disks"]:
            path = self._files.path(name, disk["index"], disk["format"])
            if not os.path.exists(path):
                await self._files.create(name, disk["index"], disk["size_mib"], disk["format"])
                created.append(disk["index"])
        return {"created": created}

    async def _export(self, args: dict[str, Any]) -> dict[str, Any]:
        """Serve each disk to `client` only; an export left serving another client is restarted."""
        name, tls, client = args["name"], self._tls(), args["client"]
        pids = []
        for disk in args["disks"]:
            pidfile = self._pidfile(name, disk["index"])
            served_to = pidfile + ".client"
            if nbdexport.is_running(pidfile) and read_small_file(served_to) != client:
                log.info("disk %d of '%s': export was for node %s, restarting it for node '%s'",
                         disk["index"], name, read_small_file(served_to) or "unknown", client)
                await nbdexport.stop_export(pidfile)
            spec = nbdexport.NbdExportSpec(
                image_path=self._files.path(name, disk["index"], disk["format"]), fmt=disk["format"],
                host=self._address, port=int(args["port_base"]) + disk["index"],
                export_name=export_name(name, disk["index"]), pidfile=pidfile,
                tls_dir=tls, client_identity=client_identity(client))
            pids.append(await nbdexport.start_export(spec))
            with open(served_to, "w") as fh:
                fh.write(client)
        return {"pids": pids}

    async def _unexport(self, args: dict[str, Any]) -> dict[str, Any]:
        stopped = []
        for disk in args["disks"]:
            pidfile = self._pidfile(args["name"], disk["index"])
            stopped.append(await nbdexport.stop_export(pidfile))
            if os.path.exists(pidfile + ".client"):
                os.unlink(pidfile + ".client")
        return {"stopped": stopped}

    # ---- primary ------------------------------------------------------------------
    async def _attach(self, args: dict[str, Any]) -> dict[str, Any]:
        """Mirror every disk to the secondary's exports (a full copy the first time)."""
        name, host, base = args["name"], args["host"], int(args["port_base"])
        for disk in args["disks"]:
            await _probe(host, base + disk["index"])
        tls = self._tls()
        async with await self._qmp(name) as qmp:
            for disk in args["disks"]:
                i = disk["index"]
                job = await blockmirror.mirror_state(qmp, job_id(i))
                if job.status in ("failed", "stopped"):
                    await blockmirror.stop_mirror(qmp, job_id(i), target_node(i))
                    await blockmirror.remove_nbd_target(qmp, target_node(i), TLS_CREDS_ID)
                await blockmirror.add_nbd_target(qmp, target_node(i), host, base + i, export_name(name, i),
                                                 TLS_CREDS_ID, tls)
                await blockmirror.start_mirror(qmp, f"disk{i}", target_node(i), job_id(i),
                                               rate_limit_mib_s=float(args.get("rate_limit_mib_s", 0)))
        return {}

    async def _detach(self, args: dict[str, Any]) -> dict[str, Any]:
        """End the mirrors; `complete` says whether every secondary copy is whole."""
        name = args["name"]
        if self._qemu.find(name) is None:
            return {"complete": False}
        complete = True
        async with await self._qmp(name) as qmp:
            for disk in args["disks"]:
                i = disk["index"]
                complete &= await blockmirror.stop_mirror(qmp, job_id(i), target_node(i))
                await blockmirror.remove_nbd_target(qmp, target_node(i), TLS_CREDS_ID)
        return {"complete": complete}

    async def mirror_states(self, name: str, disk_count: int) -> list[dict[str, Any]]:
        """Each disk's mirror as the report shows it; [] when this instance mirrors nothing."""
        states: list[dict[str, Any]] = []
        if name in self.busy:
            return states
        async with await self._qmp(name) as qmp:
            for i in range(disk_count):
                state = await blockmirror.mirror_state(qmp, job_id(i), self._previous.get((name, i)))
                self._previous[(name, i)] = state
                if state.status != "absent":
                    states.append({"index": i, "status": state.status, "percent": round(state.percent, 1),
                                   "eta_s": state.eta_s, "remaining_mib": state.remaining_bytes // 2**20,
                                   "error": state.error})
        return states

    # ---- migration --------------------------------------------------------------------
    async def _migrate_to_switchover(self, args: dict[str, Any]) -> dict[str, Any]:
        """Send the RAM; at the pause before switchover, end the mirrors (the guest is paused)."""
        name = args["name"]
        uri = migration.migration_uri(args["host"], int(args["port"]))
        self.busy[name] = "migrating"
        self._progress.pop(name, None)
        tls = self._tls()
        try:
            async with await self._qmp(name) as qmp:
                await migration.use_tls(qmp, MIGRATION_TLS_ID, tls)
                progress = await migration.migrate_to_switchover(
                    qmp, uri, float(args.get("max_bandwidth_mib_s", 1024)),
                    lambda p: self._progress.__setitem__(name, p),
                    float(args.get("timeout_s", MIGRATION_TIMEOUT_S)))
                self._progress[name] = progress
                complete = True
                for disk in args["disks"]:
                    i = disk["index"]
                    complete &= await blockmirror.stop_mirror(qmp, job_id(i), target_node(i))
                    await blockmirror.remove_nbd_target(qmp, target_node(i), TLS_CREDS_ID)
        finally:
            self.busy.pop(name, None)
        if not complete:
            raise ReplicationError(f"instance '{name}': the secondary's disk copy was not in sync at the "
                                   "switchover; cancel the migration")
        return {"transferred_mib": progress.transferred_mib, "elapsed_s": progress.elapsed_s}

    async def _migrate_status(self, args: dict[str, Any]) -> dict[str, Any]:
        """The last sample the running migration took (QMP is busy with it)."""
        p = self._progress.get(args["name"])
        if p is None:
            return {"status": "starting"}
        return {"status": p.status, "transferred_mib": p.transferred_mib, "remaining_mib": p.remaining_mib,
                "total_mib": p.total_mib, "throughput_mib_s": p.throughput_mib_s, "eta_s": p.eta_s}

    async def _migrate_complete(self, args: dict[str, Any]) -> dict[str, Any]:
        """Switch over, then quit the paused source QEMU (the guest now runs on the destination)."""
        name = args["name"]
        async with await self._qmp(name) as qmp:
            result = await migration.complete_switchover(qmp)
        await self._qemu.stop(name, timeout_s=0, force=True)
        self._qemu.cleanup(name)
        return {"downtime_ms": result.downtime_ms, "total_s": result.total_s,
                "transferred_mib": result.transferred_mib, "throughput_mib_s": result.throughput_mib_s}

    async def _migrate_cancel(self, args: dict[str, Any]) -> dict[str, Any]:
        if self._qemu.find(args["name"]) is None:
            return {"status": "not-running"}
        async with await self._qmp(args["name"]) as qmp:
            return {"status": await migration.cancel_migration(qmp)}


class ReplicationError(OrderError):
    """An order about replication this node cannot carry out; the message is for the operator."""


async def _probe(host: str, port: int) -> None:
    """QEMU connects synchronously: an absent export must fail here, not hold QMP."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), PROBE_TIMEOUT_S)
    except (OSError, TimeoutError) as exc:
        raise ReplicationError(f"the secondary's disk export at {host}:{port} does not answer ({exc}); "
                               "is its node up?") from exc
    writer.close()
    await writer.wait_closed()
