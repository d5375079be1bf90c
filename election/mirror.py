"""Keeps the local replica equal to etcd's config key space.

It watches etcd from the replica's applied revision + 1, so a restarted
agent catches up from where it stopped; when etcd no longer has that
history (compaction) or the replica was never filled, it reads the whole
prefix once and replaces the replica. While etcd is unreachable it retries
with bounded exponential backoff, and the replica keeps serving the last
state it had (readers see how old it is in `last_sync_unix`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence

from election.etcd import Compacted, EtcdClient, EtcdError, EtcdUnavailable, WatchEvent
from election.replica import Replica

log = logging.getLogger(__name__)

BACKOFF_MIN_S = 0.2
BACKOFF_MAX_S = 5.0


class Mirror:
    """Follows `prefix` in etcd into `replica`."""

    def __init__(
        self,
        client: EtcdClient,
        replica: Replica,
        prefix: str = "/corral/",
        on_applied: Callable[[int], None] | None = None,
        clock: Callable[[], float] = time.time,
        backoff_min_s: float = BACKOFF_MIN_S,
        backoff_max_s: float = BACKOFF_MAX_S,
    ) -> None:
        self._client = client
        self._replica = replica
        self.prefix = prefix
        self._on_applied = on_applied
        self._clock = clock
        self._backoff_min_s = backoff_min_s
        self._backoff_max_s = backoff_max_s
        self._applied = replica.applied_revision()
        self._advanced = asyncio.Event()
        self._resync_needed = self._applied == 0
        self._progressed = False
        self._in_outage = False
        self.listeners: list[Callable[[Sequence[WatchEvent]], None]] = []  # each batch's events, once applied

    @property
    def applied_revision(self) -> int:
        return self._applied

    async def run(self, stop: asyncio.Event) -> None:
        """Mirror until `stop` is set; etcd outages are retried, never raised."""
        backoff_s = self._backoff_min_s
        while not stop.is_set():
            self._progressed = False
            follow = asyncio.create_task(self._follow(), name="mirror-follow")
            stopped = asyncio.create_task(stop.wait(), name="mirror-stop")
            try:
                await asyncio.wait({follow, stopped}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopped.cancel()
                if not follow.done():
                    follow.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await follow
            if follow.cancelled():
                return
            try:
                follow.result()
            except Compacted as e:
                log.info(
                    "config mirror: etcd history is compacted to revision %d, past our %d; resyncing in full",
                    e.compact_revision,
                    self._applied,
                )
                self._resync_needed = True
                continue
            except EtcdUnavailable as e:
                # Once per outage at WARNING; the retries of a long outage only at DEBUG.
                level = logging.DEBUG if self._in_outage else logging.WARNING
                log.log(level, "config mirror: %s; retrying in %.1f s", e, backoff_s)
                self._in_outage = True
            except EtcdError as e:
                log.error("config mirror: %s; retrying in %.1f s", e, backoff_s)
            except Exception:
                log.exception("config mirror: unexpected error, please report this bug; retrying in %.1f s", backoff_s)
            if self._progressed:
                backoff_s = self._backoff_min_s
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), backoff_s)
            backoff_s = min(backoff_s * 2, self._backoff_max_s)

    async def wait_for_revision(self, revision: int, timeout_s: float) -> bool:
        """Wait until the replica holds etcd's state at `revision` (read-your-writes); False on timeout.

        Revisions of writes under the prefix arrive with their events; others
        only with etcd's next progress report (every few seconds).
        """
        deadline = asyncio.get_running_loop().time() + timeout_s
        while self._applied < revision:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return False
            advanced = self._advanced
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(advanced.wait(), remaining)
        return True

    async def _follow(self) -> None:
        """Resync if needed, then apply watch batches until the watch fails."""
        if self._resync_needed:
            kvs, revision = await self._client.get_prefix(self.prefix)
            self._replica.reset(kvs, revision)
            self._resync_needed = False
            log.info("config mirror: resynced %d keys at revision %d", len(kvs), revision)
            self._heard_from_etcd(revision)
        async for batch in self._client.watch(self.prefix, self._applied + 1):
            self._replica.apply(batch.events, batch.revision)
            self._heard_from_etcd(batch.revision)
            for listener in self.listeners:
                try:
                    listener(batch.events)
                except Exception:  # noqa: BLE001 - a listener's bug must not stop the mirror
                    log.exception("config mirror: a listener failed on revision %d", batch.revision)

    def _heard_from_etcd(self, revision: int) -> None:
        self._replica.mark_synced(self._clock())
        self._progressed = True
        if self._in_outage:
            log.info("config mirror: following etcd again at revision %d", max(revision, self._applied))
            self._in_outage = False
        if revision <= self._applied:
            return
        self._applied = revision
        # Wake the current waiters; later ones wait on a fresh event.
        self._advanced.set()
        self._advanced = asyncio.Event()
        if self._on_applied is not None:
            self._on_applied(revision)
