"""The events log: every automatic decision of the master with its reason, in the replicated config.

Kept under /corral/events/ (newest `EVENTS_KEPT`), written in the same
guarded write as the decision they explain, read by `corral events`. An event
made for a request (or in its job) names its caller (hostagent.callers).
"""

from __future__ import annotations

from collections.abc import Sequence

from election.etcd import EtcdClient, Op

from hostagent import model
from hostagent import callers
from hostagent.master.decide.restarts import Event

EVENTS_KEPT = 1000


async def event_ops(client: EtcdClient, events: Sequence[Event], now: float) -> list[Op]:
    """Puts for `events`, and deletes of the oldest ones beyond what is kept."""
    if not events:
        return []
    caller = callers.recorded()
    ops = [Op.put(model.event_key(now, i), model.dumps({"time": now, "kind": e.kind, "instance": e.instance,
                                                        "node": e.node, "message": e.message, "caller": caller}))
           for i, e in enumerate(events)]
    kvs, _ = await client.get_prefix(model.EVENTS)
    return ops + [Op.delete(kv.key) for kv in kvs[:max(0, len(kvs) + len(events) - EVENTS_KEPT)]]
