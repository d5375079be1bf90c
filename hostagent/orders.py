"""Node-to-node calls: the master's orders to agents, over mutual TLS.

Each order carries the master's fencing token; the receiving agent refuses it
if it has already seen a newer one. Failures come back as OrderFailed with the
node's own message, translated here once.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
from typing import Any
from urllib.parse import unquote

import aiohttp

from election.lease import FencingToken

from hostagent.errors import MESSAGE_HEADER

UNACKNOWLEDGED_LIMIT_S = 10.0  # a peer that acknowledges nothing for this long is cut off, not slow


class OrderFailed(Exception):
    def __init__(self, node: str, op: str, message: str, code: str = "") -> None:
        super().__init__(f"node '{node}' could not {op.replace('instance.', '')}: {message}")
        self.node = node
        self.op = op
        self.message = message
        self.code = code  # the node's error code ("stale-token", ...); empty when it did not answer


def _short_lived_unacknowledged(addr_info: tuple[Any, ...]) -> socket.socket:
    """A socket that drops its connection once data it sent stays unacknowledged `UNACKNOWLEDGED_LIMIT_S`.

    A request written to a kept-alive connection just as the network splits waits in the kernel's
    send queue, and the kernel retransmits it for minutes, even after the caller gave up and closed
    the connection; the peer carries it out once the network heals. A change the CLI had reported
    refused for want of quorum was made that way half a minute later, and an order the master gave
    up on could arrive as late. With TCP_USER_TIMEOUT the connection fails instead and the caller
    hears of it at once; the last retransmission can still go out a few seconds later (it waits in
    the kernel's neighbour queue for the peer's address to resolve), never minutes.
    """
    family, kind, proto, _, _ = addr_info
    sock = socket.socket(family=family, type=kind, proto=proto)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(UNACKNOWLEDGED_LIMIT_S * 1000))
    return sock


class NodeClient:
    """HTTPS client to other agents' /v1/node/orders, authenticated by node certificates."""

    def __init__(self, ssl_context: ssl.SSLContext) -> None:
        self._ssl = ssl_context
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl, socket_factory=_short_lived_unacknowledged))
        return self._session

    async def order(self, node: str, address: str, port: int, op: str, args: dict[str, Any],
                    token: FencingToken, timeout_s: float = 600.0) -> dict[str, Any]:
        url = f"https://{address}:{port}/v1/node/orders"
        body = {"op": op, "args": args, "token": token.to_str()}
        try:
            async with self._client().post(url, json=body,
                                           timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
                text = await resp.text()
                try:
                    data = json.loads(text)
                except ValueError:
                    data = {"message": text[-500:]}
                if resp.status != 200:
                    raise OrderFailed(node, op, data.get("message", f"HTTP {resp.status}"), str(data.get("error", "")))
                return data
        except TimeoutError as exc:
            raise OrderFailed(node, op, f"no answer within {timeout_s:.0f} s from {address}:{port}") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise OrderFailed(node, op, f"unreachable at {address}:{port} ({exc or type(exc).__name__})") from exc

    async def forward(self, address: str, port: int, method: str, path: str, body: bytes | None,
                      timeout_s: float = 30.0, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
        """Relay a CLI request to the master's API; (status, decoded answer). `headers`: the caller's."""
        url = f"https://{address}:{port}{path}"
        timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=3)
        headers = {"Content-Type": "application/json", **(headers or {})}
        try:
            async with self._client().request(method, url, data=body, timeout=timeout, headers=headers) as resp:
                text = await resp.text()
                try:
                    return resp.status, json.loads(text) if text else {}
                except ValueError:
                    return resp.status, {"error": "bad-answer", "message": text[-500:]}
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise ConnectionError(f"the master at {address}:{port} does not answer "
                                  f"({exc or type(exc).__name__})") from exc

    async def websocket(self, address: str, port: int, path: str,
                        headers: dict[str, str] | None = None) -> aiohttp.ClientWebSocketResponse:
        """A websocket to another agent (the console relay), authenticated by this node's certificate.
        Raises ConnectionError with that agent's refusal when it does not upgrade."""
        try:
            return await self._client().ws_connect(f"https://{address}:{port}{path}", headers=headers or {},
                                                   timeout=aiohttp.ClientWSTimeout(ws_close=5), heartbeat=30)
        except aiohttp.WSServerHandshakeError as exc:
            why = unquote(exc.headers.get(MESSAGE_HEADER, "") if exc.headers else "") or exc.message
            raise ConnectionError(f"node at {address}:{port} refused ({exc.status}: {why})") from exc
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise ConnectionError(f"node at {address}:{port} does not answer ({exc or type(exc).__name__})") from exc

    def renew(self, ssl_context: ssl.SSLContext, linger_s: float = 30.0) -> None:
        """New connections, with this context, from now on (this node's certificate or CAs changed);
        calls under way may finish.

        Every agent checks the certificate a connection was opened with, so kept-alive
        connections made with a replaced (and soon revoked) certificate must not be reused.
        """
        self._ssl = ssl_context
        old, self._session = self._session, None
        if old is not None and not old.closed:
            asyncio.get_running_loop().call_later(linger_s, lambda: asyncio.ensure_future(old.close()))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
