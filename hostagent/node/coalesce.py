"""Work asked for again while it runs is done once more after it, not once per ask.

Why: in a boot storm every start order and every boot's end asks the node for a report, and each report
lists every QEMU of the node over QMP; a report begun after the last ask is all the master needs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

Spawn = Callable[[Coroutine[Any, Any, None]], "asyncio.Task[None]"]


class Coalesced:
    def __init__(self, work: Callable[[], Awaitable[None]]) -> None:
        self._work = work
        self._task: asyncio.Task[None] | None = None
        self._again = False

    def ask(self, spawn: Spawn) -> None:
        """Run the work in a task `spawn` makes, or once more after the run under way."""
        if self._task is not None and not self._task.done():
            self._again = True
            return
        self._task = spawn(self._runs())

    async def _runs(self) -> None:
        while True:
            self._again = False
            await self._work()
            if not self._again:
                return
