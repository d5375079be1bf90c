"""Tables and values for people; `--json` output bypasses all of this."""

from __future__ import annotations

import datetime
import sys
from collections.abc import Sequence
from typing import Any

from hostagent.units import format_mib


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    return "\n".join(lines)


def mib(value: float | None) -> str:
    return "-" if value is None else format_mib(value)


def when(ts: float | None) -> str:
    if not ts:
        return "-"
    return datetime.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def clock(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts).strftime("%H:%M:%S")


def warn_if_stale(answer: dict[str, Any]) -> None:
    replica = answer.get("replica") or {}
    if replica.get("stale"):
        age = replica.get("age_s")
        since = "never synced" if age is None else f"last contact with etcd {age:.0f} s ago"
        print(f"warning: this node's config replica is stale ({since}); showing what it last knew",
              file=sys.stderr)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
