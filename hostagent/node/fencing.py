"""Which master this node obeys: the newest fencing token it has seen, and who holds it.

An order is accepted only from the node that holds the token it carries,
asked of etcd for every order (the master key's creation revision, lease and
holder), so neither a deposed master nor another node with a forged token can
be obeyed, and a forged token can never be recorded. Even a token seen before
from the same sender is asked again: an order that waited (in a frozen agent's
socket, say) while its master was deposed carries exactly that token. The
newest token is persisted across restarts; one older than it is refused
without asking.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Awaitable, Callable

from election.lease import FencingToken

from hostagent.errors import SenderNotMaster, StaleToken

log = logging.getLogger(__name__)

# (token) -> name of the node holding the master key with exactly this token, or None
Verifier = Callable[[FencingToken], Awaitable[str | None]]


class TokenGuard:
    def __init__(self, path: str) -> None:
        self._path = path
        self._seen: FencingToken | None = None
        self._holder: str | None = None
        try:
            with open(path) as fh:
                raw = fh.read().strip()
            if raw.startswith("{"):
                record = json.loads(raw)
                self._seen, self._holder = FencingToken.from_str(record["token"]), record["holder"]
            else:
                self._seen = FencingToken.from_str(raw)
        except FileNotFoundError:
            pass

    @property
    def seen(self) -> FencingToken | None:
        return self._seen

    async def admit(self, token: FencingToken, sender: str, verify: Verifier,
                    known: FencingToken | None = None) -> None:
        """Accept an order from `sender` carrying `token`, or raise StaleToken / SenderNotMaster.

        `known`: the newest master token this node's config replica shows. A master cut off and healed
        may send orders (to itself, too) before the new master's first order reaches this node; the
        replica, caught up from etcd, already says the sender is deposed."""
        newest = max((t for t in (self._seen, known) if t is not None), default=None)
        if newest is not None and token < newest:
            log.warning("refusing order from node '%s': token %s is older than %s",
                        sender, token.to_str(), newest.to_str())
            raise StaleToken(newest, token)
        holder = await verify(token)
        if holder != sender:
            log.warning("refusing order from node '%s' with token %s: %s", sender, token.to_str(),
                        f"that token belongs to node '{holder}'" if holder else "etcd has no master with that token")
            raise SenderNotMaster(holder, f"refused an order from node '{sender}' with token {token.to_str()}: "
                                  + (f"that token is node '{holder}''s" if holder else
                                     "no master holds that token in etcd (deposed, or forged)"))
        if token == self._seen and sender == self._holder:
            return
        tmp = self._path + ".tmp"
        with open(tmp, "w") as fh:
            json.dump({"token": token.to_str(), "holder": sender}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self._path)
        self._seen, self._holder = token, sender
