"""Errors an operator must act on, shared by the API, the checks, the jobs and the node's order guard.

    ValueError
      BadRequest         input to correct; the message says what is accepted (HTTP 400, exit 2)
    LookupError
      NotFound           no such instance/node/job (HTTP 404, exit 2)
    Exception
      Conflict           the request collides with the config: a duplicate name, a busy
                         object, an instance already running (HTTP 409, exit 2)
        Reserved         a running job holds what the request needs (a name, a MAC, an address)
      NotMaster          a change needs the master, and this node is not it and reaches none
                         that is: none elected, no quorum, or its own lease lapsed; retry
                         later (HTTP 503 "no-master", exit 1). The leaf's own
                         election.lease.NotMaster (a master write refused) is answered the same.
        SenderNotMaster  an order refused because its sender is not the master its fencing
                         token names: deposed or forged; never retried as is (HTTP 409 "not-the-master")
          StaleToken     its token is older than one this node already obeyed (HTTP 409 "stale-token")
"""

from __future__ import annotations

from typing import Protocol

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


class NotMaster(Exception):
    """Only the master may do this and no master can be reached from here; `master_hint` names the node
    that holds the master lease, when one is known, for a client that can ask it instead."""

    def __init__(self, master_hint: str | None, message: str) -> None:
        super().__init__(message)
        self.master_hint = master_hint


class SenderNotMaster(NotMaster):
    """A node refuses an order: its sender is not the master, and obeying it could undo the real master's work.

    A subclass rather than a flag on NotMaster, so the API's table from class to answer stays a table: this
    answers 409 (the sender is deposed: the refusal stands), its base 503 (no master now: ask again later)."""


class Token(Protocol):
    """A fencing token (election.lease.FencingToken), as far as a refusal names it: errors stay a leaf."""

    def to_str(self) -> str: ...


class StaleToken(SenderNotMaster):
    """An order from a master older than one this node already obeyed."""

    def __init__(self, seen: Token, got: Token) -> None:
        super().__init__(None, f"refused an order with fencing token {got.to_str()}: this node has already "
                               f"seen the newer token {seen.to_str()} (the sender is no longer master)")
        self.seen = seen
        self.got = got
