"""The master's side of replicated disks: protect, migrate, fail over, keep mirrors running.

A `mirror` instance's primary QEMU mirrors each disk into the secondary's
NBD exports (hostagent.node.replication). The master sets that up after every
start ("protect"), moves the instance with live migration or failover, and
its duty (hostagent.master.duties.mirrors) restarts a mirror that is not running
(secondary back after an outage, agent restarted) and records in the config whether
the secondary's copy is in sync: failover trusts that record, since the
primary's reports stop when the primary dies. That record lives apart from
the instance (hostagent.master.decide.replicas): a copy is recorded out of date before
anything lets the guest write without it (a start, a switchover, a detach),
and in sync only from a primary's report that shows it joined.

Over 400 lines: protect, migrate and fail over share the replica record and its ordering rules, kept together.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any

from election.etcd import Compare, Op
from kvm.migration import migration_uri

from hostagent import model
from hostagent.master import cdrom, drbdsteps, pending
from hostagent.master.decide import replicas
from hostagent.master.decide.checks import PORTS_PER_INSTANCE
from hostagent.master.decide.restarts import Event
from hostagent.errors import BadRequest
from hostagent.master.jobs import JobContext, JobFailed
from hostagent.master.store import Store
from hostagent.status import report_fresh
from hostagent.status import describe_mirrors, eta_words

log = logging.getLogger(__name__)

MIGRATE_POLL_S = 1.0


class Moves:
    """Jobs and steps for replicated instances, through the master's store (hostagent.master.store)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        # MiB/s for a new copy of an instance (all its disks), given the cluster's cap: the mirror duty's
        # pacing (hostagent.master.duties.mirrors) shares the cap among the copies through the same nodes.
        self.copy_rate: Callable[[Mapping[str, Any], float], float] = lambda inst, cap: cap

    def handlers(self) -> dict[str, Any]:
        return {"instance.migrate": self._job_migrate, "instance.failover": self._job_failover}

    async def check(self, name: str, verb: str) -> None:
        """Before a migrate or failover job exists: the instance must have a second copy."""
        inst = await self.store.instance(name)
        try:
            self._replicated(inst, verb)
        except JobFailed as exc:
            raise BadRequest(str(exc)) from None
        await cdrom.check_target(self.store, inst, str(inst["secondary_node"]), verb)

    # ---- helpers -------------------------------------------------------------------
    async def _node(self, name: str) -> dict[str, Any]:
        node = await self.store.get(model.node_key(name))
        if node is None:
            raise JobFailed(f"node '{name}' is not in the cluster")
        return node

    async def alive(self, name: str) -> bool:
        report = await self.store.get(model.report_key(name))
        return report_fresh(report, self.store.clock.time())

    def _replicated(self, inst: dict[str, Any], verb: str) -> str:
        if inst.get("disk_template") not in model.REPLICATED or not inst.get("secondary_node"):
            raise JobFailed(f"cannot {verb} instance '{inst['name']}': its disks ({inst.get('disk_template')}) "
                            "are not replicated to a second node; use `corral instance move` while it is stopped")
        return str(inst["secondary_node"])

    async def _set_nodes(self, inst: dict[str, Any], primary: str, secondary: str, home: str | None = None) -> None:
        """`home`: the node an automatic failover took it from, for a later failback (else none)."""
        inst.update(primary_node=primary, secondary_node=secondary, mtime=self.store.clock.time(), home_node=home)
        inst.pop("replica_in_sync", None)
        await self.store.write([Op.put(model.instance_key(inst["name"]), model.dumps(inst))])

    # ---- the replica record (hostagent.master.decide.replicas) ------------------------------------------
    async def replica(self, name: str) -> tuple[dict[str, Any], int]:
        """The record straight from etcd, and its revision (0: none yet)."""
        kv = await self.store.role.client.get(model.replica_key(name))
        if kv is None:
            return {"name": name}, 0
        return {**model.loads(kv.value), "name": name}, kv.mod_revision

    async def outdate(self, name: str, why: str, copy_on: str | None = None, gen: int | None = None) -> None:
        """Record the secondary's copy out of date (committed when this returns); an event when it was in sync.

        `copy_on`: the node holding the copy, when it is not (yet) the recorded secondary (a switchover).
        `gen`: the generation a primary asks about; an older one than recorded changes nothing (a late retry
        must not end the generation of the copy made since, which would then never count as in sync)."""
        record, _ = await self.replica(name)
        if replicas.already_outdated(record, gen):
            log.info("instance '%s': a late request to outdate copy generation %s (now %s) changes nothing",
                     name, gen, record.get("gen"))
            return
        now = self.store.clock.time()
        ops = [Op.put(model.replica_key(name), model.dumps(replicas.outdated(record, why, now)))]
        events: list[Event] = []
        if record.get("in_sync"):
            inst = await self.store.get(model.instance_key(name)) or {}
            secondary = copy_on or inst.get("secondary_node") or "?"
            message = f"the copy of instance '{name}' on node '{secondary}' is out of date: {why}"
            events = [Event(name, secondary, "copy-outdated", message)]
        await self.store.write(ops, events=events, now=now)

    async def resumed(self, name: str, event: dict[str, Any]) -> None:
        """Keep the primary's account of its last degraded resume (the guest's pause), for `instance info`."""
        record, revision = await self.replica(name)
        await self.put_if_unchanged(name, {**record, "last_degraded": event}, revision)

    async def put_if_unchanged(self, name: str, record: dict[str, Any], revision: int) -> bool:
        key = model.replica_key(name)
        token = self.store.role.token
        if token is None:
            return False
        result = await self.store.role.lease.guarded_txn(token, [Op.put(key, model.dumps(record))],
                                                         extra_compares=[Compare.mod_revision(key, "=", revision)])
        return bool(result.succeeded)

    async def start_order(self, node: str, inst: dict[str, Any], hv: dict[str, Any]) -> dict[str, Any]:
        """`instance.start` on `node`; a replicated guest then writes without a copy until one joins,
        so its copy is recorded out of date first. Changes pending for the next start are made first."""
        if inst.get("pending"):
            hv = await self._apply_pending(inst)
        if inst.get("disk_template") in model.QUORUM_MIRRORED and inst.get("secondary_node"):
            await self.outdate(inst["name"], f"started on node '{node}' without its copy (a new one follows)")
        return await self.store.order(node, "instance.start", {"instance": inst, "hvparams": hv})

    async def _apply_pending(self, inst: dict[str, Any]) -> dict[str, Any]:
        """Make `inst`'s pending changes current (in the config and in `inst`); its hypervisor parameters."""
        current = await self.store.get(model.instance_key(inst["name"])) or inst
        applied, changed = pending.apply({**current, "pending": inst.get("pending")})
        applied["mtime"] = self.store.clock.time()
        await self.store.write([Op.put(model.instance_key(inst["name"]), model.dumps(applied))])
        inst.clear()
        inst.update(applied)
        log.info("instance '%s': changes made for this start: %s", inst["name"],
                 ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changed.items()) or "none")
        return await self.store.hvparams(inst)

    async def protect(self, ctx: JobContext | None, inst: dict[str, Any]) -> bool:
        """Export the secondary's copies and start the primary's mirrors; False (logged) if it could not."""
        name, primary, secondary = inst["name"], inst["primary_node"], inst["secondary_node"]
        try:
            record, revision = await self.replica(name)
            record = replicas.new_copy(record, self.store.clock.time())
            if not await self.put_if_unchanged(name, record, revision):
                raise JobFailed("its replica record changed meanwhile; the master tries again")
            how = ""
            if inst["disk_template"] == "drbd":
                await self.store.order(secondary, "drbd.prepare", {"instance": inst})
                await self.store.order(primary, "drbd.attach", {"instance": inst, "gen": record["gen"]})
            else:
                how = await self._mirror(inst, record["gen"])
        except JobFailed as exc:
            message = (f"instance '{name}' runs on node '{primary}' without a current copy on '{secondary}' "
                       f"(degraded): {exc}; the master retries when '{secondary}' answers")
            log.warning("%s", message)
            if ctx is not None:
                await ctx.log(message)
            return False
        verb = "DRBD replicates" if inst["disk_template"] == "drbd" else "mirroring"
        message = f"{verb} the disks of '{name}' from node '{primary}' to node '{secondary}'" + \
            (f" ({how})" if how else "")
        log.info("%s", message)
        if ctx is not None:
            await ctx.log(message + " (`corral instance info` shows how far its copy is)")
        return True

    async def _mirror(self, inst: dict[str, Any], gen: int) -> str:
        """The secondary's exports up, then the primary's mirrors toward them (the mirror template): a copy
        back from an outage or a migration gets only what it missed. Says how each disk is copied."""
        name, primary, secondary, disks = inst["name"], inst["primary_node"], inst["secondary_node"], inst["disks"]
        exported = await self.store.order(secondary, "instance.replica-export",
                                          {"name": name, "disks": disks, "port_base": inst["port_base"],
                                           "client": primary})
        host = (await self._node(secondary))["address"]
        cluster = await self.store.get(model.CLUSTER_KEY) or {}
        rate = self.copy_rate(inst, float(cluster.get("sync_rate_mib_s") or 0.0)) / max(1, len(disks))  # each disk's
        attached = await self.store.order(primary, "instance.mirror-attach",
                                          {"name": name, "disks": disks, "host": host, "port_base": inst["port_base"],
                                           "rate_limit_mib_s": rate, "gen": gen,
                                           "copies": exported.get("copies", {})})
        return ", ".join(f"disk {i}: {how}" for i, how in sorted((attached.get("modes") or {}).items()))

    # ---- migrate -----------------------------------------------------------------------
    async def _job_migrate(self, ctx: JobContext, args: dict[str, Any]) -> dict[str, Any]:
        inst = await self.store.instance(args["name"])
        name, source = inst["name"], inst["primary_node"]
        target = self._replicated(inst, "live-migrate")
        if args.get("node") not in (None, "", target):
            raise JobFailed(f"instance '{name}' can only migrate to its secondary node '{target}', not "
                            f"'{args['node']}'; use `corral instance replace-secondary` first")
        if await self.settle_migration(inst):
            await ctx.log(f"finished what an interrupted migration of '{name}' left behind")
            inst = await self.store.instance(name)
            source, target = inst["primary_node"], inst["secondary_node"]
        report = await self.store.get(model.report_key(source)) or {}
        if name not in report.get("instances", {}):
            raise JobFailed(f"instance '{name}' is not running on node '{source}'; "
                            "start it, or use `corral instance failover`")
        states = report.get("mirrors", {}).get(name, [])
        # "resyncing" with a ready mirror may only be guest writes in flight: the switchover,
        # with the guest paused, waits for them and refuses a copy that is not complete.
        if not states or any(s["status"] not in ("in_sync", "converged", "resyncing") for s in states):
            raise JobFailed(f"the disks of '{name}' are not in sync on node '{target}' ({describe_mirrors(states)}); "
                            "wait until `corral instance info` says in sync")
        hv = await self.store.hvparams(inst)
        target_addr = (await self._node(target))["address"]
        port = int(inst["port_base"]) + PORTS_PER_INSTANCE - 1
        await ctx.log(f"live-migrating instance '{name}' from node '{source}' to node '{target}'")
        drbd = inst["disk_template"] == "drbd"
        switched = False
        try:
            if drbd:
                await drbdsteps.dual_primary(self.store, ctx, inst, target)
            placed = (await self.store.order(source, "instance.placement", {"name": name}))["placement"]
            # The source's images become the new secondary's copy: the destination records what they miss.
            copy = "" if drbd else secrets.token_hex(8)
            await self.store.order(target, "instance.start",  # only receives: the guest runs there after the outdate
                                   {"instance": inst, "hvparams": hv, "incoming": migration_uri(target_addr, port),
                                    "incoming_from": source, "placement": placed, "track_copy": copy})
            sent = await self._send_memory(ctx, inst, target_addr, port,
                                           float(args.get("max_bandwidth_mib_s", 1024)))
            paused = self.store.clock.monotonic()  # the source is paused from here to the switchover
            if not drbd:  # DRBD's copy stays in sync through the switchover: nothing to end, nothing outdated
                # Both before the destination runs: its image lock free, and the copy left behind recorded.
                await asyncio.gather(
                    self.store.order(target, "instance.replica-unexport", {"name": name, "disks": inst["disks"]}),
                    self.outdate(name, f"the guest moves to node '{target}' by live migration; a new copy "
                                       "follows", copy_on=source))
            handed = self.store.clock.monotonic()
            result = await self.store.order(source, "instance.migrate-complete",
                                            {"name": name, "copy": copy, "disks": inst["disks"]})
            switched = True
            await ctx.log(f"switchover of '{name}': mirrors ended in {sent.get('mirrors_ended_ms', 0)} ms on "
                          f"'{source}', export stopped and copy recorded in {(handed - paused) * 1000:.0f} ms, "
                          f"destination took over in {(self.store.clock.monotonic() - handed) * 1000:.0f} ms")
        except Exception as exc:
            if not switched:
                await self._undo_migrate(ctx, inst, exc)
            raise
        if drbd:
            await drbdsteps.single_primary(self.store, ctx, inst, release=source)
        await self._set_nodes(inst, target, source)
        await ctx.log(f"instance '{name}' now runs on node '{target}': guest paused {result['downtime_ms']} ms, "
                      f"{result['transferred_mib']:.0f} MiB sent in {result['total_s']:.1f} s "
                      f"({result['throughput_mib_s']:.0f} MiB/s)")
        await self.protect(ctx, inst)
        return {"name": name, "node": target, **result}

    async def _send_memory(self, ctx: JobContext, inst: dict[str, Any], host: str, port: int,
                           max_bandwidth: float) -> dict[str, Any]:
        """Run the migration to its switchover point, logging progress and an ETA as it goes; the source's
        answer (with how long ending the mirrors took, the guest paused)."""
        mirrored = inst["disks"] if inst["disk_template"] in model.QUORUM_MIRRORED else []  # mirrors to end
        order = asyncio.create_task(self.store.order(
            inst["primary_node"], "instance.migrate-to-switchover",
            {"name": inst["name"], "host": host, "port": port, "disks": mirrored,
             "max_bandwidth_mib_s": max_bandwidth}))
        started = self.store.clock.monotonic()
        while not order.done():
            await asyncio.wait({order}, timeout=MIGRATE_POLL_S)
            if order.done():
                break
            try:
                p = await self.store.order(inst["primary_node"], "instance.migrate-status", {"name": inst["name"]},
                                           timeout_s=5)
            except JobFailed:
                continue
            total = p.get("total_mib") or 0
            if total:
                sent = total - p.get("remaining_mib", total)
                await ctx.progress(sent, total, f"memory: {p['transferred_mib']:.0f} MiB sent at "
                                   f"{p['throughput_mib_s']:.0f} MiB/s, {eta_words(p.get('eta_s'))}", started)
        return await order

    async def _undo_migrate(self, ctx: JobContext, inst: dict[str, Any], cause: Exception) -> None:
        """A failed migration: the guest resumes on the source, the destination QEMU goes, mirrors restart."""
        name, source, target = inst["name"], inst["primary_node"], inst["secondary_node"]
        await ctx.log(f"migration of '{name}' failed ({cause}); it keeps running on node '{source}'")
        for node, op, args in ((source, "instance.migrate-cancel", {"name": name}),
                               (target, "instance.stop", {"name": name, "timeout_s": 0, "force": True,
                                                          "nic_count": len(inst["nics"])})):
            try:
                await self.store.order(node, op, args)
            except JobFailed as exc:
                await ctx.log(f"cleaning up after the failed migration: {exc}")
        if inst["disk_template"] == "drbd":
            await drbdsteps.single_primary(self.store, ctx, inst, release=target)
        await self.protect(ctx, inst)

    async def settle_migration(self, inst: dict[str, Any]) -> bool:
        """Finish what an interrupted migration left; True when it changed something.

        After the switchover the guest runs on the secondary (the primary's
        QEMU is gone or `postmigrate`): the secondary becomes the primary.
        Before it, a destination QEMU still waiting (`inmigrate`) is stopped,
        and a guest left paused at the switchover point resumes on the primary.
        Judged only while both nodes hold their node lease: a node that lost it
        has stopped its guests (or will, before the lease can expire), and its
        last report, fresh as it may still look, is what it ran before the
        failover that followed, not a migration to finish.
        """
        name, primary, secondary = inst["name"], inst["primary_node"], inst["secondary_node"]
        reports = {n: await self.store.get(model.report_key(n)) or {} for n in (primary, secondary)}
        if not all(report_fresh(r, self.store.clock.time()) for r in reports.values()):
            return False
        for node in (primary, secondary):
            if await self.store.get(model.lease_key(node)) is None:
                return False
        there = reports[secondary].get("instances", {}).get(name)
        here = reports[primary].get("instances", {}).get(name)
        if here is not None and here.get("status") == "finish-migrate" and (there or {}).get("status") != "running":
            log.warning("instance '%s' is paused on node '%s' by a migration nobody finished: resuming it there",
                        name, primary)
            await self.store.order(primary, "instance.migrate-cancel", {"name": name})
            return True
        if there is None:
            return False
        if there.get("status") == "inmigrate":
            log.warning("stopping the QEMU of '%s' left waiting for a migration on node '%s'", name, secondary)
            await self.store.order(secondary, "instance.stop", {"name": name, "timeout_s": 0, "force": True,
                                                                "nic_count": len(inst["nics"])})
            return True
        if there.get("status") == "running" and (here is None or here.get("status") == "postmigrate"):
            log.warning("instance '%s' runs on its secondary node '%s' (a migration finished there but was "
                        "not recorded): '%s' is now its primary", name, secondary, secondary)
            if here is not None:
                await self.store.order(primary, "instance.stop", {"name": name, "timeout_s": 0, "force": True,
                                                                  "nic_count": len(inst["nics"])})
            await self._set_nodes(inst, secondary, primary)
            return True
        return False

    # ---- failover ----------------------------------------------------------------------
    async def _job_failover(self, ctx: JobContext, args: dict[str, Any]) -> dict[str, Any]:
        inst = await self.store.instance(args["name"])
        name, old = inst["name"], inst["primary_node"]
        new = self._replicated(inst, "fail over")
        force = bool(args.get("ignore_consistency"))
        if not await self.alive(new):
            raise JobFailed(f"cannot fail over '{name}': its secondary node '{new}' is not reporting")
        record, _ = await self.replica(name)
        ok, why = replicas.trusted(record, await self.store.get(model.report_key(old)), name)
        if not ok and not force:
            raise JobFailed(f"the copy of '{name}' on node '{new}' is {why}; failing over onto it could lose writes "
                            "the guest was told were done. Rerun with --ignore-consistency to start from it anyway")
        if not ok:
            since = record.get("since")
            age = f"since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(since))} " \
                  f"({(self.store.clock.time() - since) / 60:.0f} min ago)" if since else "for an unknown time"
            await ctx.log(f"WARNING: --ignore-consistency: the copy of '{name}' on node '{new}' is {why}, "
                          f"out of date {age}: every write '{name}' made on '{old}' after that is LOST")
        await ctx.log(f"failing over instance '{name}' from node '{old}' to node '{new}'")
        hv = await self.store.hvparams(inst)
        if args.get("fenced"):  # automatic: the lost node's lease expired, so it has stopped the guest itself
            if await self.store.get(model.lease_key(old)) is not None:
                raise JobFailed(f"node '{old}' holds its node lease again: not failing over '{name}' away from "
                                "a node that may still run it")
            await ctx.log(f"node '{old}' is lost and its node lease has expired: it has stopped '{name}' "
                          "itself (self-fencing), so it is not asked to")
        else:
            await self._stop_on_old(ctx, inst, hv, force)
            if ok and not force:
                await self._still_trusted(ctx, inst, hv)
        if inst["disk_template"] != "drbd":
            await self.store.order(new, "instance.replica-unexport", {"name": name, "disks": inst["disks"]})
        await self._set_nodes(inst, new, old, home=old if args.get("fenced") else None)
        if inst["disk_template"] == "drbd":  # until it has resynced, the copy left on the old primary is behind
            await self.outdate(name, f"'{name}' failed over to node '{new}'; the copy on '{old}' is behind until "
                                     "DRBD has resynced it")
        await ctx.log(f"node '{new}' is now the primary of '{name}'")
        result: dict[str, Any] = {"name": name, "node": new}
        if inst["admin_state"] == "up":
            started = await self.start_order(new, inst, hv)
            await ctx.log(f"instance '{name}' started on node '{new}' (pid {started['pid']})")
            result["pid"] = started["pid"]
            await self.protect(ctx, inst)
        return result

    async def _still_trusted(self, ctx: JobContext, inst: dict[str, Any], hv: dict[str, Any]) -> None:
        """The copy was trusted before the stop; the guest wrote on until it powered off, and a write its
        secondary missed then outdates the copy. If so, the old primary alone has every write: it runs
        again there, and the failover stops here."""
        name, old, new = inst["name"], inst["primary_node"], inst["secondary_node"]
        record, _ = await self.replica(name)
        if record.get("in_sync"):
            return
        await ctx.log(f"the copy of '{name}' on node '{new}' went out of date while '{name}' shut down on "
                      f"'{old}' ({record.get('why')}); starting it again on '{old}', which has every write")
        if inst["admin_state"] == "up":
            await self.start_order(old, inst, hv)
            await self.protect(ctx, inst)
        raise JobFailed(f"not failing '{name}' over: its copy on node '{new}' went out of date while it shut "
                        f"down; it runs on '{old}' again (a new copy follows; fail over once it is in sync)")

    async def _stop_on_old(self, ctx: JobContext, inst: dict[str, Any], hv: dict[str, Any], force: bool) -> None:
        """A clean shutdown where the primary still answers; a dead node's guest is gone anyway."""
        name, old = inst["name"], inst["primary_node"]
        try:
            stopped = await self.store.order(old, "instance.stop", {
                "name": name, "timeout_s": hv["shutdown_timeout_s"], "force": False,
                "nic_count": len(inst["nics"])}, timeout_s=hv["shutdown_timeout_s"] + 60)
            await ctx.log(f"instance '{name}' stopped on node '{old}' ({stopped['how']})")
        except JobFailed as exc:
            if not force:
                raise JobFailed(f"could not stop '{name}' on its primary node '{old}' ({exc}); if '{old}' is "
                                "really down, rerun with --ignore-consistency") from exc
            await ctx.log(f"node '{old}' does not answer ({exc}); going on as asked (--ignore-consistency)")
