"""A long node order followed to its end, its byte counts shown as the job's progress.

Copies (snapshots, exports, restores, imports) run as one order on a node for minutes or hours; meanwhile a
status order answers the bytes done and in all, which become the job's progress line with throughput and an
ETA (hostagent.master.jobs computes it from the progress calls).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

from hostagent.master.jobs import JobContext, JobFailed
from hostagent.master.store import Store
from hostagent.units import format_mib

POLL_S = 2.0
# How a copy's consistency reads in a job's log (the node's words: hostagent.node.livecopy).
CONSISTENCY_WORDS = {
    "filesystems": "copied while the guest ran, as of one instant, its file systems frozen by the guest agent",
    "crash": "copied while the guest ran, as of one instant (crash-consistent: its file systems were not frozen)",
    "stopped": "copied while the instance was stopped"}


async def follow(store: Store, ctx: JobContext, node: str, status_op: str, name: str,
                 work: Awaitable[dict[str, Any]], what: str) -> dict[str, Any]:
    """`work`'s result; while it runs, `status_op` on `node` for instance `name` gives {done, total} bytes."""
    started = store.clock.monotonic()
    task = asyncio.ensure_future(work)
    while not task.done():
        await asyncio.wait({task}, timeout=POLL_S)
        if task.done():
            break
        try:
            status = await store.order(node, status_op, {"name": name}, timeout_s=5)
        except JobFailed:
            continue
        done, total = status["done"] / 2**20, status["total"] / 2**20
        if total:
            await ctx.progress(done, total, f"{what}: {format_mib(int(done))} of {format_mib(int(total))}", started,
                               mib=True)
    return await task
