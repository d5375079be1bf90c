"""A QEMU that dies is seen at once, not at the next report: each running QEMU's pid is watched through a
pidfd (readable the moment the process exits, whoever its parent is), and its exit publishes a report now,
so the master restarts the instance without waiting for the report interval.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)


class QemuWatch:
    """pidfds of the QEMUs the last report listed; `on_exit(name, pid)` once for each that exits."""

    def __init__(self, on_exit: Callable[[str, int], None]) -> None:
        self._on_exit = on_exit
        self._watched: dict[tuple[str, int], int] = {}  # (instance, pid) -> pidfd
        self._unsupported = False

    def follow(self, running: Mapping[str, int]) -> None:
        """Watch every (instance, pid) running now; forget those no longer listed."""
        loop = asyncio.get_running_loop()
        wanted = {(name, pid) for name, pid in running.items() if pid}
        for key in set(self._watched) - wanted:
            self._forget(loop, key)
        for key in wanted - set(self._watched):
            if self._unsupported:
                return
            try:
                fd = os.pidfd_open(key[1])
            except ProcessLookupError:  # gone between the report and now
                self._on_exit(*key)
                continue
            except OSError as exc:
                if exc.errno == errno.ENOSYS:  # a kernel without pidfds: the report interval finds deaths
                    log.warning("QEMU exits are seen at the next report only: no pidfd here (%s)", exc)
                    self._unsupported = True
                    return
                log.warning("instance '%s': QEMU pid %d cannot be watched (%s); the next report sees it", *key,
                            exc)
                continue
            self._watched[key] = fd
            loop.add_reader(fd, self._exited, key)

    def close(self) -> None:
        loop = asyncio.get_running_loop()
        for key in list(self._watched):
            self._forget(loop, key)

    def _exited(self, key: tuple[str, int]) -> None:
        self._forget(asyncio.get_running_loop(), key)
        self._on_exit(*key)

    def _forget(self, loop: asyncio.AbstractEventLoop, key: tuple[str, int]) -> None:
        fd = self._watched.pop(key)
        loop.remove_reader(fd)
        os.close(fd)
