"""Handlers for tags: on instances, nodes and the cluster, and the search over all of them.

A tag change is small and immediate (no job): the master writes it if the
record did not change since it was read, and the answer is the tag list as
written. Who may: write for instances, admin for nodes and the cluster (the
route table in hostagent.api.app).
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from election.etcd import Compare, Op

from hostagent import model
from hostagent.master.decide import tags
from hostagent.api.base import ApiBase
from hostagent.errors import Conflict, NotFound
from hostagent.master.node_ops import NodeOperations
from hostagent.master.operations import Operations

TAG_TRIES = 3


class TagRoutes(ApiBase):
    async def instance_tags(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        return await self._retag(request, model.instance_key(name), f"instance '{name}'")

    async def node_tags(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        return await self._retag(request, model.node_key(name), f"node '{name}'")

    async def cluster_tags(self, request: web.Request) -> web.Response:
        return await self._retag(request, model.CLUSTER_KEY, "the cluster")

    async def tag_search(self, request: web.Request) -> web.Response:
        """`corral search-tags PATTERN`: every tagged object whose tag matches, from this node's replica."""
        self._require_cluster()
        objects: list[tuple[str, str, Any]] = [("cluster", "", self.agent.replica.get_json(model.CLUSTER_KEY) or {})]
        objects += [("node", n["name"], n) for n in self._all(model.NODES)]
        objects += [("instance", i["name"], i) for i in self._instances()]
        return self._ok(tags.search(request.query.get("pattern", ""), objects))

    async def _retag(self, request: web.Request, key: str, what: str) -> web.Response:
        body = await self._body(request)

        async def run(ops: Operations, __: NodeOperations) -> web.Response:
            for _attempt in range(TAG_TRIES):
                kv = await ops.role.client.get(key)
                if kv is None:
                    raise NotFound(f"no {what.split(' ')[0]} named {what.split(' ', 1)[-1]}")
                record = model.loads(kv.value)
                new = tags.changed(record.get("tags") or [], body.get("add"), body.get("remove"))
                token = ops.role.token
                if token is None:
                    raise Conflict("this node stopped being master; try again")
                result = await ops.role.lease.guarded_txn(
                    token, [Op.put(key, model.dumps({**record, "tags": new}))],
                    extra_compares=[Compare.mod_revision(key, "=", kv.mod_revision)])
                if result.succeeded:
                    for _poll in range(500):  # read-your-writes: `info` right after shows the new tags (bounded)
                        if (self.agent.replica.get_json(key) or {}).get("tags") == new:
                            break
                        await asyncio.sleep(0.01)
                    return self._ok({"tags": new})
            raise Conflict(f"{what} kept changing while its tags were written; try again")
        return await self._on_master(request, run)
