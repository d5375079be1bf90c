"""Which master's orders a node obeys: never one older than a token it has seen or its replica shows."""

from __future__ import annotations

import asyncio

import pytest

from election.lease import FencingToken
from hostagent.errors import SenderNotMaster, StaleToken
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


def test_a_token_seen_before_is_refused_once_etcd_says_its_master_is_gone(tmp_path):
    """An order queued while this agent was frozen, from a master deposed meanwhile, carries the very token
    this node obeyed before: only etcd can say it is no longer the master's."""
    guard = TokenGuard(str(tmp_path / "token"))
    master = {"token": OLD, "node": "n1"}

    async def holder(token: FencingToken) -> str | None:
        return master["node"] if token == master["token"] else None  # type: ignore[return-value]

    async def scenario() -> None:
        await guard.admit(OLD, "n1", holder)
        master.update(token=NEW, node="n2")  # n1 deposed, n2 elected: this node has not heard from n2 yet
        with pytest.raises(SenderNotMaster, match="no master holds that token"):
            await guard.admit(OLD, "n1", holder)
        assert guard.seen == OLD  # nothing recorded from a refused order

    asyncio.run(scenario())
