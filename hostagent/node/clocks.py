"""How far other nodes' clocks are from this one's, for `cluster verify`.

Leases, reports and job times compare wall clocks across nodes, so a node
whose clock is off makes the cluster misjudge it. Each node's agent answers
GET /v1/node/clock (node certificates only) with its time; the reading is
taken as made halfway through the round trip (NTP's assumption of equal
delays each way), so the error is at most half the round trip. The fastest
of a few samples is kept: the first one also pays for the TLS handshake.
An unreachable node gives a reading with the reason, never an exception.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from hostagent.clock import SYSTEM, Clock
from hostagent.orders import NodeClient

CLOCK_PATH = "/v1/node/clock"
SAMPLES = 3
SAMPLE_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class ClockReading:
    """Node clock minus `reference`'s clock: offset_s > 0 means it is ahead.

    `offset_s` is None when the node could not be asked; `error` says why.
    """

    reference: str
    offset_s: float | None
    uncertainty_s: float = 0.0
    error: str = ""


def reading(reference: str, sent_at: float, round_trip_s: float, remote_time: float) -> ClockReading:
    """The remote clock read at `sent_at + round_trip_s / 2` of the local clock."""
    return ClockReading(reference, remote_time - (sent_at + round_trip_s / 2), round_trip_s / 2)


async def measure(client: NodeClient, reference: str, nodes: Iterable[Mapping[str, Any]],
                  clock: Clock = SYSTEM) -> dict[str, ClockReading]:
    """Every node's offset from this node's clock, asked in parallel; bounded by SAMPLES x SAMPLE_TIMEOUT_S."""
    targets = list(nodes)
    results = await asyncio.gather(*(_one(client, reference, n, clock) for n in targets))
    return {n["name"]: r for n, r in zip(targets, results)}


async def _one(client: NodeClient, reference: str, node: Mapping[str, Any], clock: Clock) -> ClockReading:
    where = f"{node['address']}:{node['api_port']}"
    best: ClockReading | None = None
    for _ in range(SAMPLES):
        sent_at, started = clock.time(), clock.monotonic()
        try:
            status, data = await client.forward(node["address"], node["api_port"], "GET", CLOCK_PATH, None,
                                                timeout_s=SAMPLE_TIMEOUT_S)
        except ConnectionError as exc:
            cause = exc.__cause__ or exc
            why = f"no answer within {SAMPLE_TIMEOUT_S:.0f} s" if isinstance(cause, TimeoutError) else str(cause)
            return ClockReading(reference, None, error=f"its agent at {where} did not answer "
                                                       f"({why or type(cause).__name__})")
        round_trip = clock.monotonic() - started
        remote = data.get("time")
        if status != 200 or not isinstance(remote, (int, float)):
            return ClockReading(reference, None, error=f"its agent at {where} answered HTTP {status} without "
                                                       f"its time ({data.get('message', 'no message')}); "
                                                       "is it an older version?")
        sample = reading(reference, sent_at, round_trip, float(remote))
        if best is None or sample.uncertainty_s < best.uncertainty_s:
            best = sample
    assert best is not None
    return best
