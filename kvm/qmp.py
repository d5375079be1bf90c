"""The one module that speaks QMP to a QEMU process.

Connections are short-lived on purpose: a QEMU monitor socket serves one
client at a time, so holding it open would block the CLI, a restarted
agent or an operator's debugging session. Every call is bounded by the
connection's timeout, and every ``qemu.qmp`` error becomes a ``QmpError``
here, so callers handle exactly one exception type.
"""

import asyncio
import logging
from types import TracebackType
from typing import Any, Self

from qemu.qmp import ExecInterruptedError, QMPClient, QMPError

log = logging.getLogger(__name__)
CONNECT_TRIES = 100  # bounded by count as well as by the caller's timeout
CONNECT_RETRY_S = 0.05


class _DebugOnly(logging.LoggerAdapter[logging.Logger]):
    """Demotes qemu.qmp's own log lines to DEBUG.

    It logs each failure at ERROR, but callers get a QmpError and decide
    what the operator sees, so its lines are wire detail.
    """

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        super().log(logging.DEBUG, msg, *args, **kwargs)


class QmpError(Exception):
    """A QMP exchange with the QEMU behind ``socket_path`` failed."""

    def __init__(self, socket_path: str, reason: str) -> None:
        self.socket_path = socket_path
        self.reason = reason
        super().__init__(f"QMP at {socket_path!r}: {reason}")


class Qmp:
    """One open QMP session; use ``async with await Qmp.connect(...)``."""

    def __init__(self, client: QMPClient, socket_path: str, timeout_s: float) -> None:
        self._client = client
        self._socket_path = socket_path
        self._timeout_s = timeout_s

    @classmethod
    async def connect(cls, socket_path: str, timeout_s: float = 5.0) -> "Qmp":
        """Connect and negotiate capabilities within ``timeout_s``.

        While another client holds the monitor, a new one waits in the socket's backlog; when several wait,
        some are seen dropped at the handshake ("Failed to establish session: Invalid argument", measured
        with three clients taking turns on QEMU 7.2): those try again, within the same ``timeout_s``. A
        socket that is gone or refuses (no QEMU) fails at once."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        for attempt in range(CONNECT_TRIES):
            client = QMPClient(f"qmp:{socket_path}")
            client.logger = _DebugOnly(log, {})  # type: ignore[assignment]  # typed Logger; qemu.qmp only logs through it
            left = deadline - asyncio.get_running_loop().time()
            try:
                await asyncio.wait_for(client.connect(socket_path), max(left, 0.01))
            except (QMPError, OSError) as exc:
                await _disconnect_quietly(client)
                if _no_qemu(exc) or left <= CONNECT_RETRY_S or attempt == CONNECT_TRIES - 1:
                    raise QmpError(socket_path, f"cannot connect: {_describe(exc)}") from exc
                await asyncio.sleep(CONNECT_RETRY_S)
                continue
            except TimeoutError as exc:
                await _disconnect_quietly(client)
                raise QmpError(
                    socket_path, f"no QMP greeting within {timeout_s:g} s (QEMU hung or busy)"
                ) from exc
            return cls(client, socket_path, timeout_s)
        raise AssertionError("unreachable: the last try raises")

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Disconnect; never raises, since the QEMU may already be gone."""
        await _disconnect_quietly(self._client)

    async def execute(self, command: str, arguments: dict[str, object] | None = None) -> object:
        """Run one QMP command and return its ``return`` value."""
        log.debug("QMP %s <- %s %s", self._socket_path, command, arguments or "")
        try:
            result = await asyncio.wait_for(
                self._client.execute(command, arguments), self._timeout_s
            )
        except QMPError as exc:
            raise QmpError(self._socket_path, f"{command}: {_describe(exc)}") from exc
        except TimeoutError as exc:
            raise QmpError(
                self._socket_path, f"{command}: no answer within {self._timeout_s:g} s"
            ) from exc
        log.debug("QMP %s -> %s", self._socket_path, result)
        return result

    async def next_event(self, timeout_s: float) -> dict[str, Any] | None:
        """The next event QEMU sent on this connection, or None after ``timeout_s``."""
        try:
            event = await asyncio.wait_for(self._client.events.get(), timeout_s)
        except TimeoutError:
            return None
        log.debug("QMP %s event %s", self._socket_path, event.get("event"))
        return dict(event)

    async def status(self) -> str:
        """QEMU's run state: running, paused, shutdown, guest-panicked, ..."""
        result = await self.execute("query-status")
        if not isinstance(result, dict) or not isinstance(status := result.get("status"), str):
            raise QmpError(self._socket_path, f"query-status: unexpected answer {result!r}")
        return status

    async def object_ids(self) -> set[str]:
        """Ids of the user-created objects (-object, object-add), e.g. TLS credentials."""
        objects = await self.execute("qom-list", {"path": "/objects"})
        if not isinstance(objects, list):
            return set()
        return {str(o.get("name")) for o in objects if isinstance(o, dict)}

    async def powerdown(self) -> None:
        """Press the ACPI power button; the guest decides whether to obey."""
        await self.execute("system_powerdown")

    async def reset(self) -> None:
        """Hard reset, like the reset button: the guest gets no warning."""
        await self.execute("system_reset")

    async def quit(self) -> None:
        """Make QEMU exit at once; losing the connection is the expected answer."""
        try:
            await self.execute("quit")
        except QmpError as exc:
            if not isinstance(exc.__cause__, (ExecInterruptedError, EOFError)):
                raise

    async def vnc_address(self) -> str | None:
        """'unix:/path/vnc.sock' or '127.0.0.1:5901' style address of the VNC server, None without VNC."""
        result = await self.execute("query-vnc")
        if not isinstance(result, dict) or not result.get("enabled"):
            return None
        if result.get("family") == "unix" and result.get("service"):
            return f"unix:{result['service']}"
        host, port = result.get("host"), result.get("service")
        if not host or not port:
            return None
        return f"{host}:{port}"


def _no_qemu(exc: BaseException) -> bool:
    """The socket is missing or nobody listens: no QEMU to wait for."""
    causes = [exc, getattr(exc, "exc", None), exc.__cause__]
    return any(isinstance(c, (FileNotFoundError, ConnectionRefusedError)) for c in causes)


def _describe(exc: BaseException) -> str:
    """qemu.qmp's messages already name the root cause; some are empty."""
    return str(exc) or type(exc).__name__


async def _disconnect_quietly(client: QMPClient) -> None:
    try:
        await asyncio.wait_for(client.disconnect(), 2.0)
    except (QMPError, OSError, EOFError, TimeoutError) as exc:
        log.debug("QMP disconnect: %s", _describe(exc))
