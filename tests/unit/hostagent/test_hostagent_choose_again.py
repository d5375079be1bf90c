"""A request that chose a pool address (or made up a MAC) a job reserved first chooses again; others do not."""

from __future__ import annotations

import pytest

from hostagent import model
from hostagent.errors import Reserved
from hostagent.master.submit import CHOOSE_TRIES, choosing_again


def submitter(keys: list[str]):
    calls: list[int] = []

    async def submit() -> int:
        calls.append(1)
        if len(calls) <= len(keys):
            raise Reserved("job 7 is already working on it", keys[len(calls) - 1])
        return 42
    return submit, calls


async def test_a_taken_pool_address_or_made_up_mac_is_chosen_again() -> None:
    submit, calls = submitter([model.reservation_key("ip", "lan/10.0.0.2"), model.reservation_key("mac", "x")])
    assert await choosing_again(submit) == 42 and len(calls) == 3


async def test_a_taken_name_is_refused_at_once_and_the_tries_are_bounded() -> None:
    submit, calls = submitter([model.reservation_key("instance", "web1")])
    with pytest.raises(Reserved):
        await choosing_again(submit)
    assert len(calls) == 1
    submit, calls = submitter([model.reservation_key("ip", "lan/10.0.0.2")] * 99)
    with pytest.raises(Reserved):
        await choosing_again(submit)
    assert len(calls) == CHOOSE_TRIES
