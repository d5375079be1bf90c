"""What both drills share: waiting for a condition, checking that the replicas agree, and the abort."""

from __future__ import annotations

import time
from typing import Any

from cli.client import AgentClient

POLL_S = 0.05


class DrillAborted(Exception):
    """The drill cannot start or cannot go on; the message says why."""


def wait_for(what: str, timeout_s: float, probe: Any) -> Any:
    """`probe()` once it is truthy, polled until `timeout_s`; else DrillAborted saying what was awaited."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(POLL_S)
    raise DrillAborted(f"gave up after {timeout_s:.0f} s waiting for {what}")


def replicas_agree(client: AgentClient, timeout_s: float) -> tuple[bool, dict[str, str]]:
    """Whether every node's config replica has the same checksum within `timeout_s`, and the checksums."""
    sums: dict[str, str] = {}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        rows = client.get("/v1/cluster/replicas")["data"]
        sums = {r["node"]: r.get("checksum") or f"error: {r.get('error')}" for r in rows}
        if len(set(sums.values())) == 1 and all(not v.startswith("error") for v in sums.values()):
            return True, sums
        time.sleep(0.5)
    return False, sums
