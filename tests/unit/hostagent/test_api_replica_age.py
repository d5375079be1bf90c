"""Every API answer says how old this node's replica is, and calls it stale past a report's freshness."""

from __future__ import annotations

import json
from typing import Any

from fakes.clock import FakeClock

from hostagent.agent import Agent
from hostagent.api.base import ApiBase
from hostagent.config import AgentConfig
from hostagent.status import REPORT_STALE_AFTER_S


def replica(api: ApiBase) -> Any:
    """The `replica` part of an answer."""
    return json.loads(api._ok(None).text)["replica"]


def test_the_replica_is_stale_once_etcd_was_not_heard_from_for_longer_than_a_report_stays_fresh(tmp_path):
    clock = FakeClock()
    agent = Agent(AgentConfig(node_name="n1", address="127.0.0.1", state_dir=str(tmp_path / "state"),
                              run_dir=str(tmp_path / "run"), log_dir=str(tmp_path / "log"),
                              os_search_paths=(), image_paths=(), iso_dirs=()), clock=clock)
    try:
        api = ApiBase(agent)
        assert replica(api)["stale"], "never synced"
        agent.replica.mark_synced(clock.time())
        clock.advance(REPORT_STALE_AFTER_S)
        assert replica(api) == {"revision": 0, "age_s": REPORT_STALE_AFTER_S, "stale": False}
        clock.advance(0.1)
        assert replica(api)["stale"]
    finally:
        agent.replica.close()
