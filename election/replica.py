"""This node's SQLite copy of the config key space, fed by the mirror.

Every node reads config locally (and the CLI keeps working without an etcd
quorum) from this file. It only ever holds what etcd held at
`applied_revision`, so losing it costs a full resync, never data: that is
why it runs with synchronous=NORMAL in WAL mode (a power cut may drop the
last transactions, and the revision rolls back with them). WAL also lets
other connections read while the mirror writes.

Errors: ReplicaError, with ReplicaUnreadable(path, reason) and
ReplicaSchemaTooNew(path, found, known) below it.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

from sqlite_utils import Database

from election.etcd import KV, WatchEvent

Migration = Callable[[Database], None]

_BUSY_TIMEOUT_MS = 5000


class ReplicaError(Exception):
    """Base of the replica's errors."""


class ReplicaUnreadable(ReplicaError):
    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(
            f"config replica {path} cannot be used: {reason}; "
            "move the file away and the agent rebuilds it from etcd"
        )


class ReplicaSchemaTooNew(ReplicaError):
    def __init__(self, path: str, found: int, known: int) -> None:
        self.path = path
        self.found = found
        self.known = known
        super().__init__(
            f"config replica {path} has schema version {found}, but this Corral only knows "
            f"versions up to {known}; upgrade Corral on this node, or move the file away "
            "and the agent rebuilds it from etcd"
        )


def _v1_kv_and_meta(db: Database) -> None:
    db.create_table(
        "kv",
        {"key": str, "value": bytes, "mod_revision": int, "create_revision": int},
        pk="key",
        not_null={"value", "mod_revision", "create_revision"},
    )
    # One row: how far this copy has got, and when etcd was last heard from.
    db.create_table("meta", {"id": int, "applied_revision": int, "last_sync_unix": float}, pk="id")
    db.table("meta").insert({"id": 1, "applied_revision": 0, "last_sync_unix": None})


# Index i upgrades schema version i to i + 1. Append only; never edit a released entry.
MIGRATIONS: tuple[Migration, ...] = (_v1_kv_and_meta,)


def schema_version(db: Database) -> int:
    if "schema_migrations" not in db.table_names():
        return 0
    row = db.execute("SELECT MAX(version) FROM schema_migrations").fetchone()
    return int(row[0] or 0)


def migrate(db: Database, migrations: Sequence[Migration], path: str) -> int:
    """Bring `db` to version len(migrations), one transaction per step; returns the version."""
    known = len(migrations)
    with db.atomic():
        if "schema_migrations" not in db.table_names():
            db.create_table("schema_migrations", {"version": int}, pk="version")
    current = schema_version(db)
    if current > known:
        raise ReplicaSchemaTooNew(path, current, known)
    for version in range(current, known):
        with db.atomic():
            migrations[version](db)
            db.table("schema_migrations").insert({"version": version + 1})
    return known


class Replica:
    """The config key space as of `applied_revision()`, in one SQLite file."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self._db = Database(path)
            self._db.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
            self._db.enable_wal()
            self._db.execute("PRAGMA synchronous=NORMAL")
            migrate(self._db, MIGRATIONS, path)
        except sqlite3.DatabaseError as e:
            raise ReplicaUnreadable(path, str(e)) from None

    def close(self) -> None:
        self._db.close()

    def applied_revision(self) -> int:
        """The etcd revision this copy is complete up to; 0 before the first sync."""
        return int(self._db.execute("SELECT applied_revision FROM meta WHERE id = 1").fetchone()[0])

    def apply(self, events: Sequence[WatchEvent], revision: int) -> None:
        """Apply one watch batch atomically; events at or below applied_revision are re-deliveries and skipped."""
        kv = self._db.table("kv")
        with self._db.atomic():
            applied = self.applied_revision()
            for event in events:
                if event.kv.mod_revision <= applied:
                    continue
                if event.type == "put":
                    kv.upsert(_row(event.kv), pk="key")
                else:
                    kv.delete_where("key = ?", [event.kv.key])
            if revision > applied:
                self._set_applied(revision)

    def reset(self, kvs: Sequence[KV], revision: int) -> None:
        """Replace the whole copy with a full read of etcd taken at `revision`."""
        kv = self._db.table("kv")
        with self._db.atomic():
            kv.delete_where()
            kv.insert_all((_row(item) for item in kvs), pk="key")
            self._set_applied(revision)

    def get(self, key: str) -> bytes | None:
        row = self._db.execute("SELECT value FROM kv WHERE key = ?", [key]).fetchone()
        return None if row is None else bytes(row[0])

    def get_json(self, key: str) -> Any:
        """The JSON value at `key`, or None when the key is absent."""
        value = self.get(key)
        return None if value is None else json.loads(value)

    def prefix(self, prefix: str) -> list[tuple[str, bytes]]:
        """Keys under `prefix` and their values, sorted by key (bytewise, as etcd sorts)."""
        rows = self._db.execute(
            "SELECT key, value FROM kv WHERE key >= ? AND substr(key, 1, ?) = ? ORDER BY key",
            [prefix, len(prefix), prefix],
        )
        return [(key, bytes(value)) for key, value in rows]

    def prefix_json(self, prefix: str) -> list[tuple[str, Any]]:
        return [(key, json.loads(value)) for key, value in self.prefix(prefix)]

    def checksum(self, exclude_prefixes: Sequence[str] = ()) -> str:
        """sha256 of every key and value in key order; equal on replicas with equal content.

        `exclude_prefixes` leaves out keys that change all the time (e.g. node
        reports), so replicas can be compared while the cluster is busy.
        """
        digest = hashlib.sha256()
        for key, value in self._db.execute("SELECT key, value FROM kv ORDER BY key"):
            if key.startswith(tuple(exclude_prefixes)):
                continue
            raw_key = key.encode()
            digest.update(len(raw_key).to_bytes(8, "big") + raw_key)
            digest.update(len(value).to_bytes(8, "big") + bytes(value))
        return digest.hexdigest()

    def mark_synced(self, now_unix: float) -> None:
        """Record that etcd was heard from at `now_unix` (so readers can tell how stale this copy may be)."""
        self._db.table("meta").update(1, {"last_sync_unix": now_unix})

    def last_sync_unix(self) -> float | None:
        row = self._db.execute("SELECT last_sync_unix FROM meta WHERE id = 1").fetchone()
        return None if row[0] is None else float(row[0])

    def _set_applied(self, revision: int) -> None:
        self._db.table("meta").update(1, {"applied_revision": revision})


def _row(kv: KV) -> dict[str, Any]:
    return {
        "key": kv.key,
        "value": kv.value,
        "mod_revision": kv.mod_revision,
        "create_revision": kv.create_revision,
    }
