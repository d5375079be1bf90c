"""The agent's access log: one line per API request, on both sites, when agent.toml asks for it.

    2025-03-01T10:15:02.114Z user:alice:write@n2 POST /v1/instances/web1/stop 202 0.021s

Fields: time (UTC), caller (hostagent.callers.Caller.token; "-" when the
request was refused before anyone was named), method, the raw path as sent
(query string and percent-escapes included), status, duration. Refusals are
logged too: they are what one looks for after an attack. The file is opened
by a WatchedFileHandler, so logrotate may move it away.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import time
from typing import Any

from aiohttp.abc import AbstractAccessLogger

from hostagent.api.auth import CALLER
from hostagent.callers import Caller

FILE_NAME = "access.log"


def open_log(log_dir: str) -> logging.Logger:
    """The logger aiohttp hands to AccessLog: its own file, kept out of the agent's log."""
    logger = logging.getLogger("corral.access")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    if not logger.handlers:
        os.makedirs(log_dir, exist_ok=True)
        handler = logging.handlers.WatchedFileHandler(os.path.join(log_dir, FILE_NAME))
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    return logger


def line(now: float, caller: Caller | None, method: str, raw_path: str, status: int, duration_s: float) -> str:
    """One access log line (pure); control characters and spaces in the path are escaped."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"
    path = "".join(c if 0x20 < ord(c) < 0x7F else f"%{ord(c):02X}" if ord(c) < 0x100 else c for c in raw_path)
    who = caller.token() if caller is not None else "-"
    return f"{stamp} {who} {method} {path} {status} {duration_s:.3f}s"


class AccessLog(AbstractAccessLogger):
    """aiohttp's hook, called once a response is sent (for a console websocket: once it closes)."""

    def log(self, request: Any, response: Any, time: float) -> None:
        caller = request.get(CALLER)
        self.logger.info(line(_now(), caller, request.method,
                              request.raw_path, response.status, time))


def _now() -> float:
    return time.time()  # the host's clock, like the agent log's stamps: the two logs line up
