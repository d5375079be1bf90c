"""A running guest's disks copied as they were at one instant, while the guest goes on: QEMU's backup job.

``backup_disks`` opens each target image (made beforehand, of the disk's size) in the running QEMU and starts
one ``blockdev-backup`` job per disk (``sync=full``) in a single QMP ``transaction``, so every disk's copy is
of the same instant. From then on a guest write to a block not yet copied first pushes the old block to the
target (copy-before-write): the targets end up holding the disks as they were when the jobs started, the
guest never waits for the whole copy. Crash-consistent; with the guest agent's fsfreeze held only around
the transaction (the caller's ``at_start`` and after it), consistent with the guest's file systems too.

Used for snapshots of file disks and for live exports. The source is the guest's drive ``disk<i>``
(``kvm.cmdline``: a plain drive, or the quorum of a ``mirror`` disk, which reads its local copy first).

Behaviour measured with QEMU 7.2 (tests/integration/test_kvm_blockbackup.py): the jobs report
``current-progress``/``total-progress`` in bytes while running and end ``concluded`` (kept until
dismissed, so an error is read before it goes); a failed job's target is removed by the caller.

Errors: ``BackupError`` (what failed, for which disk), QMP failures included.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from kvm.blockmirror import nbd_target_args, tls_client_object_args
from kvm.qmp import Qmp, QmpError

POLL_S = 0.5
TLS_CREDS_ID = "tls-backup"  # client credentials of NBD targets, read anew by each copy (certificates renew)
FORMATS = ("raw", "qcow2")


class BackupError(Exception):
    """A backup job could not start or did not complete."""


@dataclass(frozen=True)
class NbdTarget:
    """Another node's NBD export to copy into (an image of the disk's size there), over TLS with the client
    credentials in ``tls_dir`` (this node's certificate, which the export accepts)."""

    host: str
    port: int
    export: str
    tls_dir: str


@dataclass(frozen=True)
class BackupTarget:
    """Disk ``index`` of the guest copied into the image at ``path`` (already made, of the disk's size), or
    into ``nbd`` on another node."""

    index: int
    path: str
    fmt: str = "qcow2"
    nbd: NbdTarget | None = None

    @property
    def job(self) -> str:
        return f"backup-disk{self.index}"

    @property
    def node(self) -> str:
        return f"backup-target{self.index}"


Progress = Callable[[int, int], None]  # bytes copied, bytes in all (every disk)


async def backup_disks(connect: Callable[[], Awaitable[Qmp]], targets: Sequence[BackupTarget], timeout_s: float,
                       progress: Progress | None = None, at_start: Callable[[], Any] | None = None,
                       speed_bytes_s: int = 0, compress: bool = False) -> None:
    """Copy every target's disk as of one instant; returns once every copy is complete (bounded by
    ``timeout_s``). ``connect`` opens a QMP session: one starts the jobs, then each look at them is a
    session of its own, so the monitor (QEMU serves one client at a time) stays free for everything else
    a node asks of the guest during a copy of hours (its status, a shutdown, a migration).
    ``at_start`` runs right after the jobs started (the guest's file systems thawed there);
    ``speed_bytes_s`` caps each job (0: as fast as the disks go), so a copy leaves the guest's I/O room;
    ``compress`` writes compressed clusters (qcow2 targets: an export to keep, not a disk to run)."""
    for t in targets:
        if t.fmt not in FORMATS:
            raise BackupError(f"disk {t.index}: target format {t.fmt!r} is not one of {', '.join(FORMATS)}")
    opened: list[BackupTarget] = []
    try:
        try:
            async with await _session(connect) as qmp:
                try:
                    for t in targets:
                        await _qmp(qmp, "blockdev-add", await _target_args(qmp, t), t)
                        opened.append(t)
                    await qmp.execute("transaction", {"actions": [
                        {"type": "blockdev-backup", "data": {
                            "job-id": t.job, "device": f"disk{t.index}", "target": t.node, "sync": "full",
                            "auto-dismiss": False, "speed": max(0, speed_bytes_s),
                            **({"compress": True} if compress else {})}}
                        for t in targets]})
                except QmpError as exc:
                    raise BackupError(f"the copy of disk(s) {', '.join(str(t.index) for t in targets)} did not "
                                      f"start: {exc.reason}") from exc
        finally:
            if at_start is not None:  # whatever happened: a frozen guest is thawed
                await _maybe_await(at_start())
        await _wait(connect, targets, timeout_s, progress)
    finally:
        if opened:
            try:
                closing: Qmp | None = await _session(connect)
            except BackupError:
                closing = None  # the QEMU is gone, and its jobs and targets with it
            if closing is not None:
                async with closing:
                    await _cancel_and_close(closing, opened)


async def _session(connect: Callable[[], Awaitable[Qmp]]) -> Qmp:
    try:
        return await connect()
    except QmpError as exc:
        raise BackupError(f"the guest's monitor did not answer: {exc}") from exc


async def _target_args(qmp: Qmp, t: BackupTarget) -> dict[str, Any]:
    """The target's block node. Zeros written become holes: a quorum source (a `mirror` disk) reports no
    holes, so the job copies every block, and without this a sparse disk's copy would take its whole size."""
    if t.nbd is None:
        return {"driver": t.fmt, "node-name": t.node, "discard": "unmap", "detect-zeroes": "unmap",
                "file": {"driver": "file", "filename": t.path}}
    if TLS_CREDS_ID not in await qmp.object_ids():
        await _qmp(qmp, "object-add", tls_client_object_args(TLS_CREDS_ID, t.nbd.tls_dir), t)
    return {**nbd_target_args(t.node, t.nbd.host, t.nbd.port, t.nbd.export, TLS_CREDS_ID),
            "discard": "unmap", "detect-zeroes": "unmap"}


async def _wait(connect: Callable[[], Awaitable[Qmp]], targets: Sequence[BackupTarget], timeout_s: float,
                progress: Progress | None) -> None:
    jobs = {t.job: t for t in targets}
    for _ in range(int(timeout_s / POLL_S) + 1):  # bounded by count: each round is a QMP session and a sleep
        async with await _session(connect) as qmp:
            states = {j["id"]: j for j in await _jobs(qmp) if j["id"] in jobs}
        if progress is not None:
            progress(sum(int(j.get("current-progress", 0)) for j in states.values()),
                     sum(int(j.get("total-progress", 0)) for j in states.values()))
        for job, t in jobs.items():
            state = states.get(job)
            if state is None:
                raise BackupError(f"disk {t.index}: the backup job ended without a result")
            if state["status"] == "concluded" and state.get("error"):
                raise BackupError(f"disk {t.index}: the copy failed: {state['error']}")
        if all(s["status"] == "concluded" for s in states.values()):
            return
        await asyncio.sleep(POLL_S)
    raise BackupError(f"the copy did not complete within {timeout_s:.0f} s")


async def _cancel_and_close(qmp: Qmp, opened: Sequence[BackupTarget]) -> None:
    """Every job gone (cancelled if still running) and every target closed, whatever happened before."""
    running = {j["id"]: j for j in await _jobs(qmp)}
    for t in opened:
        state = running.get(t.job)
        if state is not None and state["status"] not in ("concluded", "null"):
            with contextlib.suppress(QmpError):  # it may have concluded meanwhile
                await qmp.execute("block-job-cancel", {"device": t.job, "force": True})
            await _until_concluded(qmp, t.job)
        if state is not None:
            with contextlib.suppress(QmpError):
                await qmp.execute("job-dismiss", {"id": t.job})
        await _qmp(qmp, "blockdev-del", {"node-name": t.node}, t)
    if any(t.nbd is not None for t in opened):
        with contextlib.suppress(QmpError):
            await qmp.execute("object-del", {"id": TLS_CREDS_ID})


async def _until_concluded(qmp: Qmp, job: str, tries: int = 40) -> None:
    for _ in range(tries):
        state = next((j for j in await _jobs(qmp) if j["id"] == job), None)
        if state is None or state["status"] == "concluded":
            return
        await asyncio.sleep(0.05)


async def _jobs(qmp: Qmp) -> list[dict[str, Any]]:
    answer = await qmp.execute("query-jobs")
    return list(answer) if isinstance(answer, list) else []


async def _qmp(qmp: Qmp, command: str, args: dict[str, Any], t: BackupTarget) -> None:
    try:
        await qmp.execute(command, args)
    except QmpError as exc:
        raise BackupError(f"disk {t.index}: {command} of {t.path} failed: {exc}") from exc


async def _maybe_await(value: Any) -> None:
    if asyncio.iscoroutine(value):
        await value
