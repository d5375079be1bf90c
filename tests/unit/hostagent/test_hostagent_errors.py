"""The API's answer to each "not master" error: the codes and messages clients and tests match on."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

import election.lease
from election.lease import FencingToken
from hostagent.api.base import error_middleware
from hostagent.errors import NotMaster, SenderNotMaster, StaleToken

OLD, NEW = FencingToken(revision=10, lease_id=1), FencingToken(revision=20, lease_id=0x2a)


@pytest.mark.parametrize("error, status, code", [
    (NotMaster(None, "no master is elected right now"), 503, "no-master"),
    (election.lease.NotMaster("n2", OLD), 503, "no-master"),
    (SenderNotMaster("n2", "refused an order from node 'n1' with token 10:1: that token is node 'n2''s"),
     409, "not-the-master"),
    (StaleToken(NEW, OLD), 409, "stale-token"),
])
def test_each_kind_of_not_master_keeps_its_status_and_code(error: Exception, status: int, code: str) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        raise error

    answer = asyncio.run(error_middleware(make_mocked_request("POST", "/v1/instances"), handler))
    assert answer.status == status
    assert json.loads(answer.text or "") == {"error": code, "message": str(error)}


def test_a_stale_token_says_which_token_this_node_obeys_now() -> None:
    assert str(StaleToken(NEW, OLD)) == ("refused an order with fencing token 10:1: this node has already seen "
                                         "the newer token 20:2a (the sender is no longer master)")
