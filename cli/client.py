"""The CLI's one seam to the agent: HTTP over the local unix socket.

stdlib http.client keeps `corral` quick to start (no event loop to import).
"""

from __future__ import annotations

import http.client
import json
import os
import socket
from typing import Any

DEFAULT_SOCKET = "/run/corral/agent.sock"
EXIT_UNREACHABLE = 3


class AgentUnreachable(Exception):
    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"cannot reach the corral agent at {path}: {reason}\n"
                         "  is corral-agent running? point at it with --socket PATH or CORRAL_SOCKET=PATH")
        self.path = path


class ApiError(Exception):
    """The agent refused or failed a request; `message` is the agent's explanation."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


def socket_path(explicit: str | None) -> str:
    return explicit or os.environ.get("CORRAL_SOCKET") or DEFAULT_SOCKET


class AgentClient:
    def __init__(self, path: str, timeout_s: float = 120.0) -> None:
        self.path = path
        self.timeout_s = timeout_s

    def request(self, method: str, url: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """Return the decoded answer ({data, replica}); raise ApiError / AgentUnreachable."""
        conn = _UnixConnection(self.path, self.timeout_s)
        try:
            payload = None if body is None else json.dumps(body).encode()
            headers = {"Content-Type": "application/json"} if payload is not None else {}
            conn.request(method, url, body=payload, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise AgentUnreachable(self.path, exc.strerror or str(exc)) from None
        except PermissionError:
            raise AgentUnreachable(self.path, "permission denied (the local socket is for root)") from None
        except (OSError, http.client.HTTPException) as exc:
            raise AgentUnreachable(self.path, str(exc) or type(exc).__name__) from None
        finally:
            conn.close()
        try:
            data = json.loads(raw) if raw else {}
        except ValueError:
            raise ApiError(resp.status, "bad-answer", raw[:300].decode(errors="replace")) from None
        if resp.status >= 400:
            raise ApiError(resp.status, data.get("error", "error"), data.get("message", f"HTTP {resp.status}"))
        return data

    def get(self, url: str) -> dict[str, Any]:
        return self.request("GET", url)

    def post(self, url: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.request("POST", url, body or {})

    def delete(self, url: str) -> dict[str, Any]:
        return self.request("DELETE", url)
