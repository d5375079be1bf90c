"""LUXI's framing: each message is one JSON object followed by the byte 0x03, requests
{"method", "args"[, "version"]} and answers {"success", "result"}. Pure: bytes in, messages out, so a
garbage or oversized client is refused here before any handler sees it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from hostagent.api.base import nesting

EOM = b"\x03"
MAX_MESSAGE_BYTES = 1 << 20  # no htools request comes near this; a client sending more is refused
MAX_DEPTH = 32  # htools' opcodes nest a few levels; json's own recursion must never be the limit


class WireError(Exception):
    """The client broke the protocol: the message says how; the connection is answered once, then closed."""


@dataclass(frozen=True)
class Request:
    method: str
    args: list[Any]


class Framer:
    """Collects bytes and hands out whole messages; refuses one larger than `limit` as soon as it is seen,
    without buffering it."""

    def __init__(self, limit: int = MAX_MESSAGE_BYTES) -> None:
        self.limit = limit
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        messages = []
        while (end := self._buffer.find(EOM)) >= 0:
            if end > self.limit:
                raise WireError(f"a message is longer than {self.limit} bytes")
            messages.append(bytes(self._buffer[:end]))
            del self._buffer[:end + 1]
        if len(self._buffer) > self.limit:
            raise WireError(f"a message is longer than {self.limit} bytes")
        return messages

    @property
    def pending(self) -> bool:
        """Part of a message has arrived (the client is in the middle of sending)."""
        return bool(self._buffer)


def decode(raw: bytes) -> Request:
    """One request; WireError says what is wrong with it."""
    if nesting(raw) > MAX_DEPTH:
        raise WireError(f"the request nests deeper than {MAX_DEPTH} levels")
    try:
        body = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise WireError(f"the request is not JSON ({exc})") from None
    if not isinstance(body, dict) or not isinstance(body.get("method"), str):
        raise WireError('a request is a JSON object with a "method" string and an "args" list')
    args = body.get("args", [])
    if not isinstance(args, list):
        raise WireError(f'the "args" of {body["method"]} must be a list, not {type(args).__name__}')
    return Request(body["method"], args)


def _no_constant(constant: str) -> None:
    raise ValueError(f"{constant} is not a JSON number")


def success(result: Any) -> bytes:
    return json.dumps({"success": True, "result": result}, separators=(",", ":")).encode() + EOM


def failure(kind: str, message: str) -> bytes:
    """An error as Ganeti's clients decode it: [error class, [arguments]]. OpPrereqError (with Ganeti's
    error code) for what the caller asked wrong or Corral refuses; OpExecError for what failed on the way."""
    args: list[Any] = [message, "wrong_input"] if kind == "OpPrereqError" else [message]
    return json.dumps({"success": False, "result": [kind, args]}, separators=(",", ":")).encode() + EOM
