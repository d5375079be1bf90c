"""Every error the membership package raises about Serf, in one tree.

    SerfError                     base: "the local Serf agent did not do it"
    ├── SerfUnavailable           no connection, connection lost, or no reply in time (address, reason)
    ├── SerfRpcError              the agent answered with an error (command, message)
    └── SerfProtocolError         the agent sent something this client cannot read (what, record)

Socket and msgpack errors are translated into these in `membership.rpc`, once;
`membership.rpc` re-exports them so callers import from one place.
"""

from __future__ import annotations

# Serf's own error strings, with what an operator or caller would do about them.
_HINTS = {
    "Invalid authentication token": "pass the agent's rpc_auth key as auth_key",
    "Authentication required": "the agent runs with rpc_auth; pass its key as auth_key",
    "Unsupported IPC version": "this client speaks Serf RPC version 1 (serf 0.8.x)",
    "Invalid event filter": "use member-join, member-leave, member-failed, member-update, member-reap, user",
}


class SerfError(Exception):
    """Base of every Serf error this package raises."""


class SerfUnavailable(SerfError):
    """The agent's RPC endpoint could not be reached or stopped answering."""

    def __init__(self, address: str, reason: str) -> None:
        super().__init__(f"serf agent at {address} unavailable: {reason}; "
                         "is the serf agent running and listening on that RPC address?")
        self.address = address
        self.reason = reason


class SerfRpcError(SerfError):
    """The agent understood the command and refused it; message is Serf's own."""

    def __init__(self, command: str, message: str) -> None:
        hint = _HINTS.get(message)
        super().__init__(f"serf rpc '{command}' failed: {message.strip()}" + (f" ({hint})" if hint else ""))
        self.command = command
        self.message = message


class SerfProtocolError(SerfError):
    """A reply or record did not have the shape of serf 0.8.x RPC version 1."""

    def __init__(self, what: str, record: object) -> None:
        super().__init__(f"malformed serf {what}: {record!r:.200}; "
                         "is the agent a serf 0.8.x speaking RPC version 1?")
        self.what = what
        self.record = record
