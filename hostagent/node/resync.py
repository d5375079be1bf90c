"""Incremental resync of `mirror` copies on this node: which copy each side holds, and the rounds that catch one up.

Secondary side: each disk copy has an id in a file beside its image
(``<image>.copy``), minted when an export first serves it. A copy made
anew (``replica-prepare`` creating the image) or taken over by a running
guest (``disown``) loses its id, so no primary can take it for the copy
it once recorded writes for. After a live migration the old primary's
image is the new secondary's copy: ``migrate-complete`` names it after the
record the destination QEMU started (``claim``).

Primary side: the id of the copy each disk's peer holds is kept in
``run/replication/<name>.copies``; before that copy leaves the quorum,
``before_leave`` starts recording writes for it (kvm.blockresync). When the
same copy is attached again, ``begin`` copies only what was recorded, in
rounds driven by the replication guard (``step``); anything else (no
record: the primary's QEMU started since) is a full copy, and the log says
why. Three failed rounds in a row drop the record: the next attach copies
everything.

The record starts when the copy leaves, not at its last flush: the
secondary's export acknowledges a write only once flushed there
(kvm.nbdexport, writethrough), so even a secondary that lost power holds
every write the quorum saw done before the leave.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
from dataclasses import dataclass, field
from typing import Any

from kvm import blockresync
from kvm.blockmirror import MirrorError, set_speed
from kvm.qmp import Qmp
from hostagent.clock import SYSTEM, Clock
from hostagent.node.executor import read_small_file

log = logging.getLogger(__name__)

MIB = 2**20
FINISH_TIMEOUT_S = 10.0  # the last round, guest paused; longer: resume and try again
FINISH_PAUSE_S = 0.05  # what is left is copied with the guest paused once it would take about this long
FINISH_UNDER_BYTES = 1 * MIB  # ...or once it is this small, whatever the rate (small random blocks copy slowly)
MAX_ROUNDS = 12  # then the pause is taken whatever is left (bounded by FINISH_TIMEOUT_S)
MAX_FAILURES = 3
RATE_WINDOW_S = 5.0
ROUND_POLL_S = 0.2


def resync_job(index: int) -> str:
    return f"resync{index}"


@dataclass
class Catchup:
    """One disk's incremental resync in progress, for the guard and the report."""

    copy_id: str
    began_s: float
    rate_limit_mib_s: float
    rounds: int = 0
    copied: int = 0  # bytes of finished rounds
    left: int = 0
    offset: int = 0  # bytes of the running round so far
    samples: list[tuple[float, int]] = field(default_factory=list)  # (time, bytes copied in all)

    def sample(self, now: float) -> None:
        self.samples.append((now, self.copied + self.offset))
        while len(self.samples) > 2 and now - self.samples[0][0] > RATE_WINDOW_S:
            del self.samples[0]

    def rate(self) -> float:
        """Bytes/s over the recent window (0 before two samples apart)."""
        (t0, b0), (t1, b1) = self.samples[0], self.samples[-1]
        return (b1 - b0) / (t1 - t0) if t1 > t0 else 0.0


class Resyncs:
    """Copy ids on both sides and the incremental resyncs this node runs as a primary."""

    def __init__(self, run_dir: str, clock: Clock = SYSTEM) -> None:
        self._run_dir = run_dir
        self._clock = clock
        self._active: dict[tuple[str, int], Catchup] = {}
        self._failures: dict[tuple[str, int], int] = {}
        self.last: dict[tuple[str, int], dict[str, Any]] = {}  # the last finished sync of each disk

    # ---- secondary ----------------------------------------------------------------
    @staticmethod
    def copy_id(image: str) -> str:
        """The id of the copy in `image`, minted on first use."""
        path = image + ".copy"
        found = read_small_file(path)
        if found:
            return found
        minted = secrets.token_hex(8)
        _write(path, minted)
        return minted

    @staticmethod
    def claim(image: str, copy_id: str) -> None:
        """`image` is now copy `copy_id` (checked: it names a bitmap on the primary)."""
        blockresync.bitmap_name(copy_id)
        _write(image + ".copy", copy_id)

    @staticmethod
    def disown(image: str) -> None:
        """`image` was made anew or a guest writes it: no recorded copy describes it any more."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(image + ".copy")

    # ---- primary: which copy each disk's peer holds --------------------------------
    def _copies_path(self, name: str) -> str:
        return os.path.join(self._run_dir, f"{name}.copies")

    def peer_copies(self, name: str) -> dict[int, str]:
        raw = read_small_file(self._copies_path(name))
        try:
            return {int(k): str(v) for k, v in json.loads(raw).items()} if raw else {}
        except (ValueError, AttributeError):
            return {}

    def _set_peer_copy(self, name: str, index: int, copy_id: str) -> None:
        copies = self.peer_copies(name)
        copies[index] = copy_id
        _write(self._copies_path(name), json.dumps({str(k): v for k, v in copies.items()}))

    def forget_instance(self, name: str) -> None:
        """Its QEMU is gone: so are its records and rounds."""
        for key in [k for k in self._active if k[0] == name]:
            del self._active[key]
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._copies_path(name))

    async def before_leave(self, qmp: Qmp, name: str, index: int) -> None:
        """The joined copy of disk `index` is about to leave: record what it misses from now on. Never in the
        way of the leave itself (the guest may be paused on it): without a record, the next copy is a full one."""
        copy_id = self.peer_copies(name).get(index)
        try:
            tracking = bool(copy_id) and await blockresync.track(qmp, index, str(copy_id))
        except MirrorError as exc:
            log.warning("disk %d of '%s': cannot record what its leaving copy misses (%s); it gets a full copy "
                        "when back", index, name, exc)
            return
        if tracking:
            log.info("disk %d of '%s': its secondary's copy leaves; the writes it misses are recorded from now on, "
                     "so that only those are copied when it is back", index, name)

    async def stop(self, qmp: Qmp, name: str, index: int) -> None:
        """End a round in progress (its bits stay recorded)."""
        if self._active.pop((name, index), None) is not None:
            await blockresync.cancel_round(qmp, resync_job(index))

    # ---- primary: catching a copy up ------------------------------------------------
    async def begin(self, qmp: Qmp, name: str, index: int, copy_id: str | None, target: str,
                    rate_limit_mib_s: float) -> str | None:
        """Start catching up copy `copy_id` (the export's) of disk `index`: '' if already under way,
        None when a full copy is needed (the reason logged), else how much there is to copy."""
        if (name, index) in self._active:
            return ""
        if copy_id is not None and not _valid(copy_id):
            log.warning("disk %d of '%s': the secondary names its copy %r, not a copy id: full copy", index, name,
                        copy_id[:60])
            copy_id = None
        recorded = await blockresync.tracked(qmp, index)
        if copy_id:
            self._set_peer_copy(name, index, copy_id)
        if not copy_id or copy_id not in recorded or self._failures.get((name, index), 0) >= MAX_FAILURES:
            why = ("the secondary names no copy" if not copy_id else
                   "earlier catch-up rounds failed" if copy_id in recorded else
                   "the secondary holds a new copy" if recorded else
                   "this QEMU has no record of what its copy missed (it started after the copy left)")
            await blockresync.forget(qmp, index)
            self._failures.pop((name, index), None)
            log.info("disk %d of '%s': full copy to its secondary (%s)", index, name, why)
            return None
        await blockresync.forget(qmp, index, keep=copy_id)
        now = self._clock.monotonic()
        job = Catchup(copy_id, now, rate_limit_mib_s, left=recorded[copy_id])
        job.sample(now)
        self._active[(name, index)] = job
        log.info("disk %d of '%s': copying only the %.1f MiB written since its secondary's copy left", index, name,
                 recorded[copy_id] / MIB)
        await self._next_round(qmp, index, job, target)
        return f"{recorded[copy_id] / MIB:.1f} MiB"

    async def set_rate(self, qmp: Qmp, name: str, index: int, rate_limit_mib_s: float) -> bool:
        """The master shares the cluster's copy rate anew: the running round and the next ones of disk `index`
        go at `rate_limit_mib_s` (0: no limit); False when it is not being caught up."""
        job = self._active.get((name, index))
        if job is None:
            return False
        job.rate_limit_mib_s = rate_limit_mib_s
        await set_speed(qmp, resync_job(index), rate_limit_mib_s)
        return True

    def active(self, name: str, index: int) -> bool:
        return (name, index) in self._active

    async def step(self, qmp: Qmp, name: str, index: int, target: str) -> float:
        """One guard look at disk `index`'s catch-up: the next round, or the last one and the join."""
        job = self._active[(name, index)]
        now = self._clock.monotonic()
        state = await blockresync.round_state(qmp, resync_job(index))
        if state.status == "running":
            job.offset, job.left = state.offset_bytes, state.remaining_bytes
            job.sample(now)
            return ROUND_POLL_S
        if state.status == "failed":
            return self._failed(name, index, f"a round failed: {state.error}")
        job.copied += state.length_bytes if state.status == "done" else 0
        job.offset = 0
        job.sample(now)
        left = (await blockresync.tracked(qmp, index)).get(job.copy_id)
        if left is None:
            return self._failed(name, index, "its record of writes is gone")
        job.left = left
        if left > max(FINISH_UNDER_BYTES, job.rate() * FINISH_PAUSE_S) and job.rounds < MAX_ROUNDS:
            await self._next_round(qmp, index, job, target)
            return ROUND_POLL_S
        pause = await blockresync.finish(qmp, index, job.copy_id, target, resync_job(index), FINISH_TIMEOUT_S)
        if pause is None:
            return self._failed(name, index, "the last round did not complete")
        job.copied += left
        del self._active[(name, index)]
        self._failures.pop((name, index), None)
        took = self._clock.monotonic() - job.began_s
        self.last[(name, index)] = {"mode": "incremental", "copied_mib": round(job.copied / MIB, 2),
                                    "seconds": round(took, 2), "pause_ms": round(pause * 1000)}
        log.info("disk %d of '%s': its secondary's copy is in sync again after copying %.1f MiB in %.1f s "
                 "(%d rounds; guest paused %.0f ms for the last)", index, name, job.copied / MIB, took,
                 job.rounds + 1, pause * 1000)
        return ROUND_POLL_S

    def state(self, name: str, index: int) -> dict[str, Any] | None:
        """The report's view of a catch-up in progress: percent, bytes left, rate and ETA."""
        job = self._active.get((name, index))
        if job is None:
            return None
        done = job.copied + job.offset
        rate = job.rate()
        return {"status": "syncing", "mode": "incremental",
                "elapsed_s": round(self._clock.monotonic() - job.began_s, 1),
                "percent": round(100.0 * done / (done + job.left), 1) if done + job.left else 100.0,
                "remaining_mib": job.left // MIB, "rate_mib_s": round(rate / MIB, 1),
                "eta_s": round(job.left / rate, 1) if rate > 0 else None, "error": ""}

    async def _next_round(self, qmp: Qmp, index: int, job: Catchup, target: str) -> None:
        job.rounds += 1
        await blockresync.start_round(qmp, index, job.copy_id, target, resync_job(index), job.rate_limit_mib_s)

    def _failed(self, name: str, index: int, why: str) -> float:
        self._active.pop((name, index), None)
        count = self._failures[(name, index)] = self._failures.get((name, index), 0) + 1
        self.last[(name, index)] = {"mode": "incremental", "failed": why}
        log.warning("disk %d of '%s': catching its secondary's copy up failed (%s)%s", index, name, why,
                    "; the next attempt copies everything" if count >= MAX_FAILURES else "")
        return ROUND_POLL_S


def _valid(copy_id: str) -> bool:
    try:
        blockresync.bitmap_name(copy_id)
    except MirrorError:
        return False
    return True


def _write(path: str, text: str) -> None:
    """Whole or not at all: a crash leaves the old file or none."""
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)
