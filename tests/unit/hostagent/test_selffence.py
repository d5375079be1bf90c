"""The agent's self-fencing rules with a real config replica (SQLite) and a lease clock under test control.

QEMU is not involved: `start_refusal` and the deadline are what the node's
start guard and the fence keeper's feed are built from.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from election.etcd import KV
from election.replica import Replica
from hostagent import model
from fakes.clock import FakeClock
from hostagent.clock import SYSTEM, Clock
from hostagent.node.fencekeeper import read_feed
from hostagent.node.selffence import FENCE_MARGIN_S, SelfFence


class Lease:
    """The two things SelfFence reads of hostagent.node.nodelease.NodeLease."""

    def __init__(self, renewed_at: float | None, ttl_s: int = 20) -> None:
        self.renewed_at = renewed_at
        self.ttl_s = ttl_s


class NoQemu:
    def find(self, name: str) -> None:
        return None


def replica_with(tmp_path: Path, cluster: dict, *instances: dict) -> Replica:
    r = Replica(str(tmp_path / "config.db"))
    kvs = [KV(model.CLUSTER_KEY, json.dumps(cluster).encode(), 1, 1, 1, 0)]
    kvs += [KV(model.instance_key(i["name"]), json.dumps(i).encode(), 2, 2, 1, 0) for i in instances]
    r.reset(kvs, 2)
    return r


DB1 = {"name": "db1", "primary_node": "n1", "secondary_node": "n2", "disk_template": "mirror", "auto_failover": True}
WEB = {"name": "web", "primary_node": "n1", "disk_template": "file"}


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[str, str]:
    (tmp_path / "run").mkdir()
    (tmp_path / "log").mkdir()
    return str(tmp_path / "run"), str(tmp_path / "log")


def fence(tmp_path: Path, dirs, lease: Lease, cluster: dict | None = None, clock: Clock = SYSTEM) -> SelfFence:
    replica = replica_with(tmp_path, cluster or {"fencing": "armed"}, DB1, WEB)
    return SelfFence("n1", lease, NoQemu(), replica, dirs[0], dirs[1], None, clock)  # type: ignore[arg-type]


def test_a_guarded_instance_may_start_only_while_the_lease_is_current(tmp_path: Path, dirs):
    clock = FakeClock()
    lease = Lease(renewed_at=clock.boot())
    f = fence(tmp_path, dirs, lease, clock=clock)
    clock.advance(lease.ttl_s - FENCE_MARGIN_S - 0.1)
    assert f.start_refusal("db1") is None
    clock.advance(0.2)
    assert "does not hold a current node lease" in (f.start_refusal("db1") or "")
    assert f.start_refusal("web") is None, "an instance that never fails over is not held back"


def test_the_deadline_is_the_last_renewal_plus_the_ttl_less_the_margin_and_is_fed_to_the_keeper(tmp_path, dirs):
    sent = SYSTEM.boot()
    f = fence(tmp_path, dirs, Lease(renewed_at=sent))
    f.step()
    feed = read_feed(str(Path(dirs[0]) / "fence-keeper.json"))
    assert feed is not None and feed.deadline == pytest.approx(sent + 20 - FENCE_MARGIN_S)
    assert f.report()["guarded"] == ["db1"] and f.report()["armed"]


def test_disarmed_fencing_feeds_no_deadline_and_guards_nothing(tmp_path: Path, dirs):
    f = fence(tmp_path, dirs, Lease(renewed_at=SYSTEM.boot()), {"fencing": "disarmed", "fencing_since": 5.0})
    f.step()
    feed = read_feed(str(Path(dirs[0]) / "fence-keeper.json"))
    assert feed is not None and feed.deadline is None
    assert f.report()["guarded"] == [] and not f.report()["armed"] and f.report()["since"] == 5.0


def test_a_restarted_agent_keeps_its_predecessor_s_deadline_until_it_renews(tmp_path: Path, dirs):
    first = fence(tmp_path, dirs, Lease(renewed_at=SYSTEM.boot() - 100))
    first.step()
    promised = first.deadline()
    second = SelfFence("n1", Lease(renewed_at=None), NoQemu(), replica_with(tmp_path / "run", {}, DB1),  # type: ignore[arg-type]
                       dirs[0], dirs[1], None)
    assert second.deadline() == promised
    assert second.start_refusal("db1") is not None, "that deadline has passed: no start before a renewal"
