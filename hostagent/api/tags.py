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

from hostagent import model
from hostagent.master.config_jobs import retag, tag_target
from hostagent.master.decide import tags
from hostagent.api.base import ApiBase
from hostagent.master.node_ops import NodeOperations
from hostagent.master.operations import Operations

class TagRoutes(ApiBase):
    async def instance_tags(self, request: web.Request) -> web.Response:
        return await self._retag(request, "instance", request.match_info["name"])

    async def node_tags(self, request: web.Request) -> web.Response:
        return await self._retag(request, "node", request.match_info["name"])

    async def cluster_tags(self, request: web.Request) -> web.Response:
        return await self._retag(request, "cluster", "")

    async def tag_search(self, request: web.Request) -> web.Response:
        """`corral search-tags PATTERN`: every tagged object whose tag matches, from this node's replica."""
        self._require_cluster()
        objects: list[tuple[str, str, Any]] = [("cluster", "", self.agent.replica.get_json(model.CLUSTER_KEY) or {})]
        objects += [("node", n["name"], n) for n in self._all(model.NODES)]
        objects += [("instance", i["name"], i) for i in self._instances()]
        return self._ok(tags.search(request.query.get("pattern", ""), objects))

    async def _retag(self, request: web.Request, kind: str, name: str) -> web.Response:
        body = await self._body(request)
        key, what = tag_target(kind, name)
        if request.query.get("job") == "1":  # the same change as a job (Ganeti's RAPI answers a job id)
            async def as_job(ops: Operations, nodes: NodeOperations) -> web.Response:
                return await self._accepted(await nodes.config.submit_tags(kind, name, body.get("add") or [],
                                                                           body.get("remove") or []))
            return await self._on_master(request, as_job)

        async def run(ops: Operations, __: NodeOperations) -> web.Response:
            new = await retag(ops.store, key, what, body.get("add"), body.get("remove"))
            for _poll in range(500):  # read-your-writes: `info` right after shows the new tags (bounded)
                if (self.agent.replica.get_json(key) or {}).get("tags") == new:
                    break
                await asyncio.sleep(0.01)
            return self._ok({"tags": new})
        return await self._on_master(request, run)
