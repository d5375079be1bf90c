"""Finished jobs leave the live list after a while (Ganeti's 6 hours), into an archive kept 30 days.

Every node mirrors the whole config, and `job list` reads all of it: a busy
cluster's months of jobs would weigh on both. Archived jobs stay readable
(`corral job list --archived`, `job info ID`); job ids are never reused (the
runner counts on from the archive too).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from election.etcd import Op

from hostagent import model
from hostagent.master.store import Store

log = logging.getLogger(__name__)

DEFAULT_AFTER_S = 6 * 3600.0
KEEP_S = 30 * 86400.0
EVERY_S = 10.0
BATCH = 50  # jobs moved per transaction (etcd caps a transaction's operations)
FINISHED = ("success", "error", "canceled")


def due(jobs: Iterable[Mapping[str, Any]], now: float, after_s: float) -> list[int]:
    """Ids of finished jobs that ended more than `after_s` ago, oldest first."""
    return sorted(int(j["id"]) for j in jobs
                  if j.get("status") in FINISHED and j.get("ended") and now - float(j["ended"]) > after_s)


def expired(archived: Iterable[Mapping[str, Any]], now: float, keep_s: float = KEEP_S) -> list[int]:
    return sorted(int(j["id"]) for j in archived
                  if now - float(j["ended"] if j.get("ended") is not None else now) > keep_s)


class JobArchive:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._last = 0.0

    async def step(self) -> int:
        """A master duty: archive what is due, drop what expired; how many jobs were moved."""
        now_mono = self.store.clock.monotonic()
        if now_mono - self._last < EVERY_S:
            return 0
        self._last = now_mono
        cluster = await self.store.get(model.CLUSTER_KEY) or {}
        after = float(cluster.get("job_archive_after_s") or DEFAULT_AFTER_S)
        now = self.store.clock.time()
        jobs = {int(j["id"]): j for j in await self.store.prefix(model.JOBS)}
        ids = due(jobs.values(), now, after)
        for start in range(0, len(ids), BATCH):
            batch = ids[start:start + BATCH]
            await self.store.write([op for i in batch for op in (
                Op.put(model.archived_job_key(i), model.dumps(jobs[i])), Op.delete(model.job_key(i)))])
        gone = expired(await self.store.prefix(model.JOBS_ARCHIVE), now)
        for start in range(0, len(gone), BATCH):
            await self.store.write([Op.delete(model.archived_job_key(i)) for i in gone[start:start + BATCH]])
        if ids or gone:
            log.info("jobs archived: %d (finished over %.0f h ago); archived jobs deleted: %d (over 30 days)",
                     len(ids), after / 3600, len(gone))
        return len(ids)
