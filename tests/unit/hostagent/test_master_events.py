"""The master's one writer of events (hostagent.master.events through Store.write): each event is recorded
in the write it explains, the oldest beyond EVENTS_KEPT go, and each is logged once, only once committed."""

from __future__ import annotations

import logging

import pytest
from election.etcd import Compare, Op
from fakes.clock import FakeClock
from fakes.etcd import FakeEtcd
from fakes.loop import run
from fakes.master import elected

from hostagent import model
from hostagent.master.decide.restarts import Event
from hostagent.master.events import EVENTS_KEPT
from hostagent.master.jobs import JobFailed

LOST = Event("", "n2", "node-lost", "node 'n2' lost its node lease")
RESTART = Event("web1", "n1", "restart", "instance 'web1' is marked up but not running: starting it on node 'n1'")


def events_in(etcd: FakeEtcd) -> list[dict[str, object]]:
    kvs, _ = etcd.snapshot()
    return [model.loads(kv.value) for kv in kvs if kv.key.startswith(model.EVENTS)]


def logged(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "hostagent.master.events"]


def test_events_are_written_with_what_they_explain_and_logged_once_by_their_level(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    etcd = FakeEtcd(clock)
    caplog.set_level(logging.INFO)

    async def main() -> None:
        master = await elected(etcd)
        await master.store.write([Op.put(model.FAILOVER_STATE_KEY, model.dumps({}))], events=[LOST, RESTART],
                                 now=1234.5)
        await master.close()
    run(clock, main())
    event_revisions = {kv.mod_revision for kv in etcd.snapshot()[0] if kv.key.startswith(model.EVENTS)}
    assert event_revisions == {etcd.kvs[model.FAILOVER_STATE_KEY].mod_revision}
    assert events_in(etcd) == [
        {"time": 1234.5, "kind": "node-lost", "instance": "", "node": "n2", "message": LOST.message, "caller": None},
        {"time": 1234.5, "kind": "restart", "instance": "web1", "node": "n1", "message": RESTART.message,
         "caller": None}]
    assert logged(caplog) == [("WARNING", LOST.message), ("INFO", RESTART.message)]


def test_two_writes_at_the_same_time_keep_both_writes_events_in_order() -> None:
    """The duties of one pass read the time once: their writes share `now`, and none may replace another's."""
    clock = FakeClock()
    etcd = FakeEtcd(clock)

    async def main() -> None:
        master = await elected(etcd)
        await master.store.write([], events=[LOST], now=1234.5)
        await master.store.write([], events=[RESTART], now=1234.5)
        await master.close()
    run(clock, main())
    assert [e["message"] for e in events_in(etcd)] == [LOST.message, RESTART.message]


def test_the_oldest_events_beyond_what_is_kept_are_deleted_in_the_same_write() -> None:
    clock = FakeClock()
    etcd = FakeEtcd(clock)
    etcd.txn([], [Op.put(model.event_key(float(t), 0), model.dumps({"time": float(t), "message": f"old {t}"}))
                  for t in range(EVENTS_KEPT)], [])

    async def main() -> None:
        master = await elected(etcd)
        await master.store.write([], events=[LOST, RESTART], now=float(EVENTS_KEPT))
        await master.close()
    run(clock, main())
    kept = events_in(etcd)
    assert len(kept) == EVENTS_KEPT
    assert kept[0]["message"] == "old 2"
    assert [e["message"] for e in kept[-2:]] == [LOST.message, RESTART.message]


def test_no_event_is_recorded_or_logged_when_the_write_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    etcd = FakeEtcd(clock)
    caplog.set_level(logging.INFO)

    async def main() -> None:
        master = await elected(etcd)
        with pytest.raises(JobFailed, match="changed meanwhile"):
            await master.store.write([], [Compare.create_revision(model.CLUSTER_KEY, ">", 0)],
                                     "the cluster record changed meanwhile", events=[LOST])
        await master.close()
        with pytest.raises(JobFailed, match="no longer certainly master"):
            await master.store.write([], events=[RESTART])
    run(clock, main())
    assert events_in(etcd) == []
    assert logged(caplog) == []
