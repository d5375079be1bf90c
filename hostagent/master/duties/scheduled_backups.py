"""The scheduled backups duty: runs hostagent.master.decide.backup_schedule.plan and carries it out.

Every few seconds it reads this tick's view of the cluster (hostagent.master.view), the record of each
scheduled instance (/corral/backup-runs/<instance>: its export job in flight, when the last one was made
or failed), the restart duty's tracks and the failover duty's state (which nodes are still recovering from
an outage), and the export jobs queued or running (the job runner's own list, so that exports asked for by
hand count against a node's limit too: each against the instance's node and the node written to). First it looks up the job of each record that has one: ended well,
the backup is an event (backup-made) and the oldest backups beyond the keep count in that export directory
are removed, a `backup.remove` job and an event (backup-pruned) each; ended otherwise, the job's error is
an event (backup-failed, a warning), and the export is tried again after a period (at most an hour). Then
it submits the exports that are due, each the `backup.export` job `corral backup export` makes, and writes
its id into the instance's record.

Restart-safe: a new master reads the records and follows their jobs (a job queued when the old master
stopped is run by the new one, one that was running is ended as interrupted: a failure event). An export in
flight holds its instance's lock, so no second one is submitted meanwhile; the newest backup the nodes
report (and the record's last success, until a report shows it) says when the next is due.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from election.etcd import Op

from hostagent import model
from hostagent.errors import BadRequest, Conflict, NotFound
from hostagent.master.backups import Backups, backup_rows
from hostagent.master.decide.backup_schedule import (RETRY_MAX_S, Export, Run, View, age_words, keep_of, period_s,
                                                     plan, recovering, to_prune)
from hostagent.master.decide.restarts import Event
from hostagent.master.following import CONSISTENCY_WORDS
from hostagent.master.jobs import FINAL
from hostagent.master.store import Store
from hostagent.master.view import ClusterView, Views
from hostagent.units import format_mib

log = logging.getLogger(__name__)

PASS_EVERY_S = 2.0
REMOVING_KEPT_S = 120.0  # a backup whose removal was submitted is not submitted again for this long (reports lag)


class ScheduledBackups:
    """The duty (`step`), with when it last ran, what it last said about each waiting instance, and the
    removals it submitted lately."""

    def __init__(self, store: Store, views: Views, backups: Backups) -> None:
        self.store = store
        self.views = views
        self.backups = backups
        self._last_pass = 0.0
        self._held: dict[str, str] = {}
        self._removing: dict[str, float] = {}  # backup ref -> when (monotonic) its removal was submitted

    async def step(self) -> None:
        if self.store.clock.monotonic() - self._last_pass < PASS_EVERY_S:
            return
        self._last_pass = self.store.clock.monotonic()
        view = await self.views.current()
        runs = {r["name"]: r for r in await self.store.prefix(model.BACKUP_RUNS) if "name" in r}
        if not runs and not any(i.get("backup_schedule") for i in view.instances):
            return
        rows = backup_rows({n: dict(r) for n, r in view.reports.items()})
        for name, raw in list(runs.items()):
            if raw.get("job") is not None:
                runs[name] = await self._follow(view, raw, rows)
        await self._forget(view, runs)
        tracks = await self.store.prefix(model.RESTARTS)
        failover = await self.store.get(model.FAILOVER_STATE_KEY) or {}
        exporting: dict[str, int] = {}
        primary = {i["name"]: i["primary_node"] for i in view.instances}
        for job in self.store.role.require().active("backup.export"):
            args = job["args"]
            for node in {str(args.get("node")), primary.get(args.get("name"), str(args.get("node")))}:
                exporting[node] = exporting.get(node, 0) + 1
        nodes = recovering(view.instances, view.reports, [t["name"] for t in tracks if t.get("failed")],
                           {str(k): float(v) for k, v in (failover.get("back") or {}).items()}, view.now)
        decided = plan(View(view.instances, view.reports, view.cluster, view.alive, view.busy | view.unseen,
                            exporting, nodes), {n: Run.from_dict(r) for n, r in runs.items()}, view.now)
        self._say_held(decided.held)
        for export in decided.exports:
            await self._submit(view, export, runs.get(export.instance))

    def _say_held(self, held: dict[str, str]) -> None:
        """Each instance whose due backup waits, and why, logged once when the reason changes."""
        for name, why in held.items():
            if self._held.get(name) != why:
                log.info("instance '%s': its scheduled backup is due and waits: %s", name, why)
        self._held = dict(held)

    async def _submit(self, view: ClusterView, export: Export, raw: dict[str, Any] | None) -> None:
        name = export.instance
        run = Run.from_dict(raw or {})
        runner = self.store.role.require()
        try:
            job = await self.backups.submit_export(runner.submit, {"instance": name, "to": export.to,
                                                                   "live": export.live, "compress": False})
        except (BadRequest, Conflict, NotFound) as exc:
            now = self.store.clock.time()
            failed = dataclasses.replace(run, failed_at=now, error=str(exc))
            await self.store.write([Op.put(model.backup_run_key(name), model.dumps({"name": name, **failed.to_dict()}))],
                                   events=[Event(name, export.node, "backup-failed",
                                                 f"scheduled backup of instance '{name}' not started: {exc}; "
                                                 f"tried again in {self._retry_words(view, name)}")], now=now)
            return
        started = dataclasses.replace(run, job=job)
        await self.store.write([Op.put(model.backup_run_key(name), model.dumps({"name": name, **started.to_dict()}))])
        log.info("instance '%s': scheduled backup is job %d (%s)", name, job, export.why)

    async def _follow(self, view: ClusterView, raw: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
        """The record after looking up its job: unchanged while the job runs; else its outcome, as an event."""
        name, job_id = str(raw["name"]), int(raw["job"])
        job = await self.store.get(model.job_key(job_id)) or await self.store.get(model.archived_job_key(job_id))
        if job is not None and job["status"] not in FINAL:
            return raw
        run, now = Run.from_dict(raw), self.store.clock.time()
        args, result = (job or {}).get("args") or {}, (job or {}).get("result") or {}
        node = str(args.get("node") or "")
        if job is not None and job["status"] == "success":
            run = dataclasses.replace(run, job=None, made=float(job.get("started") or now), failed_at=0.0, error="")
            how = CONSISTENCY_WORDS.get(str(result.get("consistency")), "copied while it ran" if args.get("live")
                                        else "copied while it was stopped")
            event = Event(name, node, "backup-made", f"scheduled backup of instance '{name}' made: {result.get('ref')} "
                          f"({format_mib(int(result.get('used_bytes') or 0) >> 20)} on disk, {how}; job {job_id})")
        else:
            error = (job or {}).get("error") or "its job record is gone"
            run = dataclasses.replace(run, job=None, failed_at=float((job or {}).get("ended") or now), error=error)
            event = Event(name, node, "backup-failed", f"scheduled backup of instance '{name}' failed (job {job_id}): "
                          f"{error}; tried again in {self._retry_words(view, name)}")
        record = {"name": name, **run.to_dict()}
        await self.store.write([Op.put(model.backup_run_key(name), model.dumps(record))], events=[event], now=now)
        if run.made and run.failed_at == 0.0 and result.get("path"):
            await self._prune(name, node, str(result["path"]), rows)
        return record

    def _retry_words(self, view: ClusterView, name: str) -> str:
        inst = next((i for i in view.instances if i["name"] == name), {})
        period = period_s(str(inst.get("backup_schedule") or ""))
        return age_words(min(period, RETRY_MAX_S)) if period else "its next period"

    async def _prune(self, name: str, node: str, made_path: str, rows: list[dict[str, Any]]) -> None:
        """Remove the oldest backups of `name` in the export directory of `made_path` beyond its keep count."""
        inst = await self.store.get(model.instance_key(name))
        if inst is None:
            return
        keep = keep_of(inst, await self.store.get(model.CLUSTER_KEY) or {})
        runner = self.store.role.require()
        mono, now = self.store.clock.monotonic(), self.store.clock.time()
        self._removing = {ref: at for ref, at in self._removing.items() if mono - at < REMOVING_KEPT_S}
        for old in to_prune(rows, name, node, made_path, keep):
            ref = str(old["ref"])
            if ref in self._removing or runner.busy(f"backup/{ref}"):
                continue
            try:
                job = await self.backups.submit_remove(runner.submit, {"backup": ref})
            except (BadRequest, Conflict, NotFound) as exc:
                log.info("instance '%s': old backup %s not removed: %s", name, ref, exc)
                continue
            self._removing[ref] = mono
            await self.store.write([], events=[Event(
                name, node, "backup-pruned", f"scheduled backups of instance '{name}': removing {ref}, made "
                f"{age_words(now - float(old['created']))} ago: only the newest {keep} are kept in its export "
                f"directory (job {job})")], now=now)

    async def _forget(self, view: ClusterView, runs: dict[str, dict[str, Any]]) -> None:
        """Records of instances removed or no longer scheduled, with no job to follow, are deleted."""
        scheduled = {i["name"] for i in view.instances if i.get("backup_schedule")}
        gone = sorted(n for n, r in runs.items() if n not in scheduled and r.get("job") is None)
        if gone:
            await self.store.write([Op.delete(model.backup_run_key(n)) for n in gone])
            for name in gone:
                runs.pop(name)
