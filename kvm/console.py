"""Open an instance's serial console (a unix socket QEMU listens on).

QEMU serves one console client at a time; a second ``attach`` waits until
the first one closes (up to ``timeout_s`` to connect, then the bytes flow
when QEMU accepts it). Output is logged by QEMU whether or not anyone is
attached, so attaching never loses boot messages: read the log for history.
"""

import asyncio


class ConsoleError(Exception):
    """The console socket at ``socket_path`` could not be opened."""

    def __init__(self, socket_path: str, reason: str) -> None:
        self.socket_path = socket_path
        self.reason = reason
        super().__init__(f"console {socket_path!r}: {reason}")


async def attach(
    console_socket: str, timeout_s: float = 5.0
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to the serial console; the caller relays bytes and closes the writer."""
    try:
        return await asyncio.wait_for(asyncio.open_unix_connection(console_socket), timeout_s)
    except FileNotFoundError as exc:
        raise ConsoleError(console_socket, "no such socket; is the instance running here?") from exc
    except TimeoutError as exc:
        raise ConsoleError(console_socket, f"not accepted within {timeout_s:g} s") from exc
    except OSError as exc:
        raise ConsoleError(console_socket, f"cannot connect: {exc}") from exc
