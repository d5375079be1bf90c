"""systemd notifications (READY, WATCHDOG, STATUS) on $NOTIFY_SOCKET.

Written by hand instead of depending on a binding: the protocol is one
datagram per message, and a missing socket must be a no-op so the agent runs
the same outside systemd (tests, demo).
"""

from __future__ import annotations

import os
import socket


class Notifier:
    """Sends sd_notify datagrams; silently does nothing without NOTIFY_SOCKET."""

    def __init__(self, address: str | None = None) -> None:
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):
            address = "\0" + address[1:]  # abstract namespace socket
        self._address = address
        self._sock: socket.socket | None = None
        if address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def watchdog_interval_s(self) -> float | None:
        """Half of systemd's WatchdogSec, the interval systemd recommends."""
        usec = os.environ.get("WATCHDOG_USEC", "")
        pid = os.environ.get("WATCHDOG_PID", "")
        if not usec.isdigit() or (pid and pid != str(os.getpid())):
            return None
        return int(usec) / 2_000_000

    def send(self, **fields: str) -> None:
        """Send e.g. send(READY="1", STATUS="...") as one datagram."""
        if self._sock is None:
            return
        payload = "\n".join(f"{k}={v}" for k, v in fields.items()).encode()
        try:
            self._sock.sendto(payload, self._address)
        except OSError:
            pass  # systemd gone or socket not ours: notifications are best-effort

    def ready(self, status: str) -> None:
        self.send(READY="1", STATUS=status)

    def watchdog(self) -> None:
        self.send(WATCHDOG="1")

    def status(self, status: str) -> None:
        self.send(STATUS=status)

    def stopping(self) -> None:
        self.send(STOPPING="1", STATUS="shutting down")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
