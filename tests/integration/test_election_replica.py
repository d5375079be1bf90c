"""Replica on real SQLite files: migrations, applying batches, reads."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlite_utils import Database

from election.etcd import KV, WatchEvent
from election.replica import MIGRATIONS, Replica, ReplicaSchemaTooNew, ReplicaUnreadable, migrate, schema_version

pytestmark = pytest.mark.integration


def kv(key: str, value: bytes, revision: int, created: int | None = None) -> KV:
    return KV(key, value, created or revision, revision, 1, 0)


def put(key: str, value: bytes, revision: int) -> WatchEvent:
    return WatchEvent("put", kv(key, value, revision))


def delete(key: str, revision: int) -> WatchEvent:
    return WatchEvent("delete", KV(key, b"", 0, revision, 0, 0))


@pytest.fixture
def path(tmp_path: Path) -> str:
    return str(tmp_path / "replica.sqlite")


@pytest.fixture
def replica(path: str) -> Iterator[Replica]:
    r = Replica(path)
    yield r
    r.close()


def test_a_fresh_file_is_migrated_from_version_0_to_the_current_schema(path: str) -> None:
    replica = Replica(path)
    replica.close()
    db = Database(path)
    assert schema_version(db) == len(MIGRATIONS)
    assert {"kv", "meta", "schema_migrations"} <= set(db.table_names())
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()
    reopened = Replica(path)
    assert reopened.applied_revision() == 0
    assert reopened.last_sync_unix() is None
    reopened.close()


def test_a_replica_written_by_a_newer_corral_is_refused(path: str) -> None:
    Replica(path).close()
    db = Database(path)
    db.table("schema_migrations").insert({"version": len(MIGRATIONS) + 1})
    db.close()
    with pytest.raises(ReplicaSchemaTooNew) as raised:
        Replica(path)
    assert (raised.value.found, raised.value.known) == (len(MIGRATIONS) + 1, len(MIGRATIONS))
    assert "upgrade Corral" in str(raised.value)


def test_migrations_run_in_order_once_each_and_keep_existing_data(path: str) -> None:
    calls: list[int] = []

    def v1(db: Database) -> None:
        calls.append(1)
        db.create_table("t", {"id": int, "name": str}, pk="id")
        db.table("t").insert({"id": 1, "name": "a"})

    def v2(db: Database) -> None:
        calls.append(2)
        db.table("t").add_column("size", int)
        db.execute("UPDATE t SET size = 10")

    db = Database(path)
    assert migrate(db, [v1], path) == 1
    assert migrate(db, [v1, v2], path) == 2
    assert migrate(db, [v1, v2], path) == 2
    assert calls == [1, 2]
    assert list(db.query("SELECT id, name, size FROM t")) == [{"id": 1, "name": "a", "size": 10}]
    with pytest.raises(ReplicaSchemaTooNew):
        migrate(db, [v1], path)
    db.close()


def test_a_failing_migration_leaves_the_previous_version_intact(path: str) -> None:
    def broken(db: Database) -> None:
        db.create_table("half", {"id": int}, pk="id")
        raise RuntimeError("migration bug")

    Replica(path).close()
    db = Database(path)
    with pytest.raises(RuntimeError):
        migrate(db, [*MIGRATIONS, broken], path)
    assert schema_version(db) == len(MIGRATIONS)
    assert "half" not in db.table_names()
    db.close()


def test_a_file_that_is_not_sqlite_is_reported_unreadable(path: str) -> None:
    Path(path).write_bytes(b"this is not a database" * 100)
    with pytest.raises(ReplicaUnreadable) as raised:
        Replica(path)
    assert raised.value.path == path


def test_apply_stores_puts_and_deletes_and_the_revision(replica: Replica) -> None:
    replica.apply([put("/c/a", b'{"n": 1}', 5), put("/c/b", b"2", 6)], 6)
    replica.apply([delete("/c/a", 7), put("/c/b", b"3", 8)], 9)
    assert replica.prefix("/c/") == [("/c/b", b"3")]
    assert replica.get("/c/a") is None
    assert replica.get_json("/c/missing") is None
    assert replica.applied_revision() == 9


def test_apply_ignores_redelivered_events(replica: Replica) -> None:
    replica.apply([put("/c/a", b"1", 5)], 5)
    replica.apply([delete("/c/a", 6)], 6)
    before = replica.checksum()
    # The same history again (a watch restarted from an older revision).
    replica.apply([put("/c/a", b"1", 5), delete("/c/a", 6)], 6)
    replica.apply([put("/c/a", b"1", 5)], 5)
    assert replica.get("/c/a") is None
    assert replica.checksum() == before
    assert replica.applied_revision() == 6


def test_reset_replaces_the_whole_copy(replica: Replica) -> None:
    replica.apply([put("/c/old", b"1", 5)], 5)
    replica.reset([kv("/c/x", b'{"x": true}', 40), kv("/c/y", b"[]", 41)], 50)
    assert replica.prefix_json("/c/") == [("/c/x", {"x": True}), ("/c/y", [])]
    assert replica.applied_revision() == 50


def test_prefix_matches_exactly_and_sorts_bytewise_like_etcd(replica: Replica) -> None:
    keys = ["/a/é", "/a/z", "/a/B", "/a0", "/a", "/b/x", "/a/\U0001f600", "/a/%"]
    replica.reset([kv(k, k.encode(), i + 1) for i, k in enumerate(keys)], 10)
    expected = sorted((k for k in keys if k.startswith("/a/")), key=str.encode)
    assert [k for k, _ in replica.prefix("/a/")] == expected
    assert [k for k, _ in replica.prefix("")] == sorted(keys, key=str.encode)


def test_checksum_depends_on_content_only(tmp_path: Path) -> None:
    one, two = Replica(str(tmp_path / "1.sqlite")), Replica(str(tmp_path / "2.sqlite"))
    one.apply([put("/c/a", b"1", 3), put("/c/b", b"2", 4)], 4)
    two.reset([kv("/c/b", b"2", 40), kv("/c/a", b"1", 41)], 90)
    assert one.checksum() == two.checksum()
    two.apply([put("/c/a", b"1x", 91)], 91)
    assert one.checksum() != two.checksum()
    # Boundaries between key and value count: ("ab", "c") differs from ("a", "bc").
    one.reset([kv("ab", b"c", 1)], 1)
    two.reset([kv("a", b"bc", 1)], 1)
    assert one.checksum() != two.checksum()
    one.close()
    two.close()


def test_another_connection_reads_committed_state_while_the_writer_is_busy(replica: Replica, path: str) -> None:
    replica.apply([put("/c/a", b"1", 5)], 5)
    reader = sqlite3.connect(path, timeout=0.1)
    writer = sqlite3.connect(path, timeout=0.1, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("UPDATE kv SET value = x'32' WHERE key = '/c/a'")
    # With WAL the reader neither blocks nor sees the uncommitted write.
    assert reader.execute("SELECT value FROM kv WHERE key = '/c/a'").fetchone() == (b"1",)
    writer.execute("COMMIT")
    assert reader.execute("SELECT value FROM kv WHERE key = '/c/a'").fetchone() == (b"2",)
    reader.close()
    writer.close()
    assert replica.get("/c/a") == b"2"


def test_the_last_sync_time_survives_reopening(path: str) -> None:
    replica = Replica(path)
    replica.mark_synced(1700000000.5)
    replica.apply([put("/c/a", b"1", 5)], 5)
    replica.close()
    reopened = Replica(path)
    assert reopened.last_sync_unix() == 1700000000.5
    assert reopened.applied_revision() == 5
    reopened.close()
