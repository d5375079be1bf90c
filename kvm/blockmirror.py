"""The primary's side of the `mirror` template: a write is done only once both copies have it.

Each replicated disk is a ``quorum`` node (``disk<i>``, kvm.cmdline) with
``vote-threshold=2`` and ``read-pattern=fifo`` over two children: the local
image and the peer. The peer is the secondary's NBD export
(``kvm.nbdexport``) once that copy is complete, and a ``null-co`` sink
until then. The guest's device has ``werror=stop``: a write or flush that
either child cannot take fails in the quorum, QEMU pauses the guest
(status ``io-error``) and keeps the request for a retry at ``cont``.
So no write the secondary lacks is ever acknowledged to the guest while
the secondary's copy is a quorum child.

Getting a copy there: ``start_mirror`` runs a ``blockdev-mirror`` job from
``disk<i>`` to the NBD node (``sync=full``, then ``copy-mode=write-blocking``);
once it is ready with nothing left to copy, ``join_peer`` pauses the guest,
ends the job gently (the target now equals the source), puts the NBD node
in the sink's place and resumes: the copy is in sync from then on, by
construction, not by judging a job's counters.

Losing it: ``leave_peer`` cuts the NBD connection (QMP ``yank``: requests
stuck on a hung secondary fail at once), puts a sink back and removes the
NBD node; ``cont`` then retries the held writes on the local copy alone.
The caller must have had the copy recorded out of date first.

Behaviour measured with QEMU 7.2 (tests/integration/test_kvm_blockmirror.py):

- export killed (connection reset): the write fails in the quorum at once,
  events QUORUM_REPORT_BAD (the NBD node), BLOCK_IO_ERROR (action stop),
  STOP; status ``io-error``; the guest's write stays pending.
- secondary hung (process stopped, partition): the write waits, the guest
  keeps running, QMP answers; ``yank`` on the NBD node fails the stuck
  requests within milliseconds, which then pauses the guest as above. The
  wait shows in the virtio-blk queues (``queue_progress``: requests in use,
  none completed), which is how the agent notices a hang.
- join: pause, cancel, two ``x-blockdev-change`` and resume take ~5 ms;
  leave and ``cont`` ~0.1 s.
- ``blockdev-mirror`` needs a root node as its source (the quorum, not
  the local image below it); quorum children are named ``children.<n>``
  with ``n`` growing, found in ``x-debug-query-block-graph``.
- With ``reconnect-delay`` above 0 a reset connection holds requests, but
  ``yank`` does not release them and a forced ``block-job-cancel`` then
  crashed QEMU in 2 of 3 runs: the NBD node keeps ``reconnect-delay`` 0.
- ``block-job-cancel`` while a request is stuck blocks QEMU's main loop,
  so ``stop_mirror`` yanks the target before cancelling a job not in sync.

Job states (``MirrorState.status``, while a copy is being made):
``syncing`` (first copy), ``converged`` (ready, nothing left: join it),
``resyncing`` (ready, catching up), ``degraded`` (no progress for
``stall_after_s``), ``stalled`` (no progress and the job idle: a hung
secondary blocks guest writes; call ``break_target``), ``stopping``,
``stopped``, ``failed``, ``absent``. None of them is "in sync": only a
joined peer is (``peer_state``).

Errors: ``MirrorError`` (operation, reason), QMP failures included.
"""

import asyncio
import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from kvm.cmdline import sink_node
from kvm.qmp import Qmp, QmpError

log = logging.getLogger(__name__)

MIB = 1024 * 1024
STALL_AFTER_S = 3.0
# The rate behind an ETA is smoothed over about this long: a throttled copy moves in bursts, so the
# rate between two samples jumps between nothing and twice the limit (an ETA of 6 s, then 47 min).
# A job's first interval is left out: a full copy begins by zeroing its target, unthrottled, which QEMU
# counts as progress, and an average that began there would over-read for three time constants.
RATE_TAU_S = 5.0
# The rate a report shows is the bytes over the samples of about this long: between two samples only, a
# report sent early (after an order) turned one 16 MiB burst into a rate of twice the limit, held until the next.
RATE_WINDOW_S = 3.0
# A ready write-blocking job counts a guest write before it completes on both sides, so a
# sample may show a little left to copy; stopping waits this long for those writes.
IN_FLIGHT_WAIT_S = 5.0
JOIN_TIMEOUT_S = 5.0  # ending a converged job at the join; longer means the secondary hangs
_NO_PROGRESS_POLLS = 5
_NODE_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,30}\Z")
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
    rate_bps: float | None = None  # copy rate smoothed over about RATE_TAU_S; None until it moved
    intervals: int = 0  # sample intervals of this job so far
    recent: tuple[tuple[float, int], ...] = ()  # (time, offset) of this job's samples of the last RATE_WINDOW_S

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
    fresh = previous is None or previous.status in ("absent", "stopped", "failed") or offset < previous.offset_bytes
    intervals = 0 if fresh or previous is None else previous.intervals + 1
    rate = _smoothed_rate(offset, previous, now_s) if intervals >= 2 else None
    kept = () if fresh or previous is None else previous.recent
    recent = (*[(t, o) for t, o in kept if now_s - t <= RATE_WINDOW_S or (t, o) == kept[-1]], (now_s, offset))
    eta = remaining / rate if rate else None
    if qemu_status in _ENDED:
        status, eta = ("failed" if error and error != _CANCELED else "stopped"), None
    elif qemu_status in _STOPPING:
        status = "stopping"
    elif ready and remaining == 0:
        status, eta = "converged", 0.0
    elif now_s - progressed_at >= stall_after_s:
        hung = not busy and previous is not None and not previous.busy
        status, eta = ("stalled" if hung else "degraded"), None
    else:
        status = "resyncing" if ready else "syncing"
    return MirrorState(
        status, percent, eta, ready, offset, length, busy, error, now_s, progressed_at, rate, intervals, recent
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


async def set_speed(qmp: Qmp, job_id: str, rate_limit_mib_s: float) -> bool:
    """Change how fast the block job ``job_id`` (a mirror, or a resync round) copies in the background
    (0: no limit); False when no such job is running. Guest writes are never throttled."""
    if rate_limit_mib_s < 0:
        raise MirrorError(f"set the speed of {job_id!r}", f"rate limit {rate_limit_mib_s:g} MiB/s is negative")
    try:
        job = await _find_job(qmp, job_id)
        if job is None or _ended(job):
            return False
        # A positive limit below one byte/s would read as 0, "no limit": at least 1.
        speed = max(1, int(rate_limit_mib_s * MIB)) if rate_limit_mib_s > 0 else 0
        await qmp.execute("block-job-set-speed", {"device": job_id, "speed": speed})
    except QmpError as exc:
        raise MirrorError(f"set the speed of {job_id!r}", exc.reason) from exc
    log.debug("block job %r: speed %s", job_id, f"{rate_limit_mib_s:g} MiB/s" if rate_limit_mib_s else "unlimited")
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


def quorum_children(graph: Mapping[str, object], quorum: str) -> dict[str, str]:
    """Node name -> child name ('children.<n>') of the quorum node ``quorum``, from
    ``x-debug-query-block-graph``."""
    nodes = graph.get("nodes")
    edges = graph.get("edges")
    if not isinstance(nodes, list) or not isinstance(edges, list):
        return {}
    names = {n.get("id"): str(n.get("name")) for n in nodes if isinstance(n, Mapping)}
    return {names.get(e.get("child"), ""): str(e.get("name")) for e in edges
            if isinstance(e, Mapping) and names.get(e.get("parent")) == quorum}


@dataclass(frozen=True)
class PeerState:
    """Where the copy on the other node stands in the quorum of one disk.

    ``joined``: the NBD node is a child and the sink is not: every write the
    guest was told is done is on the secondary. ``blocked``: joined, and the
    guest is paused on a write error (a write waits for the outdate).
    """

    joined: bool
    blocked: bool


async def peer_state(qmp: Qmp, index: int, target: str) -> PeerState:
    """Read the quorum of disk ``index`` and QEMU's run state."""
    try:
        graph = await qmp.execute("x-debug-query-block-graph")
        children = quorum_children(graph if isinstance(graph, Mapping) else {}, f"disk{index}")
        joined = target in children and sink_node(index) not in children
        blocked = joined and await qmp.status() == "io-error"
    except QmpError as exc:
        raise MirrorError(f"read the quorum of disk{index}", exc.reason) from exc
    return PeerState(joined, blocked)


async def join_peer(qmp: Qmp, index: int, job_id: str, target: str) -> float | None:
    """Make the mirror's target a quorum child in the sink's place; the guest's pause in s.

    None (nothing changed, the mirror goes on) unless the job is ready with
    nothing left to copy. The guest is paused for the switch so that no
    write falls between the end of the job and the join; it is resumed
    whatever happens, unless it was not running to begin with.
    """
    operation = f"join the copy of disk{index}"
    loop = asyncio.get_running_loop()
    try:
        job = await _find_job(qmp, job_id)
        if job is None or _ended(job) or not _in_sync(job):
            return None
        running = await qmp.status() == "running"
        began = loop.time()
        if running:
            await qmp.execute("stop")
        try:
            job = await _find_job(qmp, job_id)
            if job is None or _ended(job) or not _in_sync(job):
                return None
            await qmp.execute("block-job-cancel", {"device": job_id})
            job = await _wait_ended(qmp, job_id, JOIN_TIMEOUT_S)
            if job is None or not _ended(job) or job.get("error"):
                log.warning("disk mirror %r: did not end cleanly at the join (%s); the copy is not joined",
                            job_id, "hung" if job is not None and not _ended(job) else job and job.get("error"))
                if job is not None and not _ended(job):
                    await break_target(qmp, target)
                    await qmp.execute("block-job-cancel", {"device": job_id, "force": True})
                    await _wait_ended(qmp, job_id, JOIN_TIMEOUT_S)
                return None
            await qmp.execute("job-dismiss", {"id": job_id})
            await swap_in_peer(qmp, index, target)
        finally:
            if running:
                await qmp.execute("cont")
    except QmpError as exc:
        raise MirrorError(operation, exc.reason) from exc
    pause = loop.time() - began
    log.info("disk mirror: the copy of disk%d joined its quorum (guest paused %.0f ms)", index, pause * 1000)
    return pause


async def swap_in_peer(qmp: Qmp, index: int, target: str) -> None:
    """Put ``target`` in the quorum of disk ``index`` in the sink's place: only once it equals the
    local copy, with the guest paused (QmpError otherwise passed on)."""
    await qmp.execute("x-blockdev-change", {"parent": f"disk{index}", "node": target})
    await _remove_child(qmp, index, sink_node(index))


async def leave_peer(qmp: Qmp, index: int, target: str, *, gentle: bool = False) -> bool:
    """Put a sink back in the quorum of disk ``index`` and drop the NBD node; True if it was joined.

    Only after the copy was recorded out of date (or, ``gentle``, with the
    guest paused and drained, when the copy is complete: a switchover).
    Without ``gentle`` the NBD connection is cut first, so that removing a
    hung child cannot block QEMU. Does not resume the guest.
    """
    operation = f"leave the copy of disk{index}"
    try:
        graph = await qmp.execute("x-debug-query-block-graph")
        children = quorum_children(graph if isinstance(graph, Mapping) else {}, f"disk{index}")
        joined = target in children and sink_node(index) not in children
        if sink_node(index) not in children:
            size = await _virtual_size(qmp, f"disk{index}")
            await qmp.execute("blockdev-add", {"driver": "null-co", "node-name": sink_node(index),
                                               "size": size})
            await qmp.execute("x-blockdev-change", {"parent": f"disk{index}", "node": sink_node(index)})
        if target in children:
            if not gentle:
                await break_target(qmp, target)
            await _remove_child(qmp, index, target)
    except QmpError as exc:
        raise MirrorError(operation, exc.reason) from exc
    if joined:
        log.info("disk mirror: the copy of disk%d left its quorum%s", index, "" if gentle else " (cut)")
    return joined


async def queue_progress(qmp: Qmp, index: int) -> tuple[tuple[int, int], ...] | None:
    """(requests in flight, requests completed) per virtqueue of disk ``index``'s virtio-blk device.

    A request in flight while the completed count stands still is a write
    waiting on a copy that does not answer (a hung secondary, or a network
    cut between the two nodes only): QEMU's NBD client has no I/O timeout.
    None when the disk is not on virtio (no such counters).
    """
    path = f"/machine/peripheral/disk{index}-dev/virtio-backend"
    try:
        devices = await qmp.execute("x-query-virtio")
        if not isinstance(devices, list) or path not in {d.get("path") for d in devices if isinstance(d, Mapping)}:
            return None
        status = await qmp.execute("x-query-virtio-status", {"path": path})
        queues = _int(status.get("num-vqs")) if isinstance(status, Mapping) else 0
        out = []
        for queue in range(queues):
            q = await qmp.execute("x-query-virtio-queue-status", {"path": path, "queue": queue})
            if isinstance(q, Mapping):
                out.append((_int(q.get("inuse")), _int(q.get("used-idx"))))
    except QmpError as exc:
        raise MirrorError(f"read the queues of disk{index}", exc.reason) from exc
    return tuple(out)


def stuck_since(samples: list[tuple[float, tuple[tuple[int, int], ...]]]) -> float | None:
    """When requests started waiting without any completing, from (time, queue_progress) samples
    oldest first; None if the latest sample shows none waiting or some completed since."""
    if not samples:
        return None
    since, latest = samples[-1]
    if not any(inuse for inuse, _ in latest):
        return None
    done = tuple(used for _, used in latest)
    for at, progress in reversed(samples[:-1]):
        if tuple(used for _, used in progress) != done or not any(inuse for inuse, _ in progress):
            break
        since = at
    return since


async def _remove_child(qmp: Qmp, index: int, node: str) -> None:
    """Take ``node`` out of the quorum of disk ``index`` and delete it."""
    graph = await qmp.execute("x-debug-query-block-graph")
    child = quorum_children(graph if isinstance(graph, Mapping) else {}, f"disk{index}").get(node)
    if child is not None:
        await qmp.execute("x-blockdev-change", {"parent": f"disk{index}", "child": child})
    if node in await _node_names(qmp):
        await qmp.execute("blockdev-del", {"node-name": node})


async def _virtual_size(qmp: Qmp, node: str) -> int:
    nodes = await qmp.execute("query-named-block-nodes", {"flat": True})
    for n in nodes if isinstance(nodes, list) else []:
        if isinstance(n, Mapping) and n.get("node-name") == node:
            image = n.get("image")
            if isinstance(image, Mapping):
                return _int(image.get("virtual-size"))
    raise MirrorError(f"size of {node!r}", "the node is not in QEMU's block graph")


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


def _smoothed_rate(offset: int, previous: MirrorState | None, now_s: float) -> float | None:
    """Bytes/s copied, an exponential average over about RATE_TAU_S; None before the job first moved."""
    if previous is None or previous.status in ("absent", "stopped", "failed"):
        return None
    elapsed = now_s - previous.sampled_at_s
    copied = offset - previous.offset_bytes
    if elapsed <= 0 or copied < 0:  # the same instant, or a new job under the same id
        return previous.rate_bps if copied >= 0 else None
    recent = copied / elapsed
    if previous.rate_bps is None:
        return recent if recent > 0 else None
    weight = 1.0 - math.exp(-elapsed / RATE_TAU_S)
    return previous.rate_bps + weight * (recent - previous.rate_bps)


def rate_mib_s(state: MirrorState) -> float | None:
    """MiB/s copied over the job's samples of the last RATE_WINDOW_S (at least two samples): what went through
    the link, as the master's pacing counts it; None when it cannot tell. The ETA uses the smoothed rate."""
    if len(state.recent) < 2:
        return None
    (t0, o0), (t1, o1) = state.recent[0], state.recent[-1]
    return round((o1 - o0) / (t1 - t0) / MIB, 1) if t1 > t0 else None


def _check_name(operation: str, label: str, value: str) -> None:
    if not _NODE_NAME_RE.match(value):
        raise MirrorError(
            operation,
            f"{label} {value!r} must be 1-31 letters, digits, '_', '.' or '-', "
            "starting with a letter",
        )


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
