"""The QEMU guest agent (qemu-ga) of an instance: freeze its file systems around the instant a snapshot or
backup starts, so the copy is consistent with them and not only crash-consistent.

Why it is built this way:

- The channel is a virtio-serial port ``org.qemu.guest_agent.0`` whose host end is a unix socket QEMU
  listens on (kvm.cmdline, ``RunPaths.ga_socket``). It serves one client at a time, so sessions are short,
  like kvm.qmp's. qemu-ga speaks JSON commands and replies, one per line, with no greeting.
- The channel may hold what an earlier session left: a reply it never read (it timed out), half a command
  qemu-ga is still parsing. Every session therefore begins with ``guest-sync-delimited``: a 0xFF byte
  (qemu-ga drops what it had half-parsed), the command with a random id, and everything read is dropped
  until qemu-ga's own 0xFF and the reply carrying that id. A timeout on our side puts the stream out of
  step again, so the session resynchronizes before its next command.
- A guest with no agent (none installed, not booted yet, paused) looks exactly like a slow one: nothing
  answers. The sync is given ``SYNC_TIMEOUT_S``; then ``GuestAgentError`` with ``no_agent`` set says so,
  and a caller copies crash-consistent instead of failing.
- A frozen guest blocks every write until it is thawed, and qemu-ga never thaws by itself. ``frozen()``
  thaws on the way out whatever happened: the caller failed or was cancelled, or the freeze timed out on
  our side (qemu-ga may have frozen some file systems by then, and takes the thaw after the freeze ends).
  The thaw runs in its own task, which a second cancellation does not stop.

Typical use, around kvm.blockbackup's jobs (thawed as soon as they started)::

    async with guestagent.frozen(paths.ga_socket, timeout_s=10) as hold:
        if not hold.count:
            log.info("instance %r: crash-consistent copy (%s)", name, hold.problem)
        await backup_disks(connect, targets, timeout_s, at_start=hold.thaw)

Errors: ``GuestAgentError`` (``reason``, ``no_agent``); ``frozen()`` reports instead of raising.
"""

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Self

log = logging.getLogger(__name__)

SYNC_TIMEOUT_S = 2.5  # an agent answers a sync in milliseconds; silence this long means there is none
THAW_TIMEOUT_S = 10.0
_SENTINEL = b"\xff"  # never in UTF-8 JSON: resets qemu-ga's parser, and precedes its reply to a sync
_MAX_LINE_BYTES = 1 << 20
_CLOSE_TIMEOUT_S = 1.0
_background: set[asyncio.Task[None]] = set()  # thaws a cancelled caller no longer awaits, kept till done


class GuestAgentError(Exception):
    """The guest agent behind ``socket_path`` did not do what was asked; ``no_agent``: nothing answered."""

    def __init__(self, socket_path: str, reason: str, no_agent: bool = False) -> None:
        self.socket_path = socket_path
        self.reason = reason
        self.no_agent = no_agent
        super().__init__(f"guest agent at {socket_path!r}: {reason}")


class GuestAgent:
    """One session with qemu-ga; ``async with await GuestAgent.connect(...)``."""

    def __init__(self, socket_path: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._socket_path = socket_path
        self._reader = reader
        self._writer = writer
        self._buffer = bytearray()
        self._in_step = False

    @classmethod
    async def connect(cls, socket_path: str, timeout_s: float = SYNC_TIMEOUT_S) -> Self:
        """Connect and synchronize within ``timeout_s``."""
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(socket_path), timeout_s)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise GuestAgentError(socket_path, "no guest agent channel: the instance does not run here, or "
                                  "its QEMU was started without one", no_agent=True) from exc
        except TimeoutError as exc:
            raise GuestAgentError(socket_path, f"channel not accepted within {timeout_s:g} s") from exc
        except OSError as exc:
            raise GuestAgentError(socket_path, f"cannot connect: {exc}") from exc
        agent = cls(socket_path, reader, writer)
        try:
            await agent.sync(timeout_s)
        except BaseException:
            await agent.close()
            raise
        return agent

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        """Disconnect; never raises."""
        self._in_step = False
        self._writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            await asyncio.wait_for(self._writer.wait_closed(), _CLOSE_TIMEOUT_S)

    async def sync(self, timeout_s: float = SYNC_TIMEOUT_S) -> None:
        """Bring the stream in step: whatever an earlier session or command left unread is dropped."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        token = 1 + secrets.randbelow(2**31 - 1)
        self._in_step = False
        self._buffer.clear()
        try:
            await self._send({"execute": "guest-sync-delimited", "arguments": {"id": token}}, deadline, _SENTINEL)
            while True:
                line = await self._line(deadline, after_sentinel=True)
                if _parse(line).get("return") == token:
                    break
                log.debug("guest agent %s: dropped a stale reply %r", self._socket_path, line[:200])
        except TimeoutError:
            raise GuestAgentError(self._socket_path, f"no guest agent answered within {timeout_s:g} s (none runs "
                                  "in the guest, the guest is paused, the agent is busy with an earlier command, "
                                  "or another client holds the channel)", no_agent=True) from None
        self._in_step = True

    async def execute(self, command: str, timeout_s: float, arguments: dict[str, object] | None = None) -> object:
        """Run one command and return its ``return`` value, within ``timeout_s`` (a resync included)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        if not self._in_step:
            await self.sync(min(SYNC_TIMEOUT_S, timeout_s))
        message: dict[str, object] = {"execute": command, **({"arguments": arguments} if arguments else {})}
        log.debug("guest agent %s <- %s", self._socket_path, message)
        self._in_step = False  # until the reply is read: a command cut short leaves its reply to come
        try:
            await self._send(message, deadline)
            reply = _parse(await self._line(deadline, after_sentinel=False))
        except TimeoutError:
            raise GuestAgentError(self._socket_path, f"{command}: no answer within {timeout_s:g} s") from None
        log.debug("guest agent %s -> %s", self._socket_path, reply)
        if not reply:
            raise GuestAgentError(self._socket_path, f"{command}: an answer that is not a JSON object")
        self._in_step = True
        if isinstance(error := reply.get("error"), dict):
            raise GuestAgentError(self._socket_path, f"{command}: {error.get('desc')} ({error.get('class')})")
        if "return" not in reply:
            raise GuestAgentError(self._socket_path, f"{command}: unexpected answer {reply!r}")
        return reply["return"]

    async def ping(self, timeout_s: float = SYNC_TIMEOUT_S) -> None:
        await self.execute("guest-ping", timeout_s)

    async def freeze(self, timeout_s: float) -> int:
        """Freeze every file system the guest can freeze; their number (qemu-ga thaws them all on an error)."""
        return await self._count("guest-fsfreeze-freeze", timeout_s)

    async def thaw(self, timeout_s: float = THAW_TIMEOUT_S) -> int:
        """Thaw the guest's file systems; the number thawed (0 when none was frozen)."""
        return await self._count("guest-fsfreeze-thaw", timeout_s)

    async def fsfreeze_status(self, timeout_s: float = SYNC_TIMEOUT_S) -> str:
        """'frozen' or 'thawed', as qemu-ga knows it."""
        status = await self.execute("guest-fsfreeze-status", timeout_s)
        if not isinstance(status, str):
            raise GuestAgentError(self._socket_path, f"guest-fsfreeze-status: unexpected answer {status!r}")
        return status

    async def _count(self, command: str, timeout_s: float) -> int:
        result = await self.execute(command, timeout_s)
        if not isinstance(result, int):
            raise GuestAgentError(self._socket_path, f"{command}: unexpected answer {result!r}")
        return result

    async def _send(self, message: dict[str, object], deadline: float, prefix: bytes = b"") -> None:
        try:
            self._writer.write(prefix + json.dumps(message).encode() + b"\n")
            await asyncio.wait_for(self._writer.drain(), _remaining(deadline))
        except TimeoutError:
            raise
        except OSError as exc:
            raise GuestAgentError(self._socket_path, f"the channel failed: {exc}") from exc

    async def _line(self, deadline: float, after_sentinel: bool) -> bytes:
        """The next complete line; with ``after_sentinel``, the first one after the last 0xFF seen (what came
        before that is stale). TimeoutError at ``deadline``."""
        seen = not after_sentinel
        while True:
            if after_sentinel and (start := self._buffer.rfind(_SENTINEL)) >= 0:
                del self._buffer[:start + 1]
                seen = True
            elif not seen:
                self._buffer.clear()
            if seen and (end := self._buffer.find(b"\n")) >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[:end + 1]
                return line
            if len(self._buffer) > _MAX_LINE_BYTES:
                raise GuestAgentError(self._socket_path, f"a reply longer than {_MAX_LINE_BYTES} bytes")
            try:
                data = await asyncio.wait_for(self._reader.read(65536), _remaining(deadline))
            except TimeoutError:
                raise
            except OSError as exc:
                raise GuestAgentError(self._socket_path, f"the channel failed: {exc}") from exc
            if not data:
                raise GuestAgentError(self._socket_path, "QEMU closed the channel (the instance stopped?)")
            self._buffer += data


class FreezeHold:
    """What ``frozen()`` did. ``count``: file systems frozen; 0 when none was, and then ``problem`` says why
    (``no_agent``: nothing answered) and the copy is only crash-consistent. ``thaw()`` ends the freeze."""

    def __init__(self, socket_path: str, thaw_timeout_s: float) -> None:
        self.socket_path = socket_path
        self.count = 0
        self.problem = ""
        self.no_agent = False
        self.thawed: int | None = None  # file systems the thaw thawed, once it succeeded
        self.thaw_problem = ""  # why the thaw failed: the guest may still be frozen
        self._thaw_timeout_s = thaw_timeout_s
        self._agent: GuestAgent | None = None
        self._sent = False
        self._thawing: asyncio.Task[None] | None = None

    async def thaw(self) -> None:
        """Thaw now (``frozen()`` does it on exit otherwise); only the first call acts, the others wait for
        it. Never raises for the agent: a failure is in ``thaw_problem`` and logged."""
        if self._thawing is None:
            self._thawing = asyncio.create_task(self._thaw())
            _background.add(self._thawing)
            self._thawing.add_done_callback(_background.discard)
        await asyncio.shield(self._thawing)

    async def fsfreeze_status(self, timeout_s: float = SYNC_TIMEOUT_S) -> str:
        """'frozen' or 'thawed', asked on the freeze's own session (held until the thaw, so that no other
        client can take the channel meanwhile and keep the thaw waiting)."""
        if self._agent is None:
            raise GuestAgentError(self.socket_path, "no session: the freeze failed or the guest was thawed")
        return await self._agent.fsfreeze_status(timeout_s)

    async def _freeze(self, timeout_s: float) -> None:
        deadline = asyncio.get_running_loop().time() + timeout_s
        try:
            self._agent = await GuestAgent.connect(self.socket_path, min(SYNC_TIMEOUT_S, timeout_s))
            self._sent = True  # from here on qemu-ga may freeze something, whatever we see
            self.count = await self._agent.freeze(_remaining(deadline))
            if not self.count:
                self.problem = "the guest agent found no file system to freeze"
        except GuestAgentError as exc:
            self.problem, self.no_agent = exc.reason, exc.no_agent
        except TimeoutError:
            self.problem = f"no time left to freeze within {timeout_s:g} s"

    async def _thaw(self) -> None:
        agent, self._agent = self._agent, None
        try:
            if not self._sent:
                return
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self._thaw_timeout_s
            # The freeze's session, then a fresh one if that one broke. The agent answered before, so a sync
            # may take the whole budget: after a freeze cut short, the agent answers once the freeze is done.
            for attempt in range(2):
                try:
                    if agent is None:
                        agent = await GuestAgent.connect(self.socket_path, _remaining(deadline))
                    elif not agent._in_step:
                        await agent.sync(_remaining(deadline))
                    self.thawed = await agent.thaw(_remaining(deadline))
                    self.thaw_problem = ""
                    return
                except (GuestAgentError, TimeoutError) as exc:
                    self.thaw_problem = exc.reason if isinstance(exc, GuestAgentError) else "no time left"
                    if agent is not None:
                        await agent.close()
                        agent = None
                    if attempt or loop.time() >= deadline:
                        break
            log.warning("guest agent at %r: thaw failed (%s); the guest's file systems may still be frozen "
                        "until the guest is restarted", self.socket_path, self.thaw_problem)
        finally:
            if agent is not None:
                await agent.close()


@contextlib.asynccontextmanager
async def frozen(socket_path: str, timeout_s: float, thaw_timeout_s: float = THAW_TIMEOUT_S,
                 ) -> AsyncIterator[FreezeHold]:
    """Freeze the guest's file systems (within ``timeout_s``, the sync included) and yield what was done;
    thawed on exit at the latest, in every case. Never raises GuestAgentError: a guest that could not be
    frozen yields ``count`` 0 and its ``problem``."""
    hold = FreezeHold(socket_path, thaw_timeout_s)
    try:
        await hold._freeze(timeout_s)
        yield hold
    finally:
        await hold.thaw()


async def ping(socket_path: str, timeout_s: float = SYNC_TIMEOUT_S) -> None:
    """Whether an agent answers: returns, or raises GuestAgentError (``no_agent`` when nothing answered)."""
    async with await GuestAgent.connect(socket_path, min(SYNC_TIMEOUT_S, timeout_s)) as agent:
        await agent.ping(timeout_s)


async def fsfreeze_status(socket_path: str, timeout_s: float = SYNC_TIMEOUT_S) -> str:
    """'frozen' or 'thawed'."""
    async with await GuestAgent.connect(socket_path, min(SYNC_TIMEOUT_S, timeout_s)) as agent:
        return await agent.fsfreeze_status(timeout_s)


def _remaining(deadline: float) -> float:
    left = deadline - asyncio.get_running_loop().time()
    if left <= 0:
        raise TimeoutError
    return left


def _parse(line: bytes) -> dict[str, object]:
    """A reply as a dict; anything else (a stale fragment) as an empty one."""
    try:
        reply = json.loads(line.decode("utf-8", errors="replace"))
    except ValueError:
        return {}
    return reply if isinstance(reply, dict) else {}
