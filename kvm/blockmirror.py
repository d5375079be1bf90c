"""The primary's side of the `mirror` template: QEMU mirrors writes to an NBD copy.

The secondary serves its copy of the disk over NBD (``storage.nbdexport``);
the primary's QEMU attaches it as a block node (TLS client credentials from
the cluster CA) and runs a ``blockdev-mirror`` job that never completes:
``sync=full`` copies the disk once, then ``copy-mode=write-blocking``
acknowledges a guest write only once it is on both copies.

Behaviour measured with QEMU 7.2 (see tests/integration/test_kvm_blockmirror.py):

- ``on-target-error=ignore`` is what keeps the guest going when the
  secondary dies: writes then complete on the local copy at once, the job
  stays ``ready`` and counts the missed areas as remaining, and once the
  export is back at the same address the NBD client reconnects (~1 s) and
  copies only those areas. With ``report`` the job fails instead and only a
  new full copy brings the secondary back. While the target is gone the
  job retries in a loop (~20% of a core, ~650 BLOCK_JOB_ERROR events/s).
- A secondary that hangs without closing the connection (process stopped,
  network partition) is worse: QEMU's NBD client has no I/O timeout, so
  every guest write blocks until the secondary answers. QMP still works;
  ``break_target`` (QMP ``yank``) fails the stuck requests within
  milliseconds and the guest goes on, but that NBD node never reconnects:
  the mirror must be stopped and started anew (a full copy).
- ``block-job-cancel`` while a request is stuck blocks QEMU's main loop
  (QMP included) until the secondary answers; ``stop_mirror`` therefore
  yanks the target before cancelling a mirror that is not in sync.

States (``MirrorState.status``): ``syncing`` (initial copy), ``in_sync``,
``resyncing`` (ready, catching up after a reconnect), ``degraded`` (no
progress for ``stall_after_s`` while data remains: the secondary is gone
and the guest runs on its local copy), ``stalled`` (no progress and the job
idle in two samples: a hung secondary is blocking guest writes; call
``break_target``), ``stopping``, ``stopped``, ``failed`` and ``absent``.
The secondary's copy is consistent only while ``in_sync`` or, as of the
moment the secondary was lost, in ``degraded``/``stalled``; never during
``syncing``/``resyncing``.

Errors: ``MirrorError`` (operation, reason), QMP failures included.
"""

import asyncio
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass

from kvm.qmp import Qmp, QmpError

log = logging.getLogger(__name__)

MIB = 1024 * 1024
STALL_AFTER_S = 3.0
# A ready write-blocking job counts a guest write before it completes on both sides, so a
# sample may show a little left to copy; stopping waits this long for those writes.
IN_FLIGHT_WAIT_S = 5.0
# Up to this much left to copy on a ready mirror that was in sync and keeps progressing is
# guest writes in flight (not yet acknowledged to the guest), not missed writes: still in sync.
# Bounded by a virtio queue's worth of requests (128 x 128 KiB).
IN_FLIGHT_MAX_BYTES = 16 * MIB
_NO_PROGRESS_POLLS = 5
_NODE_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,30}$")
_POLL_INTERVAL_S = 0.1
_STOPPING = ("aborting", "waiting", "pending")
_ENDED = ("concluded", "null")
_CANCELED = "Operation canceled"  # the error of a job ended by a forced cancel


class MirrorError(Exception):
    """A mirror ``operation`` failed; ``reason`` says why and what would fix it."""

    def __init__(self, operation: str, reason: str) -> None:
        self.operation = operation
        self.reason = reason
        super().__init__(f"disk mirror: {operation}: {reason}")


@dataclass(frozen=True)
class MirrorState:
    """One sample of a mirror job, and when it last made progress.

    ``percent`` is QEMU's job progress, whose total grows with every write
    once ready: during ``resyncing`` look at ``remaining_bytes`` instead.
    Pass the previous sample back to ``mirror_state`` to get an ETA and
    the ``degraded``/``stalled`` verdicts.
    """

    status: str
    percent: float
    eta_s: float | None
    ready: bool
    offset_bytes: int = 0
    length_bytes: int = 0
    busy: bool = False
    error: str = ""
    sampled_at_s: float = 0.0
    progressed_at_s: float = 0.0

    @property
    def remaining_bytes(self) -> int:
        return max(0, self.length_bytes - self.offset_bytes)


def tls_client_object_args(tls_creds_id: str, tls_dir: str) -> dict[str, object]:
    """``object-add`` arguments for client credentials (ca-cert.pem, client-*.pem)."""
    _check_name("add NBD target", "tls_creds_id", tls_creds_id)
    return {
        "qom-type": "tls-creds-x509",
        "id": tls_creds_id,
        "dir": tls_dir,
        "endpoint": "client",
        "verify-peer": True,
    }


def nbd_target_args(
    node_name: str, host: str, port: int, export: str, tls_creds_id: str
) -> dict[str, object]:
    """``blockdev-add`` arguments of the NBD node the mirror writes to.

    ``reconnect-delay`` 0: when the secondary dies, requests fail at once
    (the mirror remembers the areas) instead of holding guest writes.
    """
    _check_name("add NBD target", "node_name", node_name)
    if not 0 < port < 65536:
        raise MirrorError("add NBD target", f"port {port} must be 1-65535")
    return {
        "driver": "nbd",
        "node-name": node_name,
        "server": {"type": "inet", "host": host, "port": str(port)},
        "export": export,
        "tls-creds": tls_creds_id,
        "reconnect-delay": 0,
    }


def mirror_args(
    device_node: str, target_node: str, job_id: str, rate_limit_mib_s: float = 0.0
) -> dict[str, object]:
    """``blockdev-mirror`` arguments: full copy, then synchronous writes, errors ignored.

    ``auto-dismiss`` off keeps a failed job (and its error) visible until
    ``stop_mirror`` dismisses it. ``rate_limit_mib_s`` bounds the background
    copy only (initial sync, resync); guest writes are never throttled.
    """
    _check_name("start mirror", "job_id", job_id)
    _check_name("start mirror", "target_node", target_node)
    if rate_limit_mib_s < 0:
        raise MirrorError("start mirror", f"rate limit {rate_limit_mib_s:g} MiB/s is negative")
    args: dict[str, object] = {
        "job-id": job_id,
        "device": device_node,
        "target": target_node,
        "sync": "full",
        "copy-mode": "write-blocking",
        "on-target-error": "ignore",
        "auto-dismiss": False,
    }
    if rate_limit_mib_s > 0:
        args["speed"] = int(rate_limit_mib_s * MIB)
    return args


def mirror_state_from(
    job: Mapping[str, object] | None,
    previous: MirrorState | None,
    now_s: float,
    stall_after_s: float = STALL_AFTER_S,
) -> MirrorState:
    """Classify one ``query-block-jobs`` entry (None: no such job), given the last sample."""
    if job is None:
        return MirrorState("absent", 0.0, None, False, sampled_at_s=now_s, progressed_at_s=now_s)
    offset = _int(job.get("offset"))
    length = _int(job.get("len"))
    ready = bool(job.get("ready"))
    busy = bool(job.get("busy"))
    error = str(job.get("error") or "")
    percent = 100.0 if length <= 0 else min(100.0, offset * 100.0 / length)
    qemu_status = str(job.get("status", ""))
    remaining = max(0, length - offset)
    healthy = (
        previous is None
        or previous.status in ("absent", "stopped", "failed")
        or offset > previous.offset_bytes
        or (ready and remaining == 0)
    )
    progressed_at = now_s if healthy or previous is None else previous.progressed_at_s
    eta = _eta(remaining, offset, previous, now_s)
    if qemu_status in _ENDED:
        status, eta = ("failed" if error and error != _CANCELED else "stopped"), None
    elif qemu_status in _STOPPING:
        status = "stopping"
    elif ready and (remaining == 0 or _writes_in_flight(previous, offset, remaining)):
        status, eta = "in_sync", 0.0
    elif now_s - progressed_at >= stall_after_s:
        hung = not busy and previous is not None and not previous.busy
        status, eta = ("stalled" if hung else "degraded"), None
    else:
        status = "resyncing" if ready else "syncing"
    return MirrorState(
        status, percent, eta, ready, offset, length, busy, error, now_s, progressed_at
    )


def _writes_in_flight(previous: MirrorState | None, offset: int, remaining: int) -> bool:
    """A write-blocking mirror that was in sync and moved on since: the rest is in flight.

    A lost secondary stops the offset (its writes fail and stay dirty), so
    the next sample no longer counts as in flight.
    """
    return (
        previous is not None
        and previous.status == "in_sync"
        and offset > previous.offset_bytes
        and remaining <= IN_FLIGHT_MAX_BYTES
    )


async def add_nbd_target(
    qmp: Qmp,
    node_name: str,
    host: str,
    port: int,
    export: str,
    tls_creds_id: str,
    tls_dir: str,
) -> None:
    """Attach the secondary's export as block node ``node_name`` (idempotent).

    QEMU connects synchronously: check that the secondary answers on
    host:port first, or an unreachable address holds QMP for the whole TCP
    connect timeout.
    """
    creds = tls_client_object_args(tls_creds_id, tls_dir)
    node = nbd_target_args(node_name, host, port, export, tls_creds_id)
    operation = f"attach NBD export {export!r} at {host}:{port}"
    try:
        if tls_creds_id not in await qmp.object_ids():
            await qmp.execute("object-add", creds)
        if node_name not in await _node_names(qmp):
            await qmp.execute("blockdev-add", node)
    except QmpError as exc:
        raise MirrorError(
            operation,
            f"{exc.reason}; is the export running there, and does it accept this "
            "node's certificate?",
        ) from exc
    log.info("disk mirror: NBD target %r attached (%s:%d, export %r)", node_name, host, port,
             export)


async def remove_nbd_target(qmp: Qmp, node_name: str, tls_creds_id: str) -> None:
    """Detach the NBD node and its credentials (idempotent; stop the mirror first)."""
    try:
        if node_name in await _node_names(qmp):
            await qmp.execute("blockdev-del", {"node-name": node_name})
        if tls_creds_id in await qmp.object_ids():
            await qmp.execute("object-del", {"id": tls_creds_id})
    except QmpError as exc:
        raise MirrorError(f"detach NBD target {node_name!r}", exc.reason) from exc


async def start_mirror(
    qmp: Qmp,
    device_node: str,
    target_node: str,
    job_id: str,
    *,
    rate_limit_mib_s: float = 0.0,
) -> None:
    """Mirror ``device_node`` (a -drive id such as 'disk0', or a node name) to the target.

    Idempotent: a job ``job_id`` still running is left alone; one that
    ended (failed or stopped) is dismissed and replaced by a new full copy.
    """
    args = mirror_args(device_node, target_node, job_id, rate_limit_mib_s)
    operation = f"start mirror {job_id!r} of {device_node!r}"
    try:
        job = await _find_job(qmp, job_id)
        if job is not None and not _ended(job):
            log.debug("disk mirror %r: already running", job_id)
            return
        if job is not None:
            await qmp.execute("job-dismiss", {"id": job_id})
        await qmp.execute("blockdev-mirror", args)
    except QmpError as exc:
        raise MirrorError(operation, exc.reason) from exc
    log.info("disk mirror %r: %r => %r started (full copy, write-blocking)", job_id, device_node,
             target_node)


async def mirror_state(
    qmp: Qmp,
    job_id: str,
    previous: MirrorState | None = None,
    *,
    stall_after_s: float = STALL_AFTER_S,
) -> MirrorState:
    """Sample the job now; pass the previous sample for an ETA and stall detection."""
    try:
        job = await _find_job(qmp, job_id)
    except QmpError as exc:
        raise MirrorError(f"query mirror {job_id!r}", exc.reason) from exc
    return mirror_state_from(job, previous, asyncio.get_running_loop().time(), stall_after_s)


async def break_target(qmp: Qmp, target_node: str) -> bool:
    """Cut the NBD connection so stuck requests fail now; False if there was none.

    The node stays attached but will not reconnect: stop the mirror,
    detach and attach the target again, and start a new mirror.
    """
    instance = {"type": "block-node", "node-name": target_node}
    try:
        instances = await qmp.execute("query-yank")
        if not isinstance(instances, list) or instance not in instances:
            return False
        await qmp.execute("yank", {"instances": [instance]})
    except QmpError as exc:
        raise MirrorError(f"break connection of {target_node!r}", exc.reason) from exc
    log.warning("disk mirror: connection of NBD target %r cut", target_node)
    return True


async def stop_mirror(qmp: Qmp, job_id: str, target_node: str, timeout_s: float = 30.0) -> bool:
    """End the mirror job (idempotent); True if the target holds a complete copy.

    An in-sync mirror is cancelled gently, which leaves the target equal to
    the source. Otherwise, or if the gentle cancel does not finish within
    ``timeout_s`` (target lost meanwhile), the target connection is cut
    first so the cancel cannot block QEMU, and the copy is incomplete.
    """
    operation = f"stop mirror {job_id!r}"
    try:
        job = await _find_job(qmp, job_id)
        if job is None:
            return False
        complete = False
        if not _ended(job) and job.get("ready") and not _in_sync(job):
            job = await _wait_in_sync(qmp, job_id, IN_FLIGHT_WAIT_S)  # writes in flight when sampled
        if job is not None and not _ended(job) and _in_sync(job):
            await qmp.execute("block-job-cancel", {"device": job_id})
            job = await _wait_ended(qmp, job_id, timeout_s)
            complete = job is not None and _ended(job) and not job.get("error")
        if job is not None and not _ended(job):
            await break_target(qmp, target_node)
            await qmp.execute("block-job-cancel", {"device": job_id, "force": True})
            job = await _wait_ended(qmp, job_id, timeout_s)
            if job is not None and not _ended(job):
                raise MirrorError(operation, f"job did not end within {timeout_s:g} s")
        if job is not None:
            await qmp.execute("job-dismiss", {"id": job_id})
    except QmpError as exc:
        raise MirrorError(operation, exc.reason) from exc
    log.info("disk mirror %r: stopped (target %s)", job_id,
             "complete" if complete else "incomplete")
    return complete


async def _find_job(qmp: Qmp, job_id: str) -> Mapping[str, object] | None:
    jobs = await qmp.execute("query-block-jobs")
    if not isinstance(jobs, list):
        raise MirrorError(f"query mirror {job_id!r}", f"unexpected answer {jobs!r}")
    for job in jobs:
        if isinstance(job, Mapping) and job.get("device") == job_id:
            return job
    return None


async def _wait_in_sync(qmp: Qmp, job_id: str, timeout_s: float) -> Mapping[str, object] | None:
    """Poll (bounded) until a ready job has copied everything, or stops making progress
    (a lost target: waiting would only delay the caller); the last sample."""
    job = await _find_job(qmp, job_id)
    progress_at, offset = 0, -1
    for i in range(int(timeout_s / _POLL_INTERVAL_S)):
        if job is None or _ended(job) or _in_sync(job):
            break
        if _int(job.get("offset")) > offset:
            progress_at, offset = i, _int(job.get("offset"))
        elif i - progress_at >= _NO_PROGRESS_POLLS:
            break
        await asyncio.sleep(_POLL_INTERVAL_S)
        job = await _find_job(qmp, job_id)
    return job


async def _wait_ended(qmp: Qmp, job_id: str, timeout_s: float) -> Mapping[str, object] | None:
    """Poll (bounded) until the job concluded; the last sample (None once gone)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    job = await _find_job(qmp, job_id)
    for _ in range(int(timeout_s / _POLL_INTERVAL_S) + 1):
        if job is None or _ended(job) or loop.time() >= deadline:
            break
        await asyncio.sleep(_POLL_INTERVAL_S)
        job = await _find_job(qmp, job_id)
    return job


async def _node_names(qmp: Qmp) -> set[str]:
    nodes = await qmp.execute("query-named-block-nodes", {"flat": True})
    if not isinstance(nodes, list):
        return set()
    return {str(n.get("node-name")) for n in nodes if isinstance(n, Mapping)}


def _ended(job: Mapping[str, object]) -> bool:
    return str(job.get("status")) in _ENDED


def _in_sync(job: Mapping[str, object]) -> bool:
    return bool(job.get("ready")) and _int(job.get("offset")) >= _int(job.get("len"))


def _eta(remaining: int, offset: int, previous: MirrorState | None, now_s: float) -> float | None:
    """Remaining bytes over the rate since the previous sample; None without progress."""
    if previous is None or previous.status in ("absent", "stopped", "failed"):
        return None
    elapsed = now_s - previous.sampled_at_s
    copied = offset - previous.offset_bytes
    if elapsed <= 0 or copied <= 0:
        return None
    return remaining / (copied / elapsed)


def _check_name(operation: str, label: str, value: str) -> None:
    if not _NODE_NAME_RE.match(value):
        raise MirrorError(
            operation,
            f"{label} {value!r} must be 1-31 letters, digits, '_', '.' or '-', "
            "starting with a letter",
        )


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
