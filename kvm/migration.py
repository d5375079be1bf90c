"""Live migration of a running QEMU to another node, over QMP.

The flow, driven by the agent (hostagent.node.replication):

1. The destination QEMU starts with the instance's usual spec plus
   ``InstanceSpec(incoming=migration_uri(address, port))``: it listens
   before it daemonizes, so a port already taken fails its start instead
   of the migration.
2. ``migrate_to_switchover`` sends the RAM with QEMU's
   ``pause-before-switchover`` capability on, and returns once QEMU has
   paused the guest on the source with everything sent.
   ``max-bandwidth`` is always set from the operator's limit, because
   QEMU's default cap (128 MiB/s) dominates migration time on fast links;
   progress is polled with ``query-migrate`` and handed to a callback
   (transferred/remaining MiB, throughput, ETA); QEMU's MIGRATION events
   wake the poll, so the pause (the guest stopped) is seen the moment
   it starts.
3. The caller hands over what the destination needs (the mirror
   template ends its disk mirror and the secondary's export, which holds
   the image lock).
4. ``complete_switchover`` lets QEMU finish (the result carries the
   downtime QEMU measured), or ``cancel_migration`` resumes the guest on
   the source.

A failed or timed-out migration is cancelled and raises
``MigrationFailed``: the source keeps running where it was. A migration
that reaches the pause while the timeout fires counts as arrived.

After completion the source sits paused (run state ``finish-migrate``,
then ``postmigrate``), holding its disks open; the caller quits it once the destination reports
``running``. After a failure the caller stops the destination QEMU, which
either exited by itself (broken stream) or still waits for a connection.

Errors: ``InvalidMigrationAddress`` (a ValueError: bad address or port),
``MigrationFailed`` (carrying the destination URI, the reason and the
last migration status; QMP failures are translated into it).
"""

import asyncio
import ipaddress
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from kvm.qmp import Qmp, QmpError

log = logging.getLogger(__name__)

MIB = 1024 * 1024
_MEGABIT = 1_000_000 / 8  # QEMU's "mbps" is decimal megabits per second
_TERMINAL = ("completed", "failed", "cancelled")
_CANCEL_WAIT_S = 10.0
_FIGURES_WAIT_S = 0.005
# Where migrate_to_switchover stops: the pause, or "completed" if another QMP
# client let it continue; the guest then runs on the destination and must never
# be reported as still running on the source.
_ARRIVED = ("pre-switchover", "completed")


class InvalidMigrationAddress(ValueError):
    """A migration endpoint QEMU could not listen on or connect to."""

    def __init__(self, address: str, port: int, reason: str) -> None:
        self.address = address
        self.port = port
        self.reason = reason
        super().__init__(f"migration address {address!r} port {port}: {reason}")


class MigrationFailed(Exception):
    """Migration to ``dest_uri`` did not complete; the guest still runs on the source."""

    def __init__(self, dest_uri: str, reason: str, status: str = "") -> None:
        self.dest_uri = dest_uri
        self.reason = reason
        self.status = status
        super().__init__(
            f"migration to {dest_uri} failed: {reason} "
            "(the instance keeps running on the source node)"
        )


@dataclass(frozen=True)
class MigrationProgress:
    """One ``query-migrate`` sample, in operator units."""

    status: str
    elapsed_s: float
    transferred_mib: float
    remaining_mib: float
    total_mib: float
    throughput_mib_s: float
    eta_s: float | None
    passes: int


@dataclass(frozen=True)
class MigrationResult:
    """A completed migration: wall time, guest pause, volume and mean rate."""

    total_s: float
    downtime_ms: int
    transferred_mib: float
    throughput_mib_s: float


ProgressCallback = Callable[[MigrationProgress], None]


def migration_uri(address: str, port: int) -> str:
    """QEMU's ``tcp:`` URI for an IP literal (IPv6 in brackets)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError as exc:
        raise InvalidMigrationAddress(address, port, "not an IP address literal") from exc
    if not 0 < port < 65536:
        raise InvalidMigrationAddress(address, port, "port must be 1-65535")
    host = f"[{ip}]" if ip.version == 6 else str(ip)
    return f"tcp:{host}:{port}"


def migration_parameters(max_bandwidth_mib_s: float) -> dict[str, object]:
    """``migrate-set-parameters`` arguments for the operator's bandwidth limit."""
    if max_bandwidth_mib_s <= 0:
        raise ValueError(f"max_bandwidth_mib_s must be positive, got {max_bandwidth_mib_s:g}")
    return {"max-bandwidth": int(max_bandwidth_mib_s * MIB)}


def parse_progress(info: Mapping[str, object]) -> MigrationProgress:
    """A ``query-migrate`` answer as progress; fields QEMU omits count as zero."""
    ram = info.get("ram")
    ram = ram if isinstance(ram, Mapping) else {}
    throughput = _number(ram.get("mbps")) * _MEGABIT / MIB
    remaining = _number(ram.get("remaining")) / MIB
    return MigrationProgress(
        status=str(info.get("status", "none")),
        elapsed_s=_number(info.get("total-time")) / 1000,
        transferred_mib=_number(ram.get("transferred")) / MIB,
        remaining_mib=remaining,
        total_mib=_number(ram.get("total")) / MIB,
        throughput_mib_s=throughput,
        eta_s=remaining / throughput if throughput > 0 else None,
        passes=int(_number(ram.get("dirty-sync-count"))),
    )


def parse_result(info: Mapping[str, object]) -> MigrationResult:
    """The figures of a ``completed`` ``query-migrate`` answer."""
    progress = parse_progress(info)
    total_s = progress.elapsed_s
    return MigrationResult(
        total_s=total_s,
        downtime_ms=int(_number(info.get("downtime"))),
        transferred_mib=progress.transferred_mib,
        throughput_mib_s=progress.transferred_mib / total_s if total_s > 0 else 0.0,
    )


async def migrate_to_switchover(
    qmp_source: Qmp,
    dest_uri: str,
    max_bandwidth_mib_s: float,
    progress_cb: ProgressCallback | None,
    timeout_s: float,
    *,
    poll_interval_s: float = 0.25,
) -> MigrationProgress:
    """Migrate until QEMU pauses the guest just before the destination takes over.

    The guest is then paused on the source with all its RAM sent: the
    caller hands over what the destination needs (the mirror template
    stops its disk mirror and the secondary's export, which holds the
    image lock) and calls ``complete_switchover``, or ``cancel_migration``
    to resume the guest on the source. ``progress_cb`` gets every sample
    taken on the way. Raises MigrationFailed (after ``migrate_cancel``) on
    failure or when the pause is not reached within ``timeout_s``; the
    source then still runs.
    """
    info = await _drive(qmp_source, dest_uri, max_bandwidth_mib_s, progress_cb, timeout_s,
                        poll_interval_s)
    return parse_progress(info)


async def use_tls(qmp_source: Qmp, creds_id: str, tls_dir: str) -> None:
    """Send the migration stream over TLS with the x509 client credentials in ``tls_dir``.

    The destination's certificate is checked against the address in the URI,
    and the destination accepts only its configured client (kvm.cmdline).
    """
    try:
        if creds_id not in await qmp_source.object_ids():
            await qmp_source.execute("object-add", {"qom-type": "tls-creds-x509", "id": creds_id, "dir": tls_dir,
                                                    "endpoint": "client", "verify-peer": True})
        await qmp_source.execute("migrate-set-parameters", {"tls-creds": creds_id})
    except QmpError as exc:
        raise MigrationFailed("destination", f"TLS credentials: {exc.reason}") from exc


async def complete_switchover(qmp_source: Qmp, timeout_s: float = 30.0,
                              poll_interval_s: float = 0.05) -> MigrationResult:
    """Let a migration paused before switchover finish; the destination then runs."""
    try:
        await qmp_source.execute("migrate-continue", {"state": "pre-switchover"})
        for _ in range(int(timeout_s / poll_interval_s) + 1):
            info = await _query(qmp_source, "destination")
            status = str(info.get("status", "none"))
            if status == "completed" and info.get("total-time"):
                return _completed("destination", info)
            if status == "completed":  # QEMU sets the status a moment before its figures: ask again
                await asyncio.sleep(_FIGURES_WAIT_S)
                continue
            if status in ("failed", "cancelled"):
                raise MigrationFailed("destination", str(info.get("error-desc") or status), status)
            await _next_change(qmp_source, poll_interval_s)
    except QmpError as exc:
        raise MigrationFailed("destination", f"switchover: {exc.reason}") from exc
    raise MigrationFailed("destination", f"switchover not done within {timeout_s:g} s", "device")


async def cancel_migration(qmp_source: Qmp, timeout_s: float = _CANCEL_WAIT_S,
                           poll_interval_s: float = 0.1) -> str:
    """Cancel any migration and make sure the guest runs on the source; returns the final status."""
    status = "none"
    try:
        await qmp_source.execute("migrate_cancel")
        for _ in range(int(timeout_s / poll_interval_s) + 1):
            status = str((await _query(qmp_source, "destination")).get("status", "none"))
            if status in (*_TERMINAL, "none"):
                break
            await asyncio.sleep(poll_interval_s)
        if status != "completed" and await qmp_source.status() == "paused":
            await qmp_source.execute("cont")
    except QmpError as exc:
        raise MigrationFailed("destination", f"cancel: {exc.reason}", status) from exc
    return status


async def _drive(
    qmp_source: Qmp,
    dest_uri: str,
    max_bandwidth_mib_s: float,
    progress_cb: ProgressCallback | None,
    timeout_s: float,
    poll_interval_s: float,
) -> Mapping[str, object]:
    """Start the migration with the pause before switchover and poll it there; the final sample."""
    params = migration_parameters(max_bandwidth_mib_s)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    try:
        before = await _query(qmp_source, dest_uri)
        status = str(before.get("status", "none"))
        if "status" in before and status not in _TERMINAL:
            raise MigrationFailed(
                dest_uri, f"another migration is in progress ({status}); wait for it or "
                "cancel it", status
            )
        await qmp_source.execute("migrate-set-capabilities", {"capabilities": [
            {"capability": "pause-before-switchover", "state": True},
            {"capability": "events", "state": True}]})
        await qmp_source.execute("migrate-set-parameters", params)
        await qmp_source.execute("migrate", {"uri": dest_uri})
        log.info("migration to %s started (max %g MiB/s)", dest_uri, max_bandwidth_mib_s)
        for _ in range(int(timeout_s / poll_interval_s) + 2):
            info = await _query(qmp_source, dest_uri)
            status = str(info.get("status", "none"))
            if status in _ARRIVED:
                return info
            if status in ("failed", "cancelled"):
                reason = str(info.get("error-desc") or f"QEMU reported {status}")
                raise MigrationFailed(dest_uri, reason, status)
            if progress_cb is not None:
                progress_cb(parse_progress(info))
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            await _next_change(qmp_source, min(poll_interval_s, remaining))
    except MigrationFailed:
        raise
    except QmpError as exc:
        await _cancel_quietly(qmp_source)
        raise MigrationFailed(dest_uri, exc.reason) from exc
    except BaseException:
        # The caller was cancelled or the callback broke: never leave a
        # migration running that nobody watches.
        await _cancel_quietly(qmp_source)
        raise
    return await _cancel_after_timeout(qmp_source, dest_uri, timeout_s, poll_interval_s)


async def _cancel_after_timeout(
    qmp: Qmp, dest_uri: str, timeout_s: float, poll_interval_s: float
) -> Mapping[str, object]:
    """Cancel, then wait (bounded) for QEMU to settle: cancelled, failed or arrived."""
    log.warning("migration to %s: not done within %g s, cancelling", dest_uri, timeout_s)
    reason = f"not finished within {timeout_s:g} s; cancelled"
    status = "unknown"
    try:
        await qmp.execute("migrate_cancel")
        for _ in range(int(_CANCEL_WAIT_S / poll_interval_s) + 1):
            info = await _query(qmp, dest_uri)
            status = str(info.get("status", "none"))
            if status in _ARRIVED:
                return info
            if status in _TERMINAL:
                raise MigrationFailed(dest_uri, reason, status)
            await asyncio.sleep(poll_interval_s)
    except QmpError as exc:
        raise MigrationFailed(dest_uri, f"{reason}, then QMP failed: {exc.reason}") from exc
    raise MigrationFailed(
        dest_uri,
        f"{reason}, but QEMU still reports {status!r} after {_CANCEL_WAIT_S:g} s; "
        "check the source QEMU",
        status,
    )


def _completed(dest_uri: str, info: Mapping[str, object]) -> MigrationResult:
    result = parse_result(info)
    log.info(
        "migration to %s completed in %.2f s, downtime %d ms, %.1f MiB at %.1f MiB/s",
        dest_uri, result.total_s, result.downtime_ms, result.transferred_mib,
        result.throughput_mib_s,
    )
    return result


async def _next_change(qmp: Qmp, timeout_s: float) -> None:
    """Until QEMU sends an event (a MIGRATION status change, with the ``events`` capability on) or
    ``timeout_s`` passes: the guest is paused from the moment QEMU reaches the pause before switchover,
    so that moment must be seen at once, not at the next poll."""
    await qmp.next_event(timeout_s)


async def _query(qmp: Qmp, dest_uri: str) -> Mapping[str, object]:
    info = await qmp.execute("query-migrate")
    if not isinstance(info, Mapping):
        raise MigrationFailed(dest_uri, f"query-migrate gave an unexpected answer {info!r}")
    return info


async def _cancel_quietly(qmp: Qmp) -> None:
    """Best effort after a QMP error: the connection itself may be what failed."""
    try:
        await qmp.execute("migrate_cancel")
    except QmpError as exc:
        log.debug("migrate_cancel after a QMP error: %s", exc.reason)


def _number(value: object) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0
