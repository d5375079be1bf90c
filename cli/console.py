"""`corral instance console`: the serial console through the agent's websocket.

Raw terminal mode; Ctrl-] detaches (like telnet and virsh), leaving the
instance running.
"""

from __future__ import annotations

import asyncio
import base64
import os
import sys
import termios
import tty
from urllib.parse import quote

import aiohttp

from cli.client import EXIT_UNREACHABLE, AgentUnreachable

ESCAPE = b"\x1d"  # Ctrl-]


class Refused(Exception):
    """The agent did not open the websocket; the message is its own (no such instance, not running, ...)."""


async def open_websocket(session: aiohttp.ClientSession, path: str) -> aiohttp.ClientWebSocketResponse:
    """A websocket to the local agent's `path`; Refused says why not, AgentUnreachable if nobody answers."""
    url = f"http://localhost{path}"
    try:
        return await session.ws_connect(url)
    except aiohttp.ClientConnectionError as exc:
        connector = session.connector
        raise AgentUnreachable(getattr(connector, "path", "?"), str(exc)) from None
    except aiohttp.WSServerHandshakeError as exc:
        # Asked again as an upgrade (a plain GET is only told to upgrade), to read why it was refused.
        handshake = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
                     "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode()}
        async with session.get(url, headers=handshake) as resp:
            data = await resp.json(content_type=None) if resp.content_type == "application/json" else {}
        raise Refused(data.get("message", exc.message)) from None


async def _bridge(socket_path: str, name: str) -> int:
    connector = aiohttp.UnixConnector(path=socket_path)
    async with aiohttp.ClientSession(connector=connector) as session:
        try:
            ws = await open_websocket(session, f"/v1/instances/{quote(name)}/console")
        except AgentUnreachable as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_UNREACHABLE
        except Refused as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"connected to the serial console of '{name}'; Ctrl-] to detach\r", file=sys.stderr)
        loop = asyncio.get_running_loop()
        stdin = sys.stdin.fileno()
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        loop.add_reader(stdin, lambda: queue.put_nowait(os.read(stdin, 1024)))

        async def keyboard() -> None:
            while True:
                data = await queue.get()
                if not data or ESCAPE in data:
                    before = data.split(ESCAPE, 1)[0]
                    if before:
                        await ws.send_bytes(before)
                    await ws.close()
                    return
                await ws.send_bytes(data)

        task = asyncio.create_task(keyboard())
        try:
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.BINARY:
                    os.write(sys.stdout.fileno(), msg.data)
        finally:
            loop.remove_reader(stdin)
            task.cancel()
        print("\r\ndetached from the console\r", file=sys.stderr)
        return 0


def attach(socket_path: str, name: str) -> int:
    if not sys.stdin.isatty():
        return asyncio.run(_bridge(socket_path, name))
    saved = termios.tcgetattr(sys.stdin.fileno())
    try:
        tty.setraw(sys.stdin.fileno())
        return asyncio.run(_bridge(socket_path, name))
    finally:
        termios.tcsetattr(sys.stdin.fileno(), termios.TCSADRAIN, saved)
