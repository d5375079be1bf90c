"""`corral instance console NAME --vnc --listen [ADDR:]PORT`: an instance's VNC display on a local TCP port.

Each VNC viewer that connects gets a websocket of its own to the local agent,
which bridges it to the display (from the instance's node if it runs
elsewhere, hostagent.api.consoles); this process copies the bytes with the
agent's own bounded pump (hostagent.api.relay) until Ctrl-C. The port is on
loopback unless ADDR says otherwise: whoever reaches it reaches the display,
with the VNC password (vnc=tcp) as the only lock, and none at all for a
vnc=localhost display.
"""

from __future__ import annotations

import asyncio
import ipaddress
import sys
from urllib.parse import quote

import aiohttp

from cli.client import EXIT_UNREACHABLE, AgentUnreachable
from cli.console import Refused, open_websocket
from hostagent.api.relay import StreamEnd, WebSocketEnd, bridge


def parse_listen(value: str) -> tuple[str, int]:
    """'5901' -> ('127.0.0.1', 5901); '0.0.0.0:5901' and '[::1]:5901' name the address too. ValueError says
    what is accepted."""
    host, _, port = value.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    try:
        ipaddress.ip_address(host)
        number = int(port)
    except ValueError:
        raise ValueError(f"--listen {value!r} is not [ADDR:]PORT, e.g. 5901 or 127.0.0.1:5901") from None
    if not 1 <= number <= 65535:
        raise ValueError(f"--listen {value!r}: {number} is not a TCP port (1-65535)")
    return host, number


def is_loopback(host: str) -> bool:
    return ipaddress.ip_address(host).is_loopback


async def _serve(socket_path: str, name: str, host: str, port: int) -> int:
    path = f"/v1/instances/{quote(name)}/vnc/stream"
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=socket_path)) as session:

        async def viewer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            peer = writer.get_extra_info("peername")
            try:
                ws = await open_websocket(session, path)
            except (Refused, AgentUnreachable) as exc:
                print(f"a viewer from {peer} was not connected: {exc}", file=sys.stderr)
                writer.close()
                return
            print(f"viewer {peer} connected", file=sys.stderr)
            ended = await bridge(StreamEnd(reader, writer), WebSocketEnd(ws))
            print(f"viewer {peer} gone ({ended})", file=sys.stderr)

        try:
            server = await asyncio.start_server(viewer, host, port)
        except OSError as exc:
            print(f"error: cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
            return 1
        async with server:
            await server.serve_forever()
    return 0


def listen(socket_path: str, name: str, host: str, port: int) -> int:
    """Relay until Ctrl-C."""
    try:
        return asyncio.run(_serve(socket_path, name, host, port))
    except AgentUnreachable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except KeyboardInterrupt:
        print("stopped relaying the display", file=sys.stderr)
        return 0
