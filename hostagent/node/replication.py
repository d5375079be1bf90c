"""The node side of the `mirror` template and of live migration: orders and the guard.

On the secondary, each disk copy is served by its own qemu-storage-daemon
(kvm.nbdexport) on this node's address, to the primary's certificate
only. On the primary, each disk is a quorum of the local image and the
secondary's export (kvm.blockmirror): a mirror job makes the copy, and the
guard joins it to the quorum once it has converged. Live migration
(kvm.migration) stops at the switchover point, so that the master can end
the mirror and the secondary's export (which holds the image lock) before
the destination QEMU takes the disks.

The guard (one task per replicated instance running here, on QEMU's second
monitor) is DRBD's resource fencing done through the cluster store: when a
write fails on the secondary, QEMU pauses the guest with that write held;
the guard asks the master to record the copy out of date, and only once
that is committed does it drop the copy from the quorum and resume the
guest. A node cut off from the master never gets that far: its guest stays
paused until self-fencing stops it, and the copy it could not reach still
has every write the guest was told was done.

Disk i of an instance uses port `port_base + i`; its mirror job is
`mirror<i>` and its NBD node `mirror-target<i>`. Every order is idempotent.
Each attach carries the master's generation of the copy (`gen`): reports
and outdate requests name it, so the master never takes a stale report
for the copy it asked for.

Over 400 lines: the orders and the guard share each instance's mirror state, which lives here only.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

from kvm import blockmirror, blockresync, migration, nbdexport
from kvm.process import QemuManager
from kvm.qmp import Qmp, QmpError
from hostagent import pki
from hostagent.clock import SYSTEM, Clock
from hostagent.node.disks import NodeDisks
from hostagent.node.executor import Order, OrderError, client_identity, read_small_file
from hostagent.node.resync import Resyncs

log = logging.getLogger(__name__)

# (path, body) -> True once the master answered 200: how the guard reaches the master
TellMaster = Callable[[str, dict[str, Any]], Awaitable[bool]]
TLS_CREDS_ID = "mirror-tls"
MIGRATION_TLS_ID = "migration-tls-out"  # not the incoming side's "migration-tls" (server): a QEMU that arrived by migration has that one
PROBE_TIMEOUT_S = 2.0
NBD_GREETING = b"NBDMAGICIHAVEOPT"  # what an NBD server sends first (newstyle negotiation)
MIGRATION_TIMEOUT_S = 1800.0
GUARD_SYNC_POLL_S = 0.3  # while a copy is being made: how often the guard looks for convergence
GUARD_JOINED_POLL_S = 1.0  # while a copy is joined: how often it looks for writes stuck on it
GUARD_IDLE_POLL_S = 5.0  # otherwise (events wake it at once)
HUNG_AFTER_S = 5.0  # a guest request waiting this long with none completing: the copy hangs, cut it
OUTDATE_RETRY_S = 0.3
OUTDATED_PATH = "/v1/node/replica-outdated"
RESUMED_PATH = "/v1/node/replica-resumed"


def job_id(index: int) -> str:
    return f"mirror{index}"


def target_node(index: int) -> str:
    return f"mirror-target{index}"


def export_name(instance: str, index: int) -> str:
    return f"{instance}-disk{index}"


class NodeReplication:
    """This node's exports, mirrors and migrations."""

    def __init__(self, node: str, address: str, qemu: QemuManager, disks: NodeDisks,
                 pki_paths: pki.PkiPaths, run_dir: str, clock: Clock = SYSTEM) -> None:
        """`disks`: the mirror's copies are files; an instance move also exports logical volumes."""
        self._node = node
        self._clock = clock
        self._address = address
        self._qemu = qemu
        self._disks = disks
        self._files = disks.files
        self._pki = pki_paths
        self._run_dir = os.path.join(run_dir, "replication")
        self._tls_dir = os.path.join(self._run_dir, "tls")
        self._previous: dict[tuple[str, int], blockmirror.MirrorState] = {}
        # QMP takes one client at a time: while a migration holds it, reports and
        # status orders use these instead of waiting for the monitor.
        self.busy: dict[str, str] = {}
        self._progress: dict[str, migration.MigrationProgress] = {}
        self.tell_master: TellMaster | None = None
        self.joined: Callable[[], None] = lambda: None  # a copy joined its quorum: report now, not at the next tick
        self._guards: dict[str, asyncio.Task[None]] = {}
        self._disk_counts: dict[str, int] = {}  # instance -> how many disks its guard watches
        self._locks: dict[str, asyncio.Lock] = {}
        self.last_degraded: dict[str, dict[str, Any]] = {}
        # instance -> disk -> recent (time, virtqueue progress) samples, for hung copies
        self._queues: dict[str, dict[int, list[tuple[float, tuple[tuple[int, int], ...]]]]] = {}
        self.resyncs = Resyncs(self._run_dir, clock)

    def _gen_path(self, name: str) -> str:
        return os.path.join(self._run_dir, f"{name}.gen")

    def gen(self, name: str) -> int:
        """The master's generation of the copy this node mirrors to (0: none known)."""
        raw = read_small_file(self._gen_path(name))
        return int(raw) if raw and raw.isdigit() else 0

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    def orders(self) -> dict[str, Order]:
        return {
            "instance.replica-prepare": self._prepare,
            "instance.replica-export": self._export,
            "instance.replica-unexport": self._unexport,
            "instance.mirror-attach": self._attach,
            "instance.mirror-detach": self._detach,
            "instance.mirror-rate": self._set_rate,
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

    def _trust_digest(self) -> str:
        with open(self._pki.ca_cert, "rb") as fh:
            return hashlib.sha256(fh.read()).hexdigest()[:16]

    def _pidfile(self, instance: str, index: int) -> str:
        return os.path.join(self._run_dir, f"{export_name(instance, index)}.pid")

    def _qmp(self, name: str) -> Awaitable[Qmp]:
        if self._qemu.find(name) is None:
            raise ReplicationError(f"instance '{name}' is not running on node '{self._node}'")
        return Qmp.connect(self._qemu.paths(name).qmp_socket, 2 * self._qemu.qmp_timeout_s)

    # ---- secondary -------------------------------------------------------------
    async def _prepare(self, args: dict[str, Any]) -> dict[str, Any]:
        """Blank disk copies of the right size: the mirror's first full sync fills them."""
        name, created = args["name"], []
        for disk in args["disks"]:
            path = self._files.path(name, disk["index"], disk["format"])
            if not os.path.exists(path):
                self.resyncs.disown(path)
                await self._files.create(name, disk["index"], disk["size_mib"], disk["format"])
                created.append(disk["index"])
        return {"created": created}

    async def _export(self, args: dict[str, Any]) -> dict[str, Any]:
        """Serve each disk to `client` only; an export left serving another client is restarted. Args also
        `disk_template` (an instance move's: its disks may be logical volumes; else files)."""
        name, tls, client = args["name"], self._tls(), args["client"]
        template = self._disks.of(args.get("disk_template"))
        # An export reads its CAs once, at start: one started before `rotate-secrets --new-ca`
        # changed them would refuse the primary's new certificate, or keep trusting a retired CA.
        served = f"{client} {self._trust_digest()}"
        pids, copies = [], {}
        for disk in args["disks"]:
            image = template.path(name, disk["index"], disk["format"])
            if args.get("disk_template") is None:  # the mirror's own copy, not a move's
                copies[str(disk["index"])] = self.resyncs.copy_id(image)
            pidfile = self._pidfile(name, disk["index"])
            served_to = pidfile + ".client"
            if nbdexport.is_running(pidfile) and read_small_file(served_to) != served:
                was, _, trust = (read_small_file(served_to) or "unknown").partition(" ")
                log.info("disk %d of '%s': export was for node %s%s, restarting it for node '%s'",
                         disk["index"], name, was, "" if was != client else " with other cluster CAs", client)
                await nbdexport.stop_export(pidfile)
            spec = nbdexport.NbdExportSpec(
                image_path=image, fmt=disk["format"],
                protocol=self._disks.protocol(args.get("disk_template")),
                host=self._address, port=int(args["port_base"]) + disk["index"],
                export_name=export_name(name, disk["index"]), pidfile=pidfile,
                tls_dir=tls, client_identity=client_identity(client))
            pids.append(await nbdexport.start_export(spec))
            with open(served_to, "w") as fh:
                fh.write(served)
        return {"pids": pids, "copies": copies}

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
        """Mirror every disk not joined yet to the secondary's exports: only the writes this QEMU recorded
        since that very copy left (`copies`: the id of the copy each export holds, hostagent.node.resync),
        else a full copy. The copy's generation is recorded only once each of those has a mirror: a report
        naming it while a disk (one just hot-plugged) had none yet would show every disk it lists joined,
        and the master would judge the copy in sync. Returns how each disk is being copied."""
        name, host, base = args["name"], args["host"], int(args["port_base"])
        copies = {int(k): str(v) for k, v in (args.get("copies") or {}).items()}
        rate = float(args.get("rate_limit_mib_s", 0))
        modes: dict[str, str] = {}
        os.makedirs(self._run_dir, exist_ok=True)
        self.ensure_guard(name, len(args["disks"]))
        async with self._lock(name), await self._qmp(name) as qmp:
            todo = [d for d in args["disks"]
                    if not (await blockmirror.peer_state(qmp, d["index"], target_node(d["index"]))).joined]
        for disk in todo:
            await probe_export(host, base + disk["index"])
        tls = self._tls()
        async with self._lock(name), await self._qmp(name) as qmp:
            for disk in todo:
                i = disk["index"]
                job = await blockmirror.mirror_state(qmp, job_id(i))
                if job.status in ("failed", "stopped"):
                    await blockmirror.stop_mirror(qmp, job_id(i), target_node(i))
                    await blockmirror.remove_nbd_target(qmp, target_node(i), TLS_CREDS_ID)
                await blockmirror.add_nbd_target(qmp, target_node(i), host, base + i, export_name(name, i),
                                                 TLS_CREDS_ID, tls)
                if job.status in ("absent", "failed", "stopped"):
                    only = await self.resyncs.begin(qmp, name, i, copies.get(i), target_node(i), rate)
                    if only is not None:
                        modes[str(i)] = f"only the {only} written since it left" if only else "catching up"
                        continue
                await blockmirror.start_mirror(qmp, f"disk{i}", target_node(i), job_id(i), rate_limit_mib_s=rate)
                modes[str(i)] = "full copy"
            with open(self._gen_path(name), "w") as fh:
                fh.write(str(int(args.get("gen", 0))))
        return {"modes": modes}

    async def _set_rate(self, args: dict[str, Any]) -> dict[str, Any]:
        """The master shares the cluster's copy rate anew (hostagent.master.decide.syncpace): each disk's copy
        under way here, a mirror job or an incremental resync, goes on at `rate_mib_s` (0: no limit).
        Returns the disks it changed; none while the instance is not running here or a migration holds QMP."""
        name, rate = args["name"], float(args["rate_mib_s"])
        changed: list[int] = []
        if self._qemu.find(name) is None or name in self.busy:
            return {"changed": changed}
        async with self._lock(name), await self._qmp(name) as qmp:
            for disk in args["disks"]:
                i = disk["index"]
                if await self.resyncs.set_rate(qmp, name, i, rate) or await blockmirror.set_speed(qmp, job_id(i), rate):
                    changed.append(i)
        return {"changed": changed}

    async def _detach(self, args: dict[str, Any]) -> dict[str, Any]:
        """Drop the secondary's copy (the master recorded it out of date first) and resume
        a guest paused on it; `complete` says whether every copy was joined until now."""
        name = args["name"]
        if self._qemu.find(name) is None:
            return {"complete": False}
        async with self._lock(name), await self._qmp(name) as qmp:
            complete = await self._drop_copies(qmp, name, [d["index"] for d in args["disks"]])
        return {"complete": complete}

    async def _drop_copies(self, qmp: Qmp, name: str, indexes: list[int]) -> bool:
        complete = True
        for i in indexes:
            if self.resyncs.active(name, i):  # a copy being caught up: its record keeps what it lacks
                await blockmirror.break_target(qmp, target_node(i))
                await self.resyncs.stop(qmp, name, i)
            if (await blockmirror.mirror_state(qmp, job_id(i))).status != "absent":
                await blockmirror.stop_mirror(qmp, job_id(i), target_node(i))  # a copy still being made
            if (await blockmirror.peer_state(qmp, i, target_node(i))).joined:
                await self.resyncs.before_leave(qmp, name, i)
            complete &= await blockmirror.leave_peer(qmp, i, target_node(i))
            await blockmirror.remove_nbd_target(qmp, target_node(i), TLS_CREDS_ID)
        if await qmp.status() == "io-error":
            await qmp.execute("cont")
            log.info("instance '%s' resumed on its local copy alone", name)
        return complete

    # ---- the guard ----------------------------------------------------------------------
    def ensure_guard(self, name: str, disk_count: int) -> None:
        """Watch this replicated instance's `disk_count` disks (idempotent; the count follows disks hot-plugged
        or unplugged); ends by itself when its QEMU is gone."""
        self._disk_counts[name] = disk_count
        task = self._guards.get(name)
        if task is None or task.done():
            self._guards[name] = asyncio.get_running_loop().create_task(self._guard(name))

    async def _guard(self, name: str) -> None:
        socket = self._qemu.paths(name).guard_socket
        while self._qemu.find(name) is not None and os.path.exists(socket):
            try:
                async with await Qmp.connect(socket, 10.0) as qmp:
                    while self._qemu.find(name) is not None:
                        poll = GUARD_IDLE_POLL_S
                        if name not in self.busy:
                            async with self._lock(name):
                                poll = await self._guard_pass(qmp, name, self._disk_counts[name])
                        await qmp.next_event(poll)
            except (QmpError, blockmirror.MirrorError) as exc:
                log.debug("replication guard of '%s': %s", name, exc)
            except Exception:  # noqa: BLE001 - the guard must outlive one bad pass
                log.exception("replication guard of '%s' failed; please report this bug", name)
            await asyncio.sleep(1.0)
        self._guards.pop(name, None)

    async def _guard_pass(self, qmp: Qmp, name: str, disk_count: int) -> float:
        """One look: outdate and resume if a write is held, cut a copy writes hang on, join converged
        copies; returns how soon to look again."""
        states = [await blockmirror.peer_state(qmp, i, target_node(i)) for i in range(disk_count)]
        if any(s.blocked for s in states):
            await self._outdate_and_resume(qmp, name, disk_count)
            return GUARD_IDLE_POLL_S
        poll = GUARD_IDLE_POLL_S
        for i, state in enumerate(states):
            if state.joined:
                poll = min(poll, GUARD_JOINED_POLL_S)
                await self._watch_queues(qmp, name, i)
                continue
            self._queues.get(name, {}).pop(i, None)
            if self.resyncs.active(name, i):
                poll = min(poll, await self.resyncs.step(qmp, name, i, target_node(i)))
                if self.resyncs.active(name, i):
                    continue
                if (await blockmirror.peer_state(qmp, i, target_node(i))).joined:
                    self.joined()
                else:
                    await blockmirror.remove_nbd_target(qmp, target_node(i), TLS_CREDS_ID)  # failed: attach anew
                continue
            job = await blockmirror.mirror_state(qmp, job_id(i))
            if job.status == "converged" and await blockmirror.join_peer(qmp, i, job_id(i), target_node(i)) is not None:
                self.joined()
            if job.status in ("syncing", "resyncing", "converged"):
                poll = min(poll, GUARD_SYNC_POLL_S)
        return poll

    async def _watch_queues(self, qmp: Qmp, name: str, index: int) -> None:
        """Cut the joined copy of disk `index` when guest writes have waited HUNG_AFTER_S on it: the
        failed writes then pause the guest, and the outdate follows as for any failed write."""
        progress = await blockmirror.queue_progress(qmp, index)
        if progress is None or await qmp.status() != "running":
            self._queues.get(name, {}).pop(index, None)
            return
        now = self._clock.monotonic()
        samples = self._queues.setdefault(name, {}).setdefault(index, [])
        samples.append((now, progress))
        del samples[:-30]
        since = blockmirror.stuck_since(samples)
        if since is not None and now - since >= HUNG_AFTER_S:
            log.warning("instance '%s': guest writes have waited %.0f s on the copy of disk %d on its secondary: "
                        "cutting that connection", name, now - since, index)
            await blockmirror.break_target(qmp, target_node(index))
            samples.clear()

    async def _outdate_and_resume(self, qmp: Qmp, name: str, disk_count: int) -> None:
        """The secondary failed a write the guest waits for: outdate its copy, then go on alone."""
        began, gen, pid = self._clock.monotonic(), self.gen(name), self._qemu.find(name)
        reason = "the secondary's copy did not take a write"
        log.warning("instance '%s' is paused on a write its secondary did not take: asking the master to "
                    "record that copy out of date before the guest goes on", name)
        tries = 0
        while not await self._tell(OUTDATED_PATH, {"name": name, "gen": gen, "reason": reason}):
            tries += 1
            if self._qemu.find(name) != pid:  # this QEMU is gone (stopped, or restarted as another)
                return
            if tries == 1:
                log.warning("instance '%s' stays paused: the master cannot be told that its secondary's copy is "
                            "out of date (cut off? the node fences itself if its lease runs out)", name)
            await asyncio.sleep(OUTDATE_RETRY_S)
        await self._drop_copies(qmp, name, list(range(disk_count)))
        pause_ms = round((self._clock.monotonic() - began) * 1000)
        event = {"at": self._clock.time(), "pause_ms": pause_ms, "reason": reason, "gen": gen}
        self.last_degraded[name] = event
        log.warning("instance '%s' runs degraded on node '%s' (its secondary's copy is out of date); "
                    "guest paused %d ms for the record", name, self._node, pause_ms)
        await self._tell(RESUMED_PATH, {"name": name, **event})

    async def _tell(self, path: str, body: dict[str, Any]) -> bool:
        if self.tell_master is None:
            return False
        try:
            return await asyncio.wait_for(self.tell_master(path, body), 5.0)
        except (TimeoutError, ConnectionError, OSError) as exc:
            log.debug("telling the master %s: %s", path, exc)
            return False

    async def mirror_states(self, name: str, disk_count: int) -> list[dict[str, Any]]:
        """Each disk's mirror as the report shows it; [] when this instance mirrors nothing."""
        states: list[dict[str, Any]] = []
        if name in self.busy:
            return states
        self.ensure_guard(name, disk_count)
        gen = self.gen(name)
        async with await self._qmp(name) as qmp:
            for i in range(disk_count):
                peer = await blockmirror.peer_state(qmp, i, target_node(i))
                if peer.joined:
                    states.append({"index": i, "status": "blocked" if peer.blocked else "in_sync", "percent": 100.0,
                                   "eta_s": 0.0, "remaining_mib": 0, "error": "", "gen": gen,
                                   "last_sync": self.resyncs.last.get((name, i))})
                    continue
                catching_up = self.resyncs.state(name, i)
                if catching_up is not None:
                    states.append({"index": i, **catching_up, "gen": gen})
                    continue
                previous = self._previous.get((name, i))
                state = await blockmirror.mirror_state(qmp, job_id(i), previous)
                self._previous[(name, i)] = state
                if state.status != "absent":
                    states.append({"index": i, "status": state.status, "percent": round(state.percent, 1),
                                   "eta_s": state.eta_s, "remaining_mib": state.remaining_bytes // 2**20,
                                   "rate_mib_s": blockmirror.rate_mib_s(state),
                                   "error": state.error, "gen": gen})
        return states

    async def started(self, inst: dict[str, Any], args: dict[str, Any]) -> None:
        """A QEMU of this replicated instance started here: its images are a guest's now, not a secondary's
        copy. One waiting for a migration writes nothing unless it switches over (a cancelled migration
        leaves the copy as it was); it records its writes from the start for the copy `track_copy` (the
        source's images once it switched over)."""
        name = inst["name"]
        self.resyncs.forget_instance(name)
        for disk in inst["disks"] if not args.get("incoming") else []:
            self.resyncs.disown(self._files.path(name, disk["index"], disk["format"]))
        if args.get("track_copy"):
            try:
                async with self._lock(name), await self._qmp(name) as qmp:
                    for disk in inst["disks"]:
                        await blockresync.track(qmp, disk["index"], str(args["track_copy"]))
            except (QmpError, blockmirror.MirrorError) as exc:  # no record: the copy made later is a full one
                log.warning("instance '%s': cannot record its writes for the copy it leaves behind (%s); "
                            "a full copy follows the migration", name, exc)

    # ---- migration --------------------------------------------------------------------
    async def _migrate_to_switchover(self, args: dict[str, Any]) -> dict[str, Any]:
        """Send the RAM; at the pause before switchover, end the mirrors (the guest is paused)."""
        name = args["name"]
        uri = migration.migration_uri(args["host"], int(args["port"]))
        self.busy[name] = "migrating"
        self._progress.pop(name, None)
        tls = self._tls()
        try:
            async with self._lock(name), await self._qmp(name) as qmp:
                await migration.use_tls(qmp, MIGRATION_TLS_ID, tls)
                progress = await migration.migrate_to_switchover(
                    qmp, uri, float(args.get("max_bandwidth_mib_s", 1024)),
                    lambda p: self._progress.__setitem__(name, p),
                    float(args.get("timeout_s", MIGRATION_TIMEOUT_S)))
                self._progress[name] = progress
                paused_at = self._clock.monotonic()
                complete = True
                for disk in args["disks"]:  # the guest is paused and drained: a joined copy is whole
                    i = disk["index"]
                    if (await blockmirror.peer_state(qmp, i, target_node(i))).joined:
                        await self.resyncs.before_leave(qmp, name, i)  # resumed here if the migration fails
                    if not await blockmirror.leave_peer(qmp, i, target_node(i), gentle=True):
                        complete &= await blockmirror.stop_mirror(qmp, job_id(i), target_node(i))
                    await blockmirror.remove_nbd_target(qmp, target_node(i), TLS_CREDS_ID)
                ended_ms = round((self._clock.monotonic() - paused_at) * 1000)
        finally:
            self.busy.pop(name, None)
        if not complete:
            raise ReplicationError(f"instance '{name}': the secondary's disk copy was not in sync at the "
                                   "switchover; cancel the migration")
        return {"transferred_mib": progress.transferred_mib, "elapsed_s": progress.elapsed_s,
                "mirrors_ended_ms": ended_ms}

    async def _migrate_status(self, args: dict[str, Any]) -> dict[str, Any]:
        """The last sample the running migration took (QMP is busy with it)."""
        p = self._progress.get(args["name"])
        if p is None:
            return {"status": "starting"}
        return {"status": p.status, "transferred_mib": p.transferred_mib, "remaining_mib": p.remaining_mib,
                "total_mib": p.total_mib, "throughput_mib_s": p.throughput_mib_s, "eta_s": p.eta_s}

    async def _migrate_complete(self, args: dict[str, Any]) -> dict[str, Any]:
        """Switch over, then quit the paused source QEMU (the guest now runs on the destination). With
        `copy`: the images left here equal the destination's at the switchover, and are that copy, whose
        writes the destination records since (hostagent.node.resync)."""
        name = args["name"]
        async with await self._qmp(name) as qmp:
            result = await migration.complete_switchover(qmp)
        await self._qemu.stop(name, timeout_s=0, force=True)
        self._qemu.cleanup(name)
        self.resyncs.forget_instance(name)
        if args.get("copy"):
            for disk in args.get("disks", []):
                self.resyncs.claim(self._files.path(name, disk["index"], disk["format"]), str(args["copy"]))
        return {"downtime_ms": result.downtime_ms, "total_s": result.total_s,
                "transferred_mib": result.transferred_mib, "throughput_mib_s": result.throughput_mib_s}

    async def _migrate_cancel(self, args: dict[str, Any]) -> dict[str, Any]:
        if self._qemu.find(args["name"]) is None:
            return {"status": "not-running"}
        async with await self._qmp(args["name"]) as qmp:
            return {"status": await migration.cancel_migration(qmp)}


class ReplicationError(OrderError):
    """An order about replication this node cannot carry out; the message is for the operator."""


async def probe_export(host: str, port: int, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """QEMU connects and negotiates synchronously, its main loop (QMP, the guest's console and disk) waiting
    with it: an export that is absent, or that accepts the connection but never answers (its process hung or
    stopped, the kernel still accepting for it), must fail here and not hold the primary's QEMU. A live export
    greets first, in the clear, before any TLS."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
    except (OSError, TimeoutError) as exc:
        raise ReplicationError(f"the secondary's disk export at {host}:{port} does not answer ({exc}); "
                               "is its node up?") from exc
    try:
        greeting = await asyncio.wait_for(reader.readexactly(len(NBD_GREETING)), timeout_s)
    except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
        raise ReplicationError(f"the secondary's disk export at {host}:{port} accepts connections but does not "
                               f"greet within {timeout_s:g} s (its process hung or stopped?)") from exc
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    if greeting != NBD_GREETING:
        raise ReplicationError(f"what answers at {host}:{port} is not a disk export (it greeted {greeting!r})")
