"""Console relays: the caller's websocket bridged to a guest's byte stream (serial console, VNC display),
or to the websocket of the agent on the instance's node, which bridges it there.

A console must never hurt the agent that relays it, so every relay is bounded:
at most `MAX_RELAYS` at once per agent and `MAX_PER_CALLER` per user, admins keeping a
reserve (the next one is refused, never queued);
one that carries no byte either way for `IDLE_TIMEOUT_S` is closed; and a peer
that stops reading ends it once one send has waited `STALL_TIMEOUT_S` (the
guest's serial output, or QEMU's VNC updates, would otherwise back up behind
it). Each direction is its own coroutine awaiting its socket, so a slow or
silent peer holds only its own relay, never the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from typing import Protocol

from aiohttp import WSMsgType, web
from aiohttp.client_ws import ClientWebSocketResponse

from hostagent.errors import Conflict

log = logging.getLogger(__name__)

MAX_RELAYS = 16  # consoles and VNC displays open through one agent at once (each holds two sockets)
MAX_PER_CALLER = 4  # of those, what one API user may hold
ADMIN_RESERVE = 4  # more, for admins and the local root CLI only
IDLE_TIMEOUT_S = 1800.0  # nobody typed and nothing changed on the screen for 30 min: the operator left
STALL_TIMEOUT_S = 30.0  # one send not taken by its peer for this long: that peer stopped reading
CLOSE_TIMEOUT_S = 5.0
CHUNK_BYTES = 65536


class RelaysFull(Conflict):
    """This agent relays MAX_RELAYS consoles already; the message says so (HTTP 409)."""


class End(Protocol):
    """One side of a relay: bytes in, bytes out; receive() gives None once that side closed."""

    async def receive(self) -> bytes | None: ...

    async def send(self, data: bytes) -> None: ...

    async def close(self) -> None: ...


class WebSocketEnd:
    """A websocket, the caller's (aiohttp server side) or one to another agent (client side)."""

    def __init__(self, ws: web.WebSocketResponse | ClientWebSocketResponse) -> None:
        self.ws = ws

    async def receive(self) -> bytes | None:
        while True:
            msg = await self.ws.receive()
            if msg.type == WSMsgType.BINARY:
                return bytes(msg.data)
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                return None

    async def send(self, data: bytes) -> None:
        await self.ws.send_bytes(data)

    async def close(self) -> None:
        await self.ws.close()


class StreamEnd:
    """A socket QEMU listens on: the serial console's or the VNC server's."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def receive(self) -> bytes | None:
        try:
            return await self.reader.read(CHUNK_BYTES) or None
        except OSError:
            return None

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


class RelayLimit:
    """How many relays this agent carries, in all and per caller: one user cannot take them all, and an admin
    (the local root CLI too) keeps `ADMIN_RESERVE` more for the outage in which every write user holds one."""

    def __init__(self, most: int = MAX_RELAYS, per_caller: int = MAX_PER_CALLER,
                 admin_reserve: int = ADMIN_RESERVE) -> None:
        self.most, self.per_caller, self.admin_reserve = most, per_caller, admin_reserve
        self.active = 0
        self._by: dict[str, int] = {}

    @contextlib.contextmanager
    def slot(self, node: str, who: str = "", admin: bool = False) -> Iterator[None]:
        """`who` names the caller (user or root); an admin may use the reserve and has no per-caller bound."""
        if self.active >= self.most + (self.admin_reserve if admin else 0):
            raise RelaysFull(f"node '{node}' already relays {self.active} consoles and displays, its limit; "
                             "close one (or wait for an idle one to time out) and try again")
        if not admin and self._by.get(who, 0) >= self.per_caller:
            raise RelaysFull(f"{who or 'this caller'} already has {self._by[who]} consoles and displays open "
                             f"through node '{node}', the most one caller may; close one and try again")
        self.active += 1
        self._by[who] = self._by.get(who, 0) + 1
        try:
            yield
        finally:
            self.active -= 1
            self._by[who] -= 1
            if not self._by[who]:
                del self._by[who]


async def bridge(a: End, b: End, idle_s: float = IDLE_TIMEOUT_S, stall_s: float = STALL_TIMEOUT_S) -> str:
    """Copy bytes both ways until one side closes ('closed'), nothing moved for `idle_s` ('idle'), or a
    send waited `stall_s` ('stalled'); then close both sides. Returns which of the three it was."""
    loop = asyncio.get_running_loop()
    last = loop.time()

    async def pump(src: End, dst: End) -> str:
        nonlocal last
        while (data := await src.receive()) is not None:
            last = loop.time()
            try:
                await asyncio.wait_for(dst.send(data), stall_s)
            except TimeoutError:
                return "stalled"
            except (ConnectionError, OSError):
                return "closed"
        return "closed"

    async def watch() -> str:
        while (left := last + idle_s - loop.time()) > 0:
            await asyncio.sleep(left)
        return "idle"

    tasks = [asyncio.create_task(pump(a, b)), asyncio.create_task(pump(b, a)), asyncio.create_task(watch())]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        reason = next(iter(done)).result()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for end in (a, b):
            with contextlib.suppress(Exception):  # a peer gone or stuck: it is being dropped either way
                await asyncio.wait_for(end.close(), CLOSE_TIMEOUT_S)
    return reason
