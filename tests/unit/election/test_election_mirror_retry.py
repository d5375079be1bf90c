"""Mirror's retry loop against a scripted fake etcd client (the real one is in the integration tests)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from election.etcd import KV, Compacted, EtcdUnavailable, WatchBatch, WatchEvent
from election.mirror import Mirror
from election.replica import Replica


class ScriptedEtcd:
    """Answers get_prefix and watch from scripts; each entry is a value or an exception to raise."""

    def __init__(self, prefixes: list[Any], watches: list[Any]) -> None:
        self.prefixes = prefixes
        self.watches = watches
        self.calls: list[tuple[str, int]] = []
        self.endpoints = ["http://fake"]

    async def get_prefix(self, prefix: str) -> tuple[list[KV], int]:
        self.calls.append(("get_prefix", 0))
        answer = self.prefixes.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def watch(self, prefix: str, start_revision: int) -> AsyncIterator[WatchBatch]:
        self.calls.append(("watch", start_revision))
        answer = self.watches.pop(0) if self.watches else []
        if isinstance(answer, Exception):
            raise answer
        for batch in answer:
            yield batch
        await asyncio.Event().wait()  # an idle, healthy watch


def put(key: str, value: bytes, revision: int) -> WatchEvent:
    return WatchEvent("put", KV(key, value, revision, revision, 1, 0))


@pytest.fixture
def replica(tmp_path: Path) -> Iterator[Replica]:
    r = Replica(str(tmp_path / "r.sqlite"))
    yield r
    r.close()


async def run_until(mirror: Mirror, revision: int) -> float:
    """Run the mirror until it reaches `revision`; returns how long stopping it took."""
    stop = asyncio.Event()
    task = asyncio.create_task(mirror.run(stop))
    assert await mirror.wait_for_revision(revision, 5.0)
    loop = asyncio.get_running_loop()
    stop.set()
    started = loop.time()
    await asyncio.wait_for(task, 5.0)
    return loop.time() - started


async def test_mirror_retries_an_unreachable_etcd_with_growing_backoff(
    replica: Replica, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="election.mirror")
    down = EtcdUnavailable(["http://fake"], "connection refused")
    etcd = ScriptedEtcd([down, down, down, ([KV("/c/a", b"1", 3, 3, 1, 0)], 7)], [])
    mirror = Mirror(
        etcd, replica, prefix="/c/", clock=lambda: 1000.0, backoff_min_s=0.01, backoff_max_s=0.03  # type: ignore[arg-type]
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    await run_until(mirror, 7)
    elapsed = loop.time() - started
    assert replica.prefix("/c/") == [("/c/a", b"1")]
    assert replica.last_sync_unix() == 1000.0
    assert [c[0] for c in etcd.calls] == ["get_prefix"] * 4 + ["watch"]
    assert etcd.calls[-1] == ("watch", 8)
    assert elapsed >= 0.01 + 0.02 + 0.03 - 0.005  # 0.01, 0.02, then capped at 0.03
    # One warning for the outage, not one per retry, and one line when it ends.
    assert [r.levelname for r in caplog.records if "connection refused" in r.message] == ["WARNING"]
    assert "following etcd again at revision 7" in caplog.text


async def test_mirror_resyncs_when_the_watch_reports_compaction(replica: Replica) -> None:
    replica.apply([put("/c/old", b"1", 5)], 5)
    etcd = ScriptedEtcd(
        [([KV("/c/new", b"2", 20, 20, 1, 0)], 30)],
        [Compacted(25), [WatchBatch(31, [put("/c/x", b"3", 31)])]],
    )
    await run_until(Mirror(etcd, replica, prefix="/c/"), 31)  # type: ignore[arg-type]
    assert etcd.calls == [("watch", 6), ("get_prefix", 0), ("watch", 31)]
    assert replica.prefix("/c/") == [("/c/new", b"2"), ("/c/x", b"3")]


async def test_mirror_survives_an_unexpected_error_and_says_it_is_a_bug(
    replica: Replica, caplog: pytest.LogCaptureFixture
) -> None:
    replica.apply([], 5)
    etcd = ScriptedEtcd([], [RuntimeError("boom"), [WatchBatch(6, [put("/c/a", b"1", 6)])]])
    await run_until(Mirror(etcd, replica, prefix="/c/", backoff_min_s=0.01), 6)  # type: ignore[arg-type]
    assert "please report this bug" in caplog.text
    assert replica.get("/c/a") == b"1"


async def test_stopping_an_idle_mirror_is_prompt_and_waiters_time_out(replica: Replica) -> None:
    replica.apply([], 5)
    etcd = ScriptedEtcd([], [[WatchBatch(6, [])]])
    applied: list[int] = []
    mirror = Mirror(etcd, replica, prefix="/c/", on_applied=applied.append)  # type: ignore[arg-type]
    assert await mirror.wait_for_revision(5, 0.0)
    assert await run_until(mirror, 6) < 0.5
    assert applied == [6]
    assert not await mirror.wait_for_revision(7, 0.05)
