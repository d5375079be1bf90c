"""DRBD 9 state as values: parsers for `drbdsetup status --json` and `events2`.

Pure: the agent runs drbdsetup and hands the text here, so the parsers test
on captured output and the master reasons on ResourceState values.

- One volume: a Corral resource has exactly one (volume 0). For a resource
  with several, the state reported is that of its lowest volume, and peer
  states are those of the peer devices of that volume.
- Resync ETA: from the out-of-sync amount (KiB) and DRBD's most recent rate
  window (`rs-db0-sectors` over `rs-dt0-ms`, else the older `db1`/`dt1`),
  both printed with `--statistics`; else DRBD's own estimate when printed;
  else None. Only while a resync actually runs (not when paused).
- events2 lines: `<event> <object> key:value ...`. Identity keys (name,
  peer-node-id, volume) are read by name, so `key:value` and `key=value`
  both parse; a change printed as `old->new` keeps the new value; a
  leading `--timestamps` stamp is skipped. `path` and `helper` objects and
  object kinds this module does not know are ignored, so a newer DRBD
  does not break the agent; a line that cannot be read raises
  DrbdStatusError naming its line number.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from storage.errors import StorageError

UP_TO_DATE = "UpToDate"
CONNECTED = "Connected"
IN_SYNC = "Established"
# Replication states of a resync in any phase; S: this node is the source.
_SYNC_TO_PEER = frozenset({"StartingSyncS", "WFBitMapS", "SyncSource", "PausedSyncS"})
_SYNC_FROM_PEER = frozenset(
    {"StartingSyncT", "WFBitMapT", "WFSyncUUID", "SyncTarget", "PausedSyncT"}
)
_RUNNING_SYNC = frozenset({"SyncSource", "SyncTarget"})
_EVENTS = frozenset({"exists", "create", "change", "destroy", "rename", "call", "response"})
_UPDATES = frozenset({"exists", "create", "change"})
_TIMESTAMP_RE = re.compile(r"\d{4}-\d\d-\d\dT\S+")
_KEY_RE = re.compile(r"([a-z0-9_-]+)[:=](.*)")
_SECTOR = 512
_NUMBERS = frozenset(
    {"done", "out-of-sync", "rs-db0-sectors", "rs-dt0-ms", "rs-db1-sectors", "rs-dt1-ms", "eta"}
)
_K = TypeVar("_K")


class DrbdStatusError(StorageError, ValueError):
    """drbdsetup output that cannot be read; ``where`` is the line or field."""

    def __init__(self, where: str, reason: str) -> None:
        self.where = where
        self.reason = reason
        super().__init__(
            f"cannot read DRBD status at {where}: {reason}; is this the output of "
            "drbdsetup 9 (`status --json` or `events2 --now`)?"
        )


@dataclass(frozen=True)
class PeerState:
    """This node's view of one peer of a resource."""

    node: str
    peer_node_id: int
    connection: str
    peer_role: str
    replication: str
    peer_disk: str
    percent_in_sync: float | None
    eta_s: float | None

    @property
    def connected(self) -> bool:
        return self.connection == CONNECTED

    @property
    def in_sync(self) -> bool:
        """Connected, replicating every write, and the peer's copy is current."""
        return self.connected and self.replication == IN_SYNC and self.peer_disk == UP_TO_DATE

    @property
    def syncing(self) -> bool:
        """A resync between this node and the peer is under way (maybe paused)."""
        return self.replication in _SYNC_TO_PEER or self.replication in _SYNC_FROM_PEER

    def summary(self) -> str:
        """One phrase in operator words, e.g. 'in sync with n2'."""
        if not self.connected:
            return f"disconnected from {self.node} ({self.connection})"
        if self.syncing:
            direction = "to" if self.replication in _SYNC_TO_PEER else "from"
            if self.replication in _RUNNING_SYNC:
                text = f"resyncing {direction} {self.node}"
            elif self.replication.startswith("Paused"):
                text = f"resync {direction} {self.node} paused"
            else:
                text = f"starting resync {direction} {self.node}"
            if self.percent_in_sync is not None:
                text += f": {self.percent_in_sync:.1f} %"
            if self.eta_s is not None:
                text += f", about {_duration(self.eta_s)} left"
            return text
        if self.in_sync:
            return f"in sync with {self.node}"
        if self.replication == IN_SYNC:
            return f"connected to {self.node}, its disk is {self.peer_disk}"
        return f"connected to {self.node} ({self.replication}), its disk is {self.peer_disk}"


@dataclass(frozen=True)
class ResourceState:
    """One DRBD resource as this node sees it: its role, its disk, its peers."""

    name: str
    role: str
    disk: str
    peers: tuple[PeerState, ...]
    minor: int | None = None

    @property
    def up_to_date(self) -> bool:
        """This node's disk and every peer's are current and connected.

        A resource with no peer configured has nothing to be behind.
        """
        return self.disk == UP_TO_DATE and all(p.in_sync for p in self.peers)

    @property
    def syncing(self) -> bool:
        return any(p.syncing for p in self.peers)

    def summary(self) -> str:
        """The state in operator words, e.g. 'in sync with n2'."""
        parts = [] if self.disk == UP_TO_DATE else [f"local disk {self.disk}"]
        parts += [p.summary() for p in self.peers] or ["no peer configured"]
        return "; ".join(parts)


def parse_status_json(text: str) -> list[ResourceState]:
    """Resources in the output of `drbdsetup status --json [--statistics] [all]`."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DrbdStatusError(f"line {exc.lineno} column {exc.colno}", exc.msg) from exc
    if not isinstance(data, list):
        raise DrbdStatusError("top level", f"expected a list of resources, got {_kind(data)}")
    return [_json_resource(item, f"resource[{i}]") for i, item in enumerate(data)]


def parse_events2(lines: Iterable[str]) -> list[ResourceState]:
    """Resources after folding `drbdsetup events2 --now [--statistics]` lines in order.

    `exists`/`create` add an object, `change` updates one, `destroy`
    removes one with what it contains, `rename` renames a resource.
    """
    fold = _Fold()
    for number, line in enumerate(lines, start=1):
        words = line.split()
        if words and _TIMESTAMP_RE.fullmatch(words[0]):
            words = words[1:]
        if not words:
            continue
        where = f"line {number}"
        if words[0] not in _EVENTS:
            raise DrbdStatusError(where, f"unknown event {words[0]!r} in {line.strip()!r}")
        if len(words) < 2:
            raise DrbdStatusError(where, f"event {words[0]!r} names no object")
        if words[1] == "-":
            continue
        pairs = _pairs(words[2:], where)
        _check_numbers(pairs, where)
        fold.apply(words[0], words[1], pairs, where)
    return fold.result()


@dataclass
class _Resource:
    state: dict[str, str]
    devices: dict[int, dict[str, str]] = field(default_factory=dict)
    connections: dict[int, dict[str, str]] = field(default_factory=dict)
    peer_devices: dict[tuple[int, int], dict[str, str]] = field(default_factory=dict)


class _Fold:
    """The objects events2 has reported so far, keyed as DRBD identifies them."""

    def __init__(self) -> None:
        self.resources: dict[str, _Resource] = {}

    def apply(self, event: str, kind: str, pairs: dict[str, str], where: str) -> None:
        if kind not in ("resource", "connection", "device", "peer-device"):
            return
        name = _need(pairs, "name", where)
        if kind == "resource":
            self._resource(event, name, pairs, where)
            return
        if event == "destroy" and name not in self.resources:
            return
        # A change for an object not seen yet (a stream joined late) creates it.
        res = self.resources.setdefault(name, _Resource({}))
        if kind == "connection":
            peer = _int(pairs, "peer-node-id", where)
            _update(res.connections, peer, event, pairs)
            if event == "destroy":
                _drop(res.peer_devices, lambda key: key[0] == peer)
        elif kind == "device":
            volume = _int(pairs, "volume", where)
            _update(res.devices, volume, event, pairs)
            if event == "destroy":
                _drop(res.peer_devices, lambda key: key[1] == volume)
        else:
            key = (_int(pairs, "peer-node-id", where), _int(pairs, "volume", where))
            _update(res.peer_devices, key, event, pairs)

    def _resource(self, event: str, name: str, pairs: dict[str, str], where: str) -> None:
        if event == "destroy":
            self.resources.pop(name, None)
        elif event == "rename":
            new_name = _need(pairs, "new_name", where)
            if name in self.resources:
                self.resources[new_name] = self.resources.pop(name)
        elif event in _UPDATES:
            self.resources.setdefault(name, _Resource({})).state.update(pairs)

    def result(self) -> list[ResourceState]:
        states = []
        for name, res in self.resources.items():
            where = f"resource {name!r}"
            volume = min(res.devices, default=0)
            device = res.devices.get(volume, {})
            peers = tuple(
                _events2_peer(peer, conn, res.peer_devices.get((peer, volume), {}), where)
                for peer, conn in sorted(res.connections.items())
            )
            states.append(
                ResourceState(
                    name=name,
                    role=res.state.get("role", "Unknown"),
                    disk=device.get("disk", "DUnknown"),
                    peers=peers,
                    minor=_int(device, "minor", where) if "minor" in device else None,
                )
            )
        return states


def _update(table: dict[_K, dict[str, str]], key: _K, event: str, pairs: dict[str, str]) -> None:
    if event == "destroy":
        table.pop(key, None)
    elif event in _UPDATES:
        table.setdefault(key, {}).update(pairs)


def _drop(
    table: dict[tuple[int, int], dict[str, str]], gone: Callable[[tuple[int, int]], bool]
) -> None:
    for key in [k for k in table if gone(k)]:
        del table[key]


def _events2_peer(
    peer_id: int, conn: dict[str, str], pdev: dict[str, str], where: str
) -> PeerState:
    replication = pdev.get("replication", "Off")
    done = pdev.get("done")
    return PeerState(
        node=conn.get("conn-name") or pdev.get("conn-name") or f"node-id {peer_id}",
        peer_node_id=peer_id,
        connection=conn.get("connection", "Unknown"),
        peer_role=conn.get("role", "Unknown"),
        replication=replication,
        peer_disk=pdev.get("peer-disk", "DUnknown"),
        percent_in_sync=_float(done, f"{where} peer {peer_id} done") if done else None,
        eta_s=_eta_s(replication, pdev, f"{where} peer {peer_id}", own_eta="eta"),
    )


def _json_resource(item: object, where: str) -> ResourceState:
    obj = _obj(item, where)
    devices = [
        _obj(d, f"{where}.devices[{i}]") for i, d in enumerate(_list(obj, "devices", where))
    ]
    device = min(devices, key=lambda d: _json_int(d, "volume", f"{where}.devices"), default=None)
    volume = _json_int(device, "volume", f"{where}.devices") if device is not None else 0
    peers = tuple(
        _json_peer(conn, volume, f"{where}.connections[{i}]")
        for i, conn in enumerate(_list(obj, "connections", where))
    )
    dev_where = f"{where}.devices"
    return ResourceState(
        name=_json_str(obj, "name", where),
        role=_json_str(obj, "role", where),
        disk=_json_str(device, "disk-state", dev_where) if device is not None else "DUnknown",
        peers=peers,
        minor=_json_int(device, "minor", dev_where) if device is not None else None,
    )


def _json_peer(raw: object, volume: int, where: str) -> PeerState:
    conn = _obj(raw, where)
    pdev: dict[str, Any] = {}
    pdev_where = where
    for j, item in enumerate(_list(conn, "peer_devices", where)):
        candidate_where = f"{where}.peer_devices[{j}]"
        candidate = _obj(item, candidate_where)
        if _json_int(candidate, "volume", candidate_where) == volume:
            pdev, pdev_where = candidate, candidate_where
            break
    replication = _json_str(pdev, "replication-state", pdev_where) if pdev else "Off"
    percent = pdev.get("percent-in-sync")
    if percent is not None and not _is_number(percent):
        raise DrbdStatusError(
            f"{pdev_where}.percent-in-sync", f"expected a number, got {_kind(percent)}"
        )
    return PeerState(
        node=_json_str(conn, "name", where),
        peer_node_id=_json_int(conn, "peer-node-id", where),
        connection=_json_str(conn, "connection-state", where),
        peer_role=_json_str(conn, "peer-role", where),
        replication=replication,
        peer_disk=_json_str(pdev, "peer-disk-state", pdev_where) if pdev else "DUnknown",
        percent_in_sync=float(percent) if percent is not None else None,
        eta_s=_eta_s(replication, pdev, pdev_where, own_eta="estimated-seconds-to-finish"),
    )


def _eta_s(replication: str, stats: Mapping[str, object], where: str, own_eta: str) -> float | None:
    """Seconds until the running resync ends, or None when DRBD gave no rate."""
    if replication not in _RUNNING_SYNC:
        return None
    left_kib = _stat(stats, "out-of-sync", where)
    for db_key, dt_key in (("rs-db0-sectors", "rs-dt0-ms"), ("rs-db1-sectors", "rs-dt1-ms")):
        db, dt = _stat(stats, db_key, where), _stat(stats, dt_key, where)
        if left_kib is not None and db and dt and db > 0 and dt > 0:
            bytes_per_ms = db * _SECTOR / dt
            return left_kib * 1024 / bytes_per_ms / 1000
    return _stat(stats, own_eta, where)


def _stat(stats: Mapping[str, object], key: str, where: str) -> float | None:
    value = stats.get(key)
    if value is None:
        return None
    if isinstance(value, str):
        return _float(value, f"{where} {key}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise DrbdStatusError(f"{where}.{key}", f"expected a number, got {_kind(value)}")


def _pairs(words: list[str], where: str) -> dict[str, str]:
    pairs = {}
    for word in words:
        match = _KEY_RE.fullmatch(word)
        if match is None:
            raise DrbdStatusError(where, f"{word!r} is not key:value")
        key, value = match.groups()
        pairs[key] = value.rpartition("->")[2]
    return pairs


def _check_numbers(pairs: Mapping[str, str], where: str) -> None:
    """Refuse a bad number on its own line rather than when the state is read."""
    if "minor" in pairs:
        _int(pairs, "minor", where)
    for key in _NUMBERS.intersection(pairs):
        _float(pairs[key], f"{where} {key}")


def _need(pairs: Mapping[str, str], key: str, where: str) -> str:
    value = pairs.get(key)
    if not value:
        raise DrbdStatusError(where, f"missing {key}")
    return value


def _int(pairs: Mapping[str, str], key: str, where: str) -> int:
    value = _need(pairs, key, where)
    if not value.isdigit():
        raise DrbdStatusError(where, f"{key} {value!r} is not a whole number")
    return int(value)


def _float(value: str, where: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise DrbdStatusError(where, f"{value!r} is not a number") from None


def _obj(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise DrbdStatusError(where, f"expected an object, got {_kind(value)}")
    return value


def _list(obj: Mapping[str, Any], key: str, where: str) -> list[Any]:
    value = obj.get(key, [])
    if not isinstance(value, list):
        raise DrbdStatusError(f"{where}.{key}", f"expected a list, got {_kind(value)}")
    return value


def _json_str(obj: Mapping[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise DrbdStatusError(f"{where}.{key}", f"expected a string, got {_kind(value)}")
    return value


def _json_int(obj: Mapping[str, Any], key: str, where: str) -> int:
    value = obj.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise DrbdStatusError(f"{where}.{key}", f"expected a whole number, got {_kind(value)}")
    return value


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _kind(value: object) -> str:
    return "nothing" if value is None else f"{type(value).__name__} {value!r}"[:80]


def _duration(seconds: float) -> str:
    """A rough human duration: '40 s', '2 min', '3 h 5 min'."""
    whole = int(seconds + 0.5)
    if whole < 60:
        return f"{whole} s"
    minutes = int(seconds / 60 + 0.5)
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60} min"
