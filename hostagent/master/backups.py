"""The master's side of `corral backup export|list|remove|restore|import`.

A backup is a directory under an export directory of a node (hostagent.node.backups, storage.backupdir);
every node lists its backups in its report, so `backup list` and the checks below read the cluster's
replica without asking any node. A backup is named by `NODE:PATH` or, when that is unique, by
`INSTANCE/ID`. Every check that can fail on bad input runs at submit, before a job exists; the export,
restore and import jobs show progress with throughput and an ETA from the node's byte counts.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from hostagent import model
from hostagent.errors import BadRequest, Conflict, NotFound
from hostagent.master import drbdsteps
from hostagent.master.decide import ganeti_export
from hostagent.master.decide.backup_import import import_request
from hostagent.master.decide.checks import REPLICATION_PORTS
from hostagent.master.following import CONSISTENCY_WORDS, follow
from hostagent.master.jobs import Handler, JobContext, JobFailed, job_errors
from hostagent.master.moves import Moves
from hostagent.master.store import Store
from hostagent.units import format_mib

BACKUP_TIMEOUT_S = 6 * 3600.0
Stop = Callable[[JobContext, dict[str, Any], bool, float | None], Awaitable[str]]
Start = Callable[[JobContext, dict[str, Any], dict[str, Any]], Awaitable[dict[str, Any]]]


def backup_id(now: float) -> str:
    """A new backup's id: its UTC time, so a directory listing sorts oldest first."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))


def under(path: str, dirs: list[str]) -> bool:
    """Whether path is one of dirs or inside one (judged on the words; the node judges the real path)."""
    path = os.path.normpath(path)
    return any(path == os.path.normpath(d) or path.startswith(os.path.normpath(d).rstrip("/") + "/") for d in dirs)


def backup_rows(reports: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Every backup the nodes report, oldest first, each with its node and its name for the commands."""
    rows = [{**b, "node": node, "ref": f"{node}:{b['path']}"}
            for node, report in reports.items() for b in report.get("backups") or []]
    return sorted(rows, key=lambda b: (b["created"], b["ref"]))


class Backups:
    """Submit checks and jobs of backups."""

    def __init__(self, store: Store, moves: Moves, start: Start, stop: Stop) -> None:
        self.store, self.moves, self._start, self._stop = store, moves, start, stop
        self._bases: set[int] = set()  # port bases of the transfers running now

    def handlers(self) -> dict[str, Handler]:
        return {"backup.export": job_errors(self._job_export), "backup.remove": job_errors(self._job_remove),
                "instance.restore": job_errors(self._job_restore)}

    async def everything(self) -> list[dict[str, Any]]:
        return backup_rows({r["node"]: r for r in await self.store.prefix(model.REPORTS)})

    async def find(self, ref: Any) -> dict[str, Any]:
        """The backup named `NODE:PATH` or `INSTANCE/ID`; NotFound or Conflict (ambiguous) say what there is."""
        if not isinstance(ref, str) or not ref:
            raise BadRequest(f"backup {ref!r}: name one as NODE:PATH or INSTANCE/ID (`corral backup list`)")
        rows = await self.everything()
        found = [b for b in rows if ref in (b["ref"], f"{b['instance']}/{b['backup_id']}")]
        if not found:
            node, _, path = ref.partition(":")
            report = await self.store.get(model.report_key(node)) if path.startswith("/") else None
            said = re.compile(rf"(^|\s){re.escape(os.path.normpath(path))}(/|\s|$)")
            problem = next((p for p in (report or {}).get("backup_problems") or [] if said.search(p)), None)
            if problem:
                raise NotFound(f"{ref} is not a backup Corral can use: {problem}")
            instance = ref.split("/", 1)[0].split(":", 1)[-1]
            theirs = [b["ref"] for b in rows if b["instance"] == instance]
            raise NotFound(f"no backup {ref!r}" + (f" (backups of '{instance}': {', '.join(theirs)})" if theirs
                                                    else " (`corral backup list` shows them)"))
        if len(found) > 1:
            raise Conflict(f"backup {ref!r} is on more than one node: name it as one of {', '.join(b['ref'] for b in found)}")
        return found[0]

    async def submit_export(self, runner_submit: Callable[..., Awaitable[int]], params: dict[str, Any]) -> int:
        name = params.get("instance")
        if not isinstance(name, str) or not name:
            raise BadRequest(f"instance {name!r}: name the instance to export")
        inst = await self.store.instance(name)
        primary = inst["primary_node"]
        node, directory = self._target(params.get("to"), primary)
        report = await self.store.get(model.report_key(node))
        if report is None:
            raise NotFound(f"no node named '{node}' reports to the cluster")
        dirs = report.get("export_dirs") or []
        directory = directory or (dirs[0] if dirs else "")
        if not directory or not under(directory, dirs):
            raise BadRequest(f"{directory or 'no directory'} is not an export directory of node '{node}' (it has: "
                             f"{', '.join(dirs) or 'none'}; export_dirs in [paths] of its agent.toml)")
        running = name in ((await self.store.get(model.report_key(primary)) or {}).get("instances") or {})
        if running and not params.get("live"):
            raise Conflict(f"instance '{name}' is running: export it with --live (copied as of one instant while it "
                           f"runs, crash-consistent) or stop it first (`corral instance stop {name}`)")
        now = self.store.clock.time()
        ids = {b["backup_id"] for b in report.get("backups") or [] if b["instance"] == name}
        bid = next(f"{backup_id(now)}{suffix}" for suffix in ["", *(f"-{n}" for n in range(2, 100))]
                   if f"{backup_id(now)}{suffix}" not in ids)
        args = {"name": name, "node": node, "directory": directory, "backup_id": bid,
                "live": bool(params.get("live")), "compress": bool(params.get("compress")),
                "rate_mib_s": float(params.get("rate_mib_s") or 0)}
        return await runner_submit("backup.export", args, f"export instance '{name}' to {node}:{directory}",
                                   must_exist=[model.instance_key(name)])

    @staticmethod
    def _target(to: Any, primary: str) -> tuple[str, str]:
        """(node, directory) of --to NODE:DIR, NODE: (its first), DIR (the instance's node) or nothing (its
        first)."""
        if to in (None, ""):
            return primary, ""
        if not isinstance(to, str):
            raise BadRequest(f"to {to!r}: give NODE:DIR or an absolute DIR")
        node, sep, directory = to.partition(":")
        if not sep:
            node, directory = primary, to
        elif not directory:
            return node or primary, ""
        if not os.path.isabs(directory):
            raise BadRequest(f"export directory {directory!r} must be absolute (NODE:DIR or /DIR)")
        return node or primary, os.path.normpath(directory)

    async def check_restore(self, name: str, params: dict[str, Any]) -> None:
        inst = await self.store.instance(name)
        backup = await self.find(params.get("backup"))
        if backup["instance"] != name:
            raise Conflict(f"backup {backup['ref']} is of instance '{backup['instance']}', not '{name}': make a new "
                           f"instance of it with `corral backup import {backup['ref']} --name NEW`")
        if backup["node"] != inst["primary_node"]:
            raise Conflict(f"backup {backup['ref']} is on node '{backup['node']}', not on '{inst['primary_node']}' "
                           f"where '{name}' runs: restore from a backup on that node")
        sizes = {int(d["index"]): int(d["size_mib"]) for d in inst["disks"]}
        for index, size in backup["disks"].items():
            if int(index) not in sizes:
                raise Conflict(f"backup {backup['ref']} has disk {index}, which '{name}' does not have")
            if int(size) > sizes[int(index)] * 2**20:
                raise Conflict(f"disk {index} of backup {backup['ref']} ({format_mib(int(size) >> 20)}) is larger "
                               f"than disk {index} of '{name}' ({format_mib(sizes[int(index)])})")
        if not params.get("yes"):
            raise BadRequest(f"restoring '{name}' from {backup['ref']} replaces what its disks hold now"
                             + (" (it is stopped first, and started again after)" if inst["admin_state"] == "up" else "")
                             + ": confirm with --yes")
        if inst["disk_template"] == "drbd" and not await self.moves.alive(str(inst["secondary_node"])):
            raise Conflict(f"node '{inst['secondary_node']}', the secondary of '{name}', does not report: a restore "
                           "makes its copy start afresh, which needs it up (or replace it: `corral instance "
                           f"replace-secondary {name}`)")
        params["path"], params["node"] = backup["path"], backup["node"]

    async def _job_export(self, ctx: JobContext, args: dict[str, Any]) -> dict[str, Any]:
        inst = await self.store.instance(args["name"])
        name, node = inst["name"], args["node"]
        started = self.store.clock.monotonic()
        await ctx.log(f"exporting '{name}' on node '{node}' into {args['directory']}/{name}/{args['backup_id']}"
                      + (" from the running guest" if args["live"] else "") + (", compressed" if args["compress"] else "")
                      + (f", at most {args['rate_mib_s']:g} MiB/s a disk" if args.get("rate_mib_s") else ""))
        if node != inst["primary_node"]:
            made = await self._export_to(ctx, inst, args)
        else:
            made = await follow(self.store, ctx, node, "backup.status", name, self.store.order(
                node, "backup.export", {"instance": inst, "directory": args["directory"],
                                        "backup_id": args["backup_id"], "live": args["live"],
                                        "compress": args["compress"], "rate_mib_s": args.get("rate_mib_s", 0)},
                timeout_s=BACKUP_TIMEOUT_S), f"exporting the disks of '{name}'")
        await ctx.log(f"'{name}' exported to {node}:{made['path']} in {self.store.clock.monotonic() - started:.1f} s: "
                      + CONSISTENCY_WORDS.get(made["consistency"], made["consistency"])
                      + f"; {format_mib(int(made['used_bytes']) >> 20)} on disk"
                      + (f"; each disk as the export script of OS '{made['dumps']}' wrote it" if made.get("dumps") else ""))
        return {"name": name, "node": node, "path": made["path"], "ref": f"{node}:{made['path']}",
                "used_bytes": made["used_bytes"], "consistency": made["consistency"]}

    async def _export_to(self, ctx: JobContext, inst: dict[str, Any], args: dict[str, Any]) -> dict[str, Any]:
        """The export written on another node than the instance's: that node serves empty images over TLS to
        the instance's node, which copies into them (hostagent.node.backupxfer); kept only once complete."""
        name, source, target = inst["name"], inst["primary_node"], args["node"]
        sizes = await self.store.order(source, "backup.sizes", {"instance": inst})
        where = {"name": name, "directory": args["directory"], "backup_id": args["backup_id"],
                 "disks": sizes["disks"]}
        base = await self._port_base()
        try:
            served = await self.store.order(target, "backup.receive", {**where, "needed_bytes": sizes["needed_bytes"],
                                                                      "client": source, "port_base": base})
            await ctx.log(f"node '{target}' receives the disks of '{name}' from node '{source}' over TLS")
            sent = await follow(self.store, ctx, source, "backup.status", name, self.store.order(
                source, "backup.send", {"instance": inst, "live": args["live"],
                                        "rate_mib_s": args.get("rate_mib_s", 0), **served},
                timeout_s=BACKUP_TIMEOUT_S), f"sending the disks of '{name}' to node '{target}'")
            if args["compress"]:
                await ctx.log(f"compressing the images on node '{target}'")
            return await self.store.order(target, "backup.receive-end", {**where, "commit": True, "meta": {
                "created": sent["created"], "consistency": sent["consistency"], "compressed": args["compress"],
                "source_node": source, "disks": sent["disks"], "instance": inst}}, timeout_s=BACKUP_TIMEOUT_S)
        except BaseException:
            with contextlib.suppress(JobFailed):  # the partial backup goes; a node that cannot be told keeps
                await self.store.order(target, "backup.receive-end", {**where, "commit": False})  # a leftover
            raise
        finally:
            self._bases.discard(base)

    async def _ganeti_disks(self, ctx: JobContext, inst: dict[str, Any], source: dict[str, Any]) -> dict[str, Any]:
        for note in source["notes"]:
            await ctx.log(f"not carried over from the Ganeti export: {note}")
        await ctx.log(f"making the disks of '{inst['name']}' on node '{source['node']}' from the Ganeti export "
                      f"{source['ref']} through OS '{inst['os']}' (its import script, or the dump as a raw image)")
        made = await follow(self.store, ctx, source["node"], "backup.status", inst["name"], self.store.order(
            source["node"], "backup.import-ganeti", {
                "instance": inst, "path": source["path"], "dumps": source["dumps"],
                "hvparams": await self.store.hvparams(inst), "networks": await self.store.nic_networks(inst)},
            timeout_s=BACKUP_TIMEOUT_S), f"writing the disks of '{inst['name']}' from the Ganeti export")
        await ctx.log(f"disks of '{inst['name']}' made from the Ganeti export {source['ref']}")
        return made

    async def _import_from(self, ctx: JobContext, inst: dict[str, Any], source: dict[str, Any]) -> dict[str, Any]:
        """The new instance's disks, on another node than the backup: made empty there and served over TLS to
        the backup's node, which writes the backup's images into them (hostagent.node.backupxfer)."""
        name, holder, node = inst["name"], source["node"], inst["primary_node"]
        base = await self._port_base()
        try:
            served = await self.store.order(node, "backup.receive-disks",
                                            {"instance": inst, "client": holder, "port_base": base})
            await ctx.log(f"node '{holder}' sends the backup's images to node '{node}' over TLS")
            await follow(self.store, ctx, holder, "backup.status", name, self.store.order(
                holder, "backup.send-backup", {"name": name, "path": source["path"], **served},
                timeout_s=BACKUP_TIMEOUT_S), f"copying the disks of '{name}' from node '{holder}'")
            return await self.store.order(node, "backup.receive-disks-end",
                                          {"instance": inst, "commit": True, "path": source["ref"]})
        except BaseException:
            with contextlib.suppress(JobFailed):  # the add's undo removes what is left of the disks anyway
                await self.store.order(node, "backup.receive-disks-end", {"instance": inst, "commit": False})
            raise
        finally:
            self._bases.discard(base)

    async def _port_base(self) -> int:
        """Ports no instance and no other transfer of this master uses (one per disk from there)."""
        used = {int(i.get("port_base") or 0) for i in await self.store.instances()} | self._bases
        base = next((b for b in REPLICATION_PORTS if b not in used), None)
        if base is None:
            raise JobFailed("every port of the replication range is taken; try again when a transfer ends")
        self._bases.add(base)
        return base

    async def submit_remove(self, runner_submit: Callable[..., Awaitable[int]], params: dict[str, Any]) -> int:
        backup = await self.find(params.get("backup"))
        return await runner_submit("backup.remove", {"node": backup["node"], "path": backup["path"],
                                                     "instance": backup["instance"]}, f"remove backup {backup['ref']}")

    async def _job_remove(self, ctx: JobContext, args: dict[str, Any]) -> dict[str, Any]:
        done = await self.store.order(args["node"], "backup.remove", {"path": args["path"]})
        ref = f"{args['node']}:{args['path']}"
        await ctx.log(f"backup {ref} removed" if done["removed"] else f"backup {ref} was already gone")
        return {"removed": ref}

    async def _job_restore(self, ctx: JobContext, args: dict[str, Any]) -> dict[str, Any]:
        inst = await self.store.instance(args["name"])
        name, node = inst["name"], inst["primary_node"]
        report = await self.store.get(model.report_key(node)) or {}
        was_running = name in (report.get("instances") or {})
        if was_running:
            await self._stop(ctx, inst, False, None)
        def restore() -> Awaitable[Any]:
            return follow(self.store, ctx, node, "backup.status", name, self.store.order(
                node, "backup.restore", {"name": name, "path": args["path"], "disk_template": inst["disk_template"],
                                         "instance": inst}, timeout_s=BACKUP_TIMEOUT_S),
                f"restoring the disks of '{name}'")

        await drbdsteps.rewrite_disks(self.store, self.moves, ctx, inst, f"disks restored from backup {args['backup']}",
                                      restore)
        await ctx.log(f"the disks of '{name}' on node '{node}' hold backup {args['node']}:{args['path']}")
        if was_running:
            await self._start(ctx, inst, await self.store.hvparams(inst))
        return {"name": name, "restored": f"{args['node']}:{args['path']}"}

    async def import_add(self, params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """The add request that recreates a backup's instance (checked as any add is), and what the add job
        needs to make the disks from the backup. The configuration is read from the backup on its node."""
        if params.get("ganeti"):
            return await self._ganeti_add(params)
        if not params.get("name"):
            raise BadRequest("name the new instance (--name NEW): the backed-up one may still exist")
        backup = await self.find(params.get("backup"))
        try:
            read = await self.store.order(backup["node"], "backup.read", {"path": backup["path"]}, timeout_s=30)
        except JobFailed as exc:
            raise Conflict(f"cannot read backup {backup['ref']}: {exc}") from None
        macs = {nic["mac"] for i in await self.store.instances() for nic in i.get("nics") or []}
        req, notes = import_request(dict(read["config"]), name=str(params.get("name") or ""),
                                    node=str(params.get("node") or backup["node"]),
                                    template=params.get("disk_template"), macs_in_use=macs,
                                    start=bool(params.get("start", True)))
        elsewhere = str(req.get("node")).partition(":")[0] != backup["node"]
        if elsewhere and req["disk_template"] in model.ON_LVM:
            raise BadRequest(f"a backup is imported as a {req['disk_template']} instance on the node holding it "
                             f"('{backup['node']}', --node {backup['node']}"
                             + (":SECONDARY" if req["disk_template"] == "drbd" else "")
                             + "); or import it as a file instance elsewhere")
        if elsewhere and read.get("dumps"):
            raise BadRequest(f"backup {backup['ref']} holds what the export script of OS '{read['dumps']}' wrote: it is "
                             f"imported through that OS's import script on the node holding it ('{backup['node']}'), "
                             "then moved (`corral instance move`)")
        return req, {"from_backup": {"ref": backup["ref"], "node": backup["node"], "path": backup["path"],
                                     "notes": notes, "dumps": read.get("dumps") or ""}}

    async def _ganeti_add(self, params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """The add request of an export Ganeti wrote (hostagent.master.decide.ganeti_export), read on its node."""
        node, _, path = str(params.get("backup") or "").partition(":")
        if not path.startswith("/") or await self.store.get(model.node_key(node)) is None:
            raise BadRequest(f"{params.get('backup')!r}: give the directory `gnt-backup export` wrote as NODE:DIR, "
                             "DIR in an export directory of a node of this cluster")
        try:
            read = await self.store.order(node, "backup.read-ganeti", {"path": path}, timeout_s=30)
        except JobFailed as exc:
            raise BadRequest(str(exc)) from None
        export = ganeti_export.read_config(read["config"])
        missing = [f"disk{d.index}_dump {d.dump}" for d in export.disks if d.dump not in read["files"]]
        if missing:
            raise BadRequest(f"the Ganeti export {node}:{read['path']} is incomplete: {', '.join(missing)} is not "
                             "there")
        req, notes = ganeti_export.to_add_request(export, name=params.get("name") or None,
                                                  node=params.get("node") or node,
                                                  template=params.get("disk_template"))
        req["start"] = bool(params.get("start", True))
        if str(req.get("node")).partition(":")[0] != node:
            raise BadRequest(f"a Ganeti export is imported on the node holding it ('{node}'); move the instance "
                             "afterwards (`corral instance move`)")
        return req, {"from_ganeti": {"ref": f"{node}:{read['path']}", "node": node, "path": read["path"],
                                     "dumps": {str(d.index): d.dump for d in export.disks}, "notes": notes}}

    async def import_disks(self, ctx: JobContext, inst: dict[str, Any], args: dict[str, Any]) -> dict[str, Any]:
        """The new instance's disks made from a backup, or from a Ganeti export (instance add's step)."""
        if args.get("from_ganeti"):
            return await self._ganeti_disks(ctx, inst, args["from_ganeti"])
        source = args["from_backup"]
        node = inst["primary_node"]
        for note in source["notes"]:
            await ctx.log(f"not carried over from the backup: {note}")
        await ctx.log(f"making the disks of '{inst['name']}' on node '{node}' from backup {source['ref']} "
                      + (f"through the import script of OS '{source['dumps']}'" if source.get("dumps") else
                         "(no OS is installed)"))
        if source["node"] != node:
            made = await self._import_from(ctx, inst, source)
        else:
            made = await follow(self.store, ctx, node, "backup.status", inst["name"], self.store.order(
                node, "backup.import-disks", {"instance": inst, "path": source["path"]}, timeout_s=BACKUP_TIMEOUT_S),
                f"copying the disks of '{inst['name']}' from the backup")
        await ctx.log(f"disks of '{inst['name']}' made from backup {source['ref']}")
        return made

