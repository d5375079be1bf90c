"""DRBD 8.4's /proc/drbd as data: per minor, the connection, roles, disk states, what is out of sync, and a
running resync's progress.

Why /proc/drbd and not `drbdsetup events2` (storage.drbdstatus): the 8.4 kernel module, which Debian's
kernels carry, reports no resync progress through events2 (no `done:`, no ETA), while /proc/drbd has the
kernel's own counters: `oos:` (KiB out of sync), `sync'ed: P%` and `finish: H:MM:SS speed: N (M) K/sec`.
A minor looks like this (the progress lines only while a resync runs):

     3: cs:SyncSource ro:Primary/Secondary ds:UpToDate/Inconsistent C r-----
        ns:448 nr:0 dw:0 dr:448 al:8 bm:0 lo:0 pe:0 ua:0 ap:0 ep:1 wo:f oos:65088
            [=>..................] sync'ed: 11.8% (65088/65536)K
            finish: 0:01:21 speed: 448 (448) K/sec

An unconfigured minor reads `cs:Unconfigured` and has no other fields.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from storage.errors import StorageError

_MINOR_RE = re.compile(r"^ *(\d+): cs:(\S+)(.*?)(?=^ *\d+: cs:|\Z)", re.MULTILINE | re.DOTALL)
_FIELD_RE = re.compile(r"\b(ro|ds|oos):(\S+)")
_SYNCED_RE = re.compile(r"sync'ed:\s*([\d.]+)%")
# After the protocol, r (I/O running) or s (suspended); a StandAlone minor has a blank where its protocol goes.
_IO_FLAGS_RE = re.compile(r"\bds:\S+ [ABC ] ([rs])")
_FINISH_RE = re.compile(r"finish: (\d+):(\d\d):(\d\d) speed: ([\d,]+)")
SYNC_STATES = frozenset({"SyncSource", "SyncTarget", "PausedSyncS", "PausedSyncT", "StartingSyncS",
                         "StartingSyncT", "WFBitMapS", "WFBitMapT", "WFSyncUUID"})


class ProcDrbdError(StorageError, ValueError):
    """/proc/drbd says something this parser does not understand (says where)."""


@dataclass(frozen=True)
class MinorState:
    """One configured minor as /proc/drbd shows it on this node."""

    minor: int
    connection: str  # cs: Connected, WFConnection, StandAlone, SyncSource, ...
    role: str  # this node's: Primary, Secondary
    peer_role: str  # Unknown when not connected
    disk: str  # this node's: UpToDate, Inconsistent, Outdated, Diskless, ...
    peer_disk: str  # DUnknown when not connected
    out_of_sync_kib: int
    percent: float | None = None  # a running resync's progress
    eta_s: float | None = None
    speed_kib_s: int | None = None
    io_suspended: bool = False  # frozen: a primary whose fence-peer handler has not (yet) outdated its peer

    @property
    def in_sync(self) -> bool:
        """Connected and both copies current: every write the guest sees done is on both nodes."""
        return self.connection == "Connected" and self.disk == "UpToDate" and self.peer_disk == "UpToDate"

    @property
    def syncing(self) -> bool:
        return self.connection in SYNC_STATES


def parse_proc_drbd(text: str) -> dict[int, MinorState]:
    """Every configured minor in the text of /proc/drbd (unconfigured ones left out)."""
    minors: dict[int, MinorState] = {}
    for match in _MINOR_RE.finditer(text):
        minor, connection, rest = int(match[1]), match[2], match[3]
        if connection == "Unconfigured":
            continue
        fields = dict(_FIELD_RE.findall(rest))
        try:
            role, peer_role = fields["ro"].split("/", 1)
            disk, peer_disk = fields["ds"].split("/", 1)
            oos = int(fields.get("oos", "0"))
        except (KeyError, ValueError) as exc:
            raise ProcDrbdError(f"/proc/drbd minor {minor}: no ro:/ds: pair in {rest.strip()[:80]!r}") from exc
        synced, finish = _SYNCED_RE.search(rest), _FINISH_RE.search(rest)
        eta = speed = None
        if finish is not None:
            eta = float(int(finish[1]) * 3600 + int(finish[2]) * 60 + int(finish[3]))
            speed = int(finish[4].replace(",", ""))
        flags = _IO_FLAGS_RE.search(rest)
        minors[minor] = MinorState(minor, connection, role, peer_role, disk, peer_disk, oos,
                                   float(synced[1]) if synced else None, eta, speed,
                                   io_suspended=bool(flags and flags[1] == "s"))
    return minors
