"""Errors an operator must act on, shared by the API, the checks and the jobs.

    ValueError
      BadRequest   input to correct; the message says what is accepted (HTTP 400, exit 2)
    LookupError
      NotFound     no such instance/node/job (HTTP 404, exit 2)
    Exception
      Conflict     the request collides with the config: a duplicate name, a busy
                   object, an instance already running (HTTP 409, exit 2)
        Reserved   a running job holds what the request needs (a name, a MAC, an address)
"""

from __future__ import annotations

# Every error answer repeats its message in this header, for a client that cannot read the body: a refused
# websocket handshake, whose reason the agent relaying a console passes on.
MESSAGE_HEADER = "X-Corral-Message"


class BadRequest(ValueError):
    """Input the operator must correct; the message says what is accepted."""


class NotFound(LookupError):
    """The named object does not exist; the message lists what does."""


class Conflict(Exception):
    """A request that collides with the config (duplicate name, busy object)."""


class Reserved(Conflict):
    """A job already holds a reservation this request needs (`key`): a request that chose the value itself
    (an address from a pool) may choose again."""

    def __init__(self, message: str, key: str) -> None:
        super().__init__(message)
        self.key = key
