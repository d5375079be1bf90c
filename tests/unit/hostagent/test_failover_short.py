"""`cluster simulate --fail`: the failover decision names the instances that would move but for memory."""

from __future__ import annotations

from hostagent.master.decide import failovers


def test_a_failover_that_does_not_fit_is_named_as_short():
    big = {"name": "big", "primary_node": "n1", "secondary_node": "n2", "disk_template": "mirror",
           "admin_state": "up", "memory_mib": 4000, "priority": "normal", "auto_failover": True,
           "replica_in_sync": True}
    view = failovers.View(({"name": "n1"}, {"name": "n2"}), frozenset({"n2"}),
                          {"n1": {"node": "n1", "time": 0, "fencing": {"armed": True, "since": None,
                                                                      "guarded": ["big"]}},
                           "n2": {"node": "n2", "time": 0, "memory_free_mib": 1000, "instances": {}}},
                          (big,), {"fencing": "armed"}, frozenset({"n2"}), master_since=-100)
    decision = failovers.decide(view, failovers.State(), 0.0)
    assert decision.failovers == [] and decision.short == ["big"]
