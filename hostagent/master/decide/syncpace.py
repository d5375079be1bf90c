"""Pacing of the `mirror` template's disk copies across the cluster: which copies start now, and how fast each runs.

The cluster's `sync_rate_mib_s` caps what all background copies through one
node's link use together, not each copy: a node back from an outage with a
dozen copies to take must not get a dozen times the cap. A copy counts
against both its nodes (the primary reads and sends, the secondary receives
and writes).

`pace(copies, cap_mib_s)` is a pure decision over the copies running now and
those waiting to start (from the primary's report and the mirror duty,
hostagent.master.duties.mirrors):

- Which waiting copies start now: critical first (the restart priorities of
  hostagent.master.decide.restarts), then by name, while both their nodes
  have a free slot (`SLOTS_PER_NODE`). A lower-priority copy does not take
  a slot on a node that a waiting copy of higher priority needs (each such
  copy holds one there): it would only hold that copy back. Running copies are never stopped for a waiting one
  (a full copy stopped starts over from nothing).
- Each running (or starting) copy's rate: the node's cap shared max-min
  fairly (progressive filling): every copy gets an equal share of its most
  crowded node; what a copy cannot use there because its other node is
  more crowded goes to the others. So the rates of the copies through any
  node add up to at most the cap. Without a cap (0) every rate is 0, QEMU's
  "as fast as it goes", and the slots alone bound the load.
- The queue: each copy left waiting, its place and the queue's length, for
  the log and `instance info` ("queued (3rd of 12)").

Reads no clock and does no I/O.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from hostagent.master.decide.restarts import PRIORITIES

# Copies at once through a node, with or without a cap. Two fill a link: one copy alone
# leaves it idle between its requests (a full copy writes through one NBD connection, an
# incremental one pauses between rounds), and with a cap more copies only split the same
# rate into slower ones, so every instance is redundant later, the critical ones too.
# Two also bound the extra disk and network load a returning node puts on its peers.
SLOTS_PER_NODE = 2


@dataclass(frozen=True)
class Copy:
    """One instance's disk copy from its primary to its secondary; `running` once under way, else waiting."""

    instance: str
    primary: str
    secondary: str
    priority: str = "normal"
    running: bool = False

    @property
    def nodes(self) -> tuple[str, str]:
        return self.primary, self.secondary


@dataclass(frozen=True)
class Pace:
    """What `pace` decided: `start` in order; `rates` (MiB/s a copy, 0: no cap) of every copy running or
    starting; `queued`: each waiting copy's place in the queue (from 1) and the queue's length."""

    start: tuple[str, ...]
    rates: Mapping[str, float]
    queued: Mapping[str, tuple[int, int]]


def pace(copies: Iterable[Copy], cap_mib_s: float, slots_per_node: int = SLOTS_PER_NODE) -> Pace:
    copies = list(copies)
    running = [c for c in copies if c.running]
    used: Counter[str] = Counter(node for c in running for node in c.nodes)
    start: list[Copy] = []
    queued: list[Copy] = []
    for copy in sorted((c for c in copies if not c.running), key=lambda c: (rank(c.priority), c.instance)):
        held = Counter(n for c in queued if rank(c.priority) < rank(copy.priority) for n in c.nodes)
        if all(used[n] + held[n] < slots_per_node for n in copy.nodes):
            start.append(copy)
            used.update(copy.nodes)
        else:
            queued.append(copy)
    return Pace(tuple(c.instance for c in start), shares(running + start, cap_mib_s),
                {c.instance: (place, len(queued)) for place, c in enumerate(queued, 1)})


def shares(copies: list[Copy], cap_mib_s: float) -> dict[str, float]:
    """Each copy's rate: `cap_mib_s` per node shared max-min fairly among the copies through it (0: no cap)."""
    if cap_mib_s <= 0:
        return {c.instance: 0.0 for c in copies}
    left = {node: cap_mib_s for c in copies for node in c.nodes}
    rates: dict[str, float] = {}
    todo = list(copies)
    while todo:
        crowd: Counter[str] = Counter(node for c in todo for node in c.nodes)
        bottleneck = min(crowd, key=lambda n: (left[n] / crowd[n], n))
        share = left[bottleneck] / crowd[bottleneck]
        for copy in [c for c in todo if bottleneck in c.nodes]:
            rates[copy.instance] = share
            for node in copy.nodes:
                left[node] = max(0.0, left[node] - share)
            todo.remove(copy)
    return rates


def rank(priority: str) -> int:
    """0 for critical, up to 3 for low; an unknown priority counts as normal."""
    return PRIORITIES.index(priority) if priority in PRIORITIES else PRIORITIES.index("normal")


def ordinal(n: int) -> str:
    """1st, 2nd, 3rd, 4th, ... 11th, 12th, 13th, 21st."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def queued_words(place: int, of: int) -> str:
    """How `instance list` and `instance info` say a copy waits its turn."""
    return f"queued ({ordinal(place)} of {of})"


def rate_words(rate_mib_s: float) -> str:
    return f"{rate_mib_s:.3g} MiB/s" if rate_mib_s > 0 else "full speed (no cap)"


def start_words(copy: Copy, decided: Pace, cap_mib_s: float, slots_per_node: int = SLOTS_PER_NODE) -> str:
    """The log line of a copy that started: where, how fast, and how many wait behind it."""
    waiting = len(decided.queued)
    behind = f"; {waiting} more wait their turn, {slots_per_node} at a time per node, critical first" \
        if waiting else ""
    cap = f" (the {cap_mib_s:g} MiB/s a node allows, shared)" if cap_mib_s > 0 else ""
    return (f"the disk copy of instance '{copy.instance}' ({copy.priority}) from node '{copy.primary}' to node "
            f"'{copy.secondary}' started at {rate_words(decided.rates[copy.instance])}{cap}{behind}")


def queue_words(copies: Iterable[Copy], decided: Pace, cap_mib_s: float,
                slots_per_node: int = SLOTS_PER_NODE) -> str:
    """The log line when copies have to wait: how many, through which node most, and in what order."""
    copies = [c for c in copies if c.running or c.instance in decided.start or c.instance in decided.queued]
    crowd = Counter(node for c in copies for node in c.nodes)
    node, count = min(crowd.items(), key=lambda item: (-item[1], item[0]))
    first = [c.instance for c in copies if c.instance in decided.queued]
    first.sort(key=lambda name: decided.queued[name][0])
    cap = f", at most {cap_mib_s:g} MiB/s a node in all" if cap_mib_s > 0 else ""
    return (f"node '{node}' has {count} disk copies to make: {slots_per_node} at a time per node, critical "
            f"first{cap}; {len(first)} queued, next: " + ", ".join(f"'{name}'" for name in first[:3])
            + (", ..." if len(first) > 3 else ""))
