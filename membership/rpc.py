"""The only module that speaks Serf's RPC protocol: msgpack over TCP, serf 0.8.x, version 1.

Wire format (checked against serf 0.8.2): the client sends a header map
{"Command", "Seq"} and, for commands that take one, a body map; the agent
answers a header {"Seq", "Error"} and, for commands that return one, a body.
A `stream` keeps sending header+record pairs under its own Seq until `stop`.
One reader task per connection matches every reply to its request by Seq, so
commands and streams can run concurrently over one connection.

Errors (see `membership.errors`): socket and msgpack failures become
`SerfUnavailable`, an agent's error reply `SerfRpcError`, a reply of the wrong
shape `SerfProtocolError`. Every wait is bounded by the connection's
`timeout_s` (or a longer bound where Serf itself takes longer, noted below).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType, TracebackType
from typing import Any

import msgpack

from membership.errors import SerfError, SerfProtocolError, SerfRpcError, SerfUnavailable
from membership.members import (Member, MemberEvent, SerfEvent, UserEvent, check_stream_types, parse_event,
                                parse_members)

__all__ = ["SerfRpc", "SerfStream", "Member", "MemberEvent", "UserEvent", "SerfEvent",
           "SerfError", "SerfUnavailable", "SerfRpcError", "SerfProtocolError"]

log = logging.getLogger(__name__)

IPC_VERSION = 1

# Serf answers these before dispatching a command, and then never sends the
# command's body (and for the first two, it does not even read ours).
_PRE_DISPATCH_ERRORS = frozenset({"Handshake required", "Authentication required", "Unsupported command"})

# memberlist's TCP timeout under the "lan" profile: a join may spend this long on each address.
_JOIN_PER_ADDRESS_S = 10.0
# Serf's default broadcast timeout: a leave waits up to this long for its intent to spread.
_LEAVE_BROADCAST_S = 5.0

_READ_CHUNK_BYTES = 64 * 1024

_NO_TAGS: Mapping[str, str] = MappingProxyType({})


@dataclass
class _Pending:
    command: str
    has_body: bool
    future: asyncio.Future[tuple[str, Any]]


@dataclass(frozen=True)
class _Closed:
    """Put on a stream's queue when the connection ends, so its reader wakes up and raises."""

    reason: str


class SerfRpc:
    """One authenticated RPC connection to a local Serf agent; get one with `await SerfRpc.connect(...)`."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, address: str,
                 timeout_s: float) -> None:
        self.address = address
        self.timeout_s = timeout_s
        self._reader = reader
        self._writer = writer
        self._seqs = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._streams: dict[int, asyncio.Queue[dict[str, Any] | _Closed]] = {}
        # Seqs of streams we stopped or gave up on: records already in flight for them are skipped.
        self._stopped: set[int] = set()
        self._unpacker = msgpack.Unpacker(raw=False, unicode_errors="replace")
        self._closed_reason: str | None = None
        self._read_task = asyncio.create_task(self._read_loop(), name=f"serf-rpc {address}")

    @classmethod
    async def connect(cls, host: str, port: int, auth_key: str | None = None, timeout_s: float = 5) -> SerfRpc:
        """Open, handshake and (when the agent runs with rpc_auth) authenticate."""
        address = f"{host}:{port}"
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
        except asyncio.TimeoutError:
            raise SerfUnavailable(address, f"no TCP connection within {timeout_s:g} s") from None
        except OSError as exc:
            raise SerfUnavailable(address, _os_reason(exc)) from exc
        rpc = cls(reader, writer, address, timeout_s)
        try:
            await rpc._call("handshake", {"Version": IPC_VERSION})
            if auth_key is not None:
                await rpc._call("auth", {"AuthKey": auth_key})
        except BaseException:
            await rpc.close()
            raise
        return rpc

    async def __aenter__(self) -> SerfRpc:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    @property
    def closed(self) -> bool:
        return self._closed_reason is not None

    async def members(self) -> list[Member]:
        """Every member the agent knows, including failed and left ones until Serf reaps them."""
        return parse_members(await self._call("members", has_body=True))

    async def join(self, addrs: Sequence[str], replay: bool = False, timeout_s: float | None = None) -> int:
        """Join the cluster through any of addrs ("ADDR:PORT"); returns how many answered.

        Serf raises only when none answered. The default bound allows memberlist's
        10 s TCP timeout per address on top of the connection's timeout.
        """
        if timeout_s is None:
            timeout_s = self.timeout_s + _JOIN_PER_ADDRESS_S * len(addrs)
        body = await self._call("join", {"Existing": list(addrs), "Replay": replay}, has_body=True,
                                timeout_s=timeout_s)
        try:
            return int(body["Num"])
        except (KeyError, TypeError, ValueError):
            raise SerfProtocolError("join reply", body) from None

    async def leave(self) -> None:
        """Leave the cluster gracefully; the agent process then exits and closes this connection."""
        await self._call("leave", timeout_s=self.timeout_s + _LEAVE_BROADCAST_S)

    async def force_leave(self, node: str) -> None:
        """Mark a failed node as left, so the others stop trying to reach it."""
        await self._call("force-leave", {"Node": node})

    async def update_tags(self, set: Mapping[str, str] = _NO_TAGS, delete: Sequence[str] = ()) -> None:  # noqa: A002
        """Set and delete this node's tags; the change gossips out as a member-update."""
        await self._call("tags", {"Tags": dict(set), "DeleteTags": list(delete)})

    async def user_event(self, name: str, payload: bytes = b"", coalesce: bool = False) -> None:
        """Gossip a user event; Serf refuses (SerfRpcError) name+payload above its 512-byte limit."""
        await self._call("event", {"Name": name, "Payload": bytes(payload), "Coalesce": coalesce})

    async def install_key(self, key_b64: str) -> dict[str, Any]:
        """Gossip a new encryption key to every member's keyring (not yet used for sending)."""
        return await self._key_command("install-key", key_b64)

    async def use_key(self, key_b64: str) -> dict[str, Any]:
        """Make an installed key the one every member encrypts with."""
        return await self._key_command("use-key", key_b64)

    async def remove_key(self, key_b64: str) -> dict[str, Any]:
        """Drop a key from every member's keyring (refused for the key in use)."""
        return await self._key_command("remove-key", key_b64)

    async def list_keys(self) -> dict[str, Any]:
        """{"Keys": {key: members holding it}, "NumNodes": n, ...}; keys are secrets: never log them."""
        body = await self._call("list-keys", has_body=True)
        if not isinstance(body, dict):
            raise SerfProtocolError("list-keys reply", body)
        return body

    async def _key_command(self, command: str, key_b64: str) -> dict[str, Any]:
        """Keyring changes reach every member; a member that did not confirm is an error here."""
        body = await self._call(command, {"Key": key_b64}, has_body=True)
        if not isinstance(body, dict):
            raise SerfProtocolError(f"{command} reply", body)
        if body.get("NumErr"):
            failed = ", ".join(f"{n}: {m}" for n, m in (body.get("Messages") or {}).items())
            raise SerfRpcError(command, f"{body['NumErr']} of {body.get('NumNodes')} members failed ({failed})")
        return body

    async def stats(self) -> dict[str, dict[str, str]]:
        """Serf's own counters, e.g. stats()["serf"]["encrypted"] == "true"."""
        body = await self._call("stats", has_body=True)
        if not isinstance(body, dict):
            raise SerfProtocolError("stats reply", body)
        return body

    def stream(self, types: str) -> SerfStream:
        """Events of the given types ("member-join,member-failed,user", ...).

        Use `async with rpc.stream(...) as events:` so the subscription exists
        before you act and is stopped afterwards. Member events are coalesced by
        Serf (failures reach the stream ~1 s after members() shows them), so poll
        members() too.
        """
        return SerfStream(self, check_stream_types(types))

    async def close(self) -> None:
        """Close the connection; pending commands and streams end with SerfUnavailable."""
        if not self._read_task.done():
            self._read_task.cancel()
        await asyncio.gather(self._read_task, return_exceptions=True)
        try:
            await asyncio.wait_for(self._writer.wait_closed(), self.timeout_s)
        except (OSError, asyncio.TimeoutError):
            pass

    # -- stream plumbing, used by SerfStream ------------------------------------------------

    async def _subscribe(self, types: str, queue: asyncio.Queue[dict[str, Any] | _Closed]) -> int:
        seq = next(self._seqs)
        # Registered before sending: the first record may follow the acknowledgement at once.
        self._streams[seq] = queue
        try:
            await self._request(seq, "stream", {"Type": types}, has_body=False, timeout_s=self.timeout_s)
        except BaseException:
            self._streams.pop(seq, None)
            self._stopped.add(seq)
            raise
        return seq

    async def _unsubscribe(self, seq: int) -> None:
        self._streams.pop(seq, None)
        self._stopped.add(seq)
        if self._closed_reason is None:
            await self._call("stop", {"Stop": seq})

    # -- request/reply ----------------------------------------------------------------------

    async def _call(self, command: str, body: Mapping[str, Any] | None = None, *, has_body: bool = False,
                    timeout_s: float | None = None) -> Any:
        return await self._request(next(self._seqs), command, body, has_body=has_body,
                                   timeout_s=self.timeout_s if timeout_s is None else timeout_s)

    async def _request(self, seq: int, command: str, body: Mapping[str, Any] | None, *, has_body: bool,
                       timeout_s: float) -> Any:
        if self._closed_reason is not None:
            raise SerfUnavailable(self.address, self._closed_reason)
        future: asyncio.Future[tuple[str, Any]] = asyncio.get_running_loop().create_future()
        # Stays registered after a timeout, so a late reply is still read (body included) and dropped.
        self._pending[seq] = _Pending(command, has_body, future)
        data = msgpack.packb({"Command": command, "Seq": seq})
        if body is not None:
            data += msgpack.packb(body)
        log.debug("serf rpc %s: -> %s seq %d", self.address, command, seq)
        try:
            self._writer.write(data)
            error, reply = await asyncio.wait_for(self._send_and_wait(future), timeout_s)
        except asyncio.TimeoutError:
            raise SerfUnavailable(self.address, f"no reply to '{command}' within {timeout_s:g} s") from None
        except OSError as exc:
            raise SerfUnavailable(self.address, _os_reason(exc)) from exc
        finally:
            # No-op once answered; otherwise nobody waits any more, and a late reply is read and dropped.
            future.cancel()
        if error:
            raise SerfRpcError(command, error)
        return reply

    async def _send_and_wait(self, future: asyncio.Future[tuple[str, Any]]) -> tuple[str, Any]:
        await self._writer.drain()
        return await future

    # -- the reader task --------------------------------------------------------------------

    async def _read_loop(self) -> None:
        reason = "connection closed by this client"
        try:
            while True:
                await self._dispatch_one()
        except EOFError:
            reason = "the agent closed the connection"
        except OSError as exc:
            reason = _os_reason(exc)
        except (SerfProtocolError, ValueError, msgpack.UnpackException) as exc:
            reason = f"unreadable reply ({exc})"
        finally:
            self._shut(reason)

    async def _dispatch_one(self) -> None:
        header = await self._next_object()
        if not isinstance(header, dict) or not isinstance(header.get("Seq"), int):
            raise SerfProtocolError("reply header", header)
        seq, error = header["Seq"], str(header.get("Error") or "")
        pending = self._pending.pop(seq, None)
        if pending is not None:
            body = None
            if pending.has_body and error not in _PRE_DISPATCH_ERRORS:
                body = await self._next_object()
            log.debug("serf rpc %s: <- %s seq %d%s", self.address, pending.command, seq,
                      f" error {error!r}" if error else "")
            if not pending.future.done():
                pending.future.set_result((error, body))
        elif seq in self._streams or seq in self._stopped:
            record = await self._next_object()
            queue = self._streams.get(seq)
            if queue is not None:
                queue.put_nowait(record)
        else:
            # Without knowing the command we cannot tell whether a body follows: the stream is lost.
            raise SerfProtocolError(f"reply for unknown seq {seq}", header)

    async def _next_object(self) -> Any:
        while True:
            try:
                return next(self._unpacker)
            except StopIteration:
                pass
            data = await self._reader.read(_READ_CHUNK_BYTES)
            if not data:
                raise EOFError
            self._unpacker.feed(data)

    def _shut(self, reason: str) -> None:
        self._closed_reason = reason
        log.debug("serf rpc %s: closed: %s", self.address, reason)
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.set_exception(SerfUnavailable(self.address, reason))
        self._pending.clear()
        for queue in self._streams.values():
            queue.put_nowait(_Closed(reason))
        self._writer.close()


def _os_reason(exc: OSError) -> str:
    """"Connection refused" rather than asyncio's "Connect call failed (...)"."""
    return os.strerror(exc.errno) if exc.errno else str(exc) or type(exc).__name__


class SerfStream(AsyncIterator[SerfEvent]):
    """One `stream` subscription: an async iterator of SerfEvent and an async context manager.

    Iterating without `async with` subscribes on the first `__anext__`; then
    call `aclose()` when done so the agent stops sending.
    """

    def __init__(self, rpc: SerfRpc, types: str) -> None:
        self.types = types
        self._rpc = rpc
        self._queue: asyncio.Queue[dict[str, Any] | _Closed] = asyncio.Queue()
        self._seq: int | None = None
        self._finished = False

    async def start(self) -> None:
        """Subscribe now (idempotent): events from this moment on are delivered."""
        if self._seq is None and not self._finished:
            self._seq = await self._rpc._subscribe(self.types, self._queue)

    async def aclose(self) -> None:
        """Stop the subscription; ignores a connection that is already gone (the stream died with it)."""
        if self._finished:
            return
        self._finished = True
        if self._seq is not None:
            try:
                await self._rpc._unsubscribe(self._seq)
            except SerfUnavailable:
                pass

    async def __aenter__(self) -> SerfStream:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    async def __anext__(self) -> SerfEvent:
        await self.start()
        if self._finished:
            raise StopAsyncIteration
        item = await self._queue.get()
        if isinstance(item, _Closed):
            self._finished = True
            raise SerfUnavailable(self._rpc.address, item.reason)
        return parse_event(item)
