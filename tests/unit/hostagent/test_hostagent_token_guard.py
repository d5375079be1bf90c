"""Which master's orders a node obeys: never one older than a token it has seen or its replica shows."""

from __future__ import annotations

import asyncio

import pytest

from election.lease import FencingToken
from hostagent.errors import StaleToken
from hostagent.node.fencing import TokenGuard

OLD, NEW = FencingToken(revision=10, lease_id=1), FencingToken(revision=20, lease_id=2)


def test_a_healed_old_master_is_refused_once_the_replica_shows_the_new_one(tmp_path):
    guard = TokenGuard(str(tmp_path / "token"))

    async def holder(token: FencingToken) -> str:
        return "n1" if token == OLD else "n2"

    async def scenario() -> None:
        await guard.admit(OLD, "n1", holder)  # n1 was master: its own orders were obeyed
        await guard.admit(OLD, "n1", holder)  # and are, while nothing newer is known
        with pytest.raises(StaleToken) as err:  # the replica caught up: n2 holds a newer token
            await guard.admit(OLD, "n1", holder, known=NEW)
        assert err.value.seen == NEW
        await guard.admit(NEW, "n2", holder, known=NEW)

    asyncio.run(scenario())
