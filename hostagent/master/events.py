"""The events log: every automatic decision of the master with its reason, in the replicated config.

Kept under /corral/events/ (newest `EVENTS_KEPT`), written in the same
guarded write as the decision they explain (hostagent.master.store.Store.write
takes them), read by `corral events`. An event made for a request (or in its
job) names its caller (hostagent.callers). This module is also the one place
that logs an event: one line per event, once its write is committed, so a
write that failed (and is tried again) never says it twice.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence

from election.etcd import EtcdClient, Op

from hostagent import model
from hostagent import callers
from hostagent.master.decide.restarts import Event

log = logging.getLogger(__name__)

EVENTS_KEPT = 1000
# Numbers the events this process writes: two writes that share a `now` (the duties of one pass read the time
# once) must not share a key, or the second would replace the first's events. Keys order by time, then by it.
_SEQ = itertools.count()
# Kinds the operator has to look at (a node lost, a failover refused, the alert, a copy that stopped
# protecting its instance, a setting changed by hand, a scheduled backup that failed): logged as warnings, the
# others as information.
WARNING_KINDS = frozenset({"node-lost", "refuse", "alert", "copy-outdated", "operator", "backup-failed"})


async def event_ops(client: EtcdClient, events: Sequence[Event], now: float) -> list[Op]:
    """Puts for `events`, and deletes of the oldest ones beyond what is kept."""
    if not events:
        return []
    caller = callers.recorded()
    ops = [Op.put(model.event_key(now, next(_SEQ)), model.dumps({"time": now, "kind": e.kind, "instance": e.instance,
                                                                 "node": e.node, "message": e.message,
                                                                 "caller": caller}))
           for e in events]
    kvs, _ = await client.get_prefix(model.EVENTS)
    return ops + [Op.delete(kv.key) for kv in kvs[:max(0, len(kvs) + len(events) - EVENTS_KEPT)]]


def log_committed(events: Sequence[Event]) -> None:
    """The log line of each event, once the write that records it is committed."""
    for event in events:
        log.log(logging.WARNING if event.kind in WARNING_KINDS else logging.INFO, "%s", event.message)
