"""What gossip tells this agent: member events logged for the operator, and this node's tags.

Serf coalesces member events and may drop a short flap entirely (MEASURED.md),
so decisions never rest on these events: `node list` polls members, and the
master acts on leases. The events are the story in the log, as they happen.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from membership.rpc import MemberEvent, SerfError, SerfRpc

log = logging.getLogger(__name__)

_WORDS = {"member-join": "joined the gossip", "member-leave": "left the gossip",
          "member-failed": "stopped answering gossip (failed)", "member-update": "changed its tags",
          "member-reap": "was forgotten by gossip (reaped)"}


def describe(event: MemberEvent) -> list[str]:
    """One log line per member of a Serf member event."""
    words = _WORDS.get(event.type, event.type)
    return [f"gossip: node '{m.name}' ({m.addr}) {words}"
            + (f"; role {m.tags.get('role')}" if event.type == "member-update" and m.tags.get("role") else "")
            for m in event.members]


async def follow_events(connect: Callable[[], Awaitable[SerfRpc]], stop: asyncio.Event) -> None:
    """Log member events until `stop`; reconnect (bounded backoff) when Serf restarts."""
    backoff = 0.5
    while not stop.is_set():
        try:
            rpc = await connect()
            try:
                async with rpc.stream("member-join,member-leave,member-failed,member-update,member-reap") as events:
                    backoff = 0.5
                    async for event in events:
                        if isinstance(event, MemberEvent):
                            for line in describe(event):
                                log.info("%s", line)
            finally:
                await rpc.close()
        except (SerfError, OSError) as exc:
            log.debug("gossip event stream interrupted: %s", exc)
        try:
            await asyncio.wait_for(stop.wait(), backoff)
        except asyncio.TimeoutError:
            pass
        backoff = min(backoff * 2, 10.0)


async def publish_role(connect: Callable[[], Awaitable[SerfRpc]], role: str) -> None:
    """Set this node's `role` tag (master, candidate, regular) so every member sees it."""
    rpc = await connect()
    try:
        await rpc.update_tags(set={"role": role})
    finally:
        await rpc.close()
