"""The newest master fencing token this node has seen, persisted across restarts.

An order carrying an older token comes from a deposed master and is refused;
persisting the newest token keeps that true after an agent restart.
"""

from __future__ import annotations

import logging
import os

from election.lease import FencingToken

log = logging.getLogger(__name__)


class StaleToken(Exception):
    """An order from a master older than one this node already obeyed."""

    def __init__(self, seen: FencingToken, got: FencingToken) -> None:
        super().__init__(f"refused an order with fencing token {got.to_str()}: this node has already "
                         f"seen the newer token {seen.to_str()} (the sender is no longer master)")
        self.seen = seen
        self.got = got


class TokenGuard:
    def __init__(self, path: str) -> None:
        self._path = path
        self._seen: FencingToken | None = None
        try:
            with open(path) as fh:
                self._seen = FencingToken.from_str(fh.read().strip())
        except FileNotFoundError:
            pass

    @property
    def seen(self) -> FencingToken | None:
        return self._seen

    def admit(self, token: FencingToken) -> None:
        """Accept `token` (remembering it if newer) or raise StaleToken."""
        if self._seen is not None and token < self._seen:
            log.warning("refusing order: token %s is older than %s", token.to_str(), self._seen.to_str())
            raise StaleToken(self._seen, token)
        if self._seen is None or token > self._seen:
            tmp = self._path + ".tmp"
            with open(tmp, "w") as fh:
                fh.write(token.to_str())
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self._path)
            self._seen = token
