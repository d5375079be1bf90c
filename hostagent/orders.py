"""Node-to-node calls: the master's orders to agents, over mutual TLS.

Each order carries the master's fencing token; the receiving agent refuses it
if it has already seen a newer one. Failures come back as OrderFailed with the
node's own message, translated here once.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from typing import Any

import aiohttp

from election.lease import FencingToken


class OrderFailed(Exception):
    def __init__(self, node: str, op: str, message: str, code: str = "") -> None:
        super().__init__(f"node '{node}' could not {op.replace('instance.', '')}: {message}")
        self.node = node
        self.op = op
        self.message = message
        self.code = code  # the node's error code ("stale-token", ...); empty when it did not answer


class NodeClient:
    """HTTPS client to other agents' /v1/node/orders, authenticated by node certificates."""

    def __init__(self, ssl_context: ssl.SSLContext) -> None:
        self._ssl = ssl_context
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self._ssl))
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
