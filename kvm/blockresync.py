"""Incremental resync for the `mirror` template: copy back only what changed while the secondary's copy was away.

While the secondary's copy is a quorum child (kvm.blockmirror) it takes
every write. Before it leaves, ``track`` starts a dirty bitmap on the
quorum node ``disk<i>`` named after that copy (``since-<copy id>``), so
every write from then on is recorded, including the held writes that are
retried on the local copy alone at ``cont``. The secondary's node names
the copy it holds (a file beside the image, hostagent.node.replication);
when that same copy is exported again, ``start_round`` copies the recorded
blocks with a ``blockdev-backup`` job (``sync=incremental``,
``bitmap-mode=on-success``): QEMU copies the blocks as of the job's start
and, on success, clears only those, keeping the writes made meanwhile.
Rounds repeat while the guest writes; once what is left is small,
``finish`` pauses the guest, copies the rest (nothing new can arrive),
checks that the bitmap is empty, puts the copy in the quorum in the sink's
place and resumes. So "in sync" holds by construction, as for a full copy.

A failed or cancelled round keeps every bit (QEMU merges them back), so a
retry copies at least what is needed. Without a bitmap (the primary's QEMU
started since, or the export holds another copy) the caller makes a full
copy instead.

Behaviour measured with QEMU 7.2 (tests/integration/test_kvm_blockmirror.py):
bitmaps on the quorum node record the guest's writes; a backup job's
source may be that node while the device is attached to it; the bitmap's
``count`` is in bytes, a multiple of its granularity (64 KiB on raw files).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass

from kvm.blockmirror import MIB, MirrorError, swap_in_peer
from kvm.qmp import Qmp, QmpError

log = logging.getLogger(__name__)

PREFIX = "since-"
_COPY_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,40}\Z")
_POLL_S = 0.05
_FINISH_POLL_S = 0.005  # the guest is paused meanwhile: look often
_ENDED = ("concluded", "null")


@dataclass(frozen=True)
class Round:
    """One sample of a resync round's job: ``status`` running, done, failed or absent."""

    status: str
    offset_bytes: int = 0
    length_bytes: int = 0
    error: str = ""

    @property
    def remaining_bytes(self) -> int:
        return max(0, self.length_bytes - self.offset_bytes)


def bitmap_name(copy_id: str) -> str:
    """The bitmap recording what copy ``copy_id`` lacks; ids come from another node: checked."""
    if not _COPY_ID_RE.match(copy_id):
        raise MirrorError("name a disk copy", f"copy id {copy_id!r} must be 1-40 letters, digits, '_' or '-'")
    return PREFIX + copy_id


async def tracked(qmp: Qmp, index: int) -> dict[str, int]:
    """Copy id -> bytes recorded as written since that copy left, on disk ``index``."""
    try:
        nodes = await qmp.execute("query-named-block-nodes", {"flat": True})
    except QmpError as exc:
        raise MirrorError(f"read the bitmaps of disk{index}", exc.reason) from exc
    for node in nodes if isinstance(nodes, list) else []:
        if isinstance(node, Mapping) and node.get("node-name") == f"disk{index}":
            bitmaps = node.get("dirty-bitmaps") or []
            return {str(b["name"]).removeprefix(PREFIX): int(b.get("count", 0))
                    for b in bitmaps if isinstance(b, Mapping) and str(b.get("name", "")).startswith(PREFIX)}
    return {}


async def track(qmp: Qmp, index: int, copy_id: str) -> bool:
    """Record every write to disk ``index`` from now on for copy ``copy_id``; False if it already was."""
    name = bitmap_name(copy_id)
    if copy_id in await tracked(qmp, index):
        return False
    try:
        await qmp.execute("block-dirty-bitmap-add", {"node": f"disk{index}", "name": name})
    except QmpError as exc:
        raise MirrorError(f"record the writes of disk{index}", exc.reason) from exc
    log.debug("disk%d: recording the writes copy %s misses", index, copy_id)
    return True


async def forget(qmp: Qmp, index: int, keep: str | None = None) -> list[str]:
    """Drop the records of disk ``index`` except copy ``keep``'s; the ids dropped."""
    dropped = []
    for copy_id in await tracked(qmp, index):
        if copy_id == keep:
            continue
        try:
            await qmp.execute("block-dirty-bitmap-remove", {"node": f"disk{index}", "name": PREFIX + copy_id})
        except QmpError as exc:
            raise MirrorError(f"drop the record of copy {copy_id} of disk{index}", exc.reason) from exc
        dropped.append(copy_id)
    return dropped


async def start_round(qmp: Qmp, index: int, copy_id: str, target: str, job_id: str,
                      rate_limit_mib_s: float = 0.0) -> None:
    """Copy the blocks recorded for ``copy_id`` to ``target`` (an NBD node holding that copy)."""
    args: dict[str, object] = {
        "job-id": job_id, "device": f"disk{index}", "target": target, "sync": "incremental",
        "bitmap": bitmap_name(copy_id), "bitmap-mode": "on-success", "auto-dismiss": False,
        "on-target-error": "report", "on-source-error": "report",
    }
    if rate_limit_mib_s > 0:
        args["speed"] = int(rate_limit_mib_s * MIB)
    try:
        await qmp.execute("blockdev-backup", args)
    except QmpError as exc:
        raise MirrorError(f"resync disk{index}", exc.reason) from exc


async def round_state(qmp: Qmp, job_id: str) -> Round:
    """Sample the round now; an ended one is dismissed (its result is in what this returns)."""
    try:
        jobs = await qmp.execute("query-block-jobs")
        job = next((j for j in jobs if isinstance(j, Mapping) and j.get("device") == job_id), None) \
            if isinstance(jobs, list) else None
        if job is None:
            return Round("absent")
        offset, length = int(job.get("offset", 0)), int(job.get("len", 0))
        if str(job.get("status")) not in _ENDED:
            return Round("running", offset, length)
        await qmp.execute("job-dismiss", {"id": job_id})
    except QmpError as exc:
        raise MirrorError(f"query resync {job_id!r}", exc.reason) from exc
    error = str(job.get("error") or "")
    return Round("failed" if error else "done", offset, length, error)


async def cancel_round(qmp: Qmp, job_id: str, timeout_s: float = 5.0) -> None:
    """End a round early (its bits stay recorded); the caller cuts a hung target first."""
    try:
        if (await round_state(qmp, job_id)).status != "running":
            return
        await qmp.execute("block-job-cancel", {"device": job_id, "force": True})
    except QmpError as exc:
        raise MirrorError(f"cancel resync {job_id!r}", exc.reason) from exc
    await _wait_round(qmp, job_id, timeout_s)


async def finish(qmp: Qmp, index: int, copy_id: str, target: str, job_id: str, timeout_s: float) -> float | None:
    """With the guest paused, copy what is left and join the copy to the quorum; the pause in s.

    None (the guest resumed, nothing joined, the bitmap keeps its bits) if the
    last round failed or did not end within ``timeout_s``.
    """
    loop = asyncio.get_running_loop()
    began = loop.time()
    running = await qmp.status() == "running"
    try:
        if running:
            await qmp.execute("stop")
        await start_round(qmp, index, copy_id, target, job_id)
        last = await _wait_round(qmp, job_id, timeout_s, _FINISH_POLL_S)
        if last.status == "running":
            await qmp.execute("block-job-cancel", {"device": job_id, "force": True})
            await _wait_round(qmp, job_id, timeout_s)
            log.warning("disk%d: the last resync round did not end within %.0f s; the guest goes on", index,
                        timeout_s)
            return None
        left = (await tracked(qmp, index)).get(copy_id)
        if last.status != "done" or left != 0:
            log.warning("disk%d: the last resync round %s; the copy is not joined", index,
                        f"failed: {last.error}" if last.error else f"left {left} bytes")
            return None
        await swap_in_peer(qmp, index, target)
        await qmp.execute("block-dirty-bitmap-remove", {"node": f"disk{index}", "name": bitmap_name(copy_id)})
    except QmpError as exc:
        raise MirrorError(f"join the resynced copy of disk{index}", exc.reason) from exc
    finally:
        if running:
            await qmp.execute("cont")
    return loop.time() - began


async def _wait_round(qmp: Qmp, job_id: str, timeout_s: float, poll_s: float = _POLL_S) -> Round:
    """Poll (bounded) until the round ended; its last sample."""
    state = await round_state(qmp, job_id)
    for _ in range(int(timeout_s / poll_s)):
        if state.status != "running":
            break
        await asyncio.sleep(poll_s)
        state = await round_state(qmp, job_id)
    return state
