"""Handlers for backups: the list read from this node's replica (every node reports its backups), and the
export, import and removal, which are jobs of the master (hostagent.master.backups). Restoring one onto
its instance is an instance action (`restore`)."""

from __future__ import annotations

from aiohttp import web

from hostagent.api.base import ApiBase
from hostagent.master.backups import backup_rows
from hostagent.master.node_ops import NodeOperations
from hostagent.master.operations import Operations


class BackupRoutes(ApiBase):
    async def backup_list(self, request: web.Request) -> web.Response:
        """Every backup in the nodes' export directories, oldest first; ?instance= and ?node= narrow them."""
        self._require_cluster()
        instance, node = request.query.get("instance"), request.query.get("node")
        return self._ok([b for b in backup_rows(self._reports())
                         if (instance is None or b["instance"] == instance) and (node is None or b["node"] == node)])

    async def backup_export(self, request: web.Request) -> web.Response:
        body = await self._body(request)

        async def run(ops: Operations, nodes: NodeOperations) -> web.Response:
            return await self._accepted(await ops.backups.submit_export(ops.role.require().submit, body))
        return await self._on_master(request, run)

    async def backup_import(self, request: web.Request) -> web.Response:
        body = await self._body(request)

        async def run(ops: Operations, nodes: NodeOperations) -> web.Response:
            return await self._accepted(await ops.submit_import(body))
        return await self._on_master(request, run)

    async def backup_remove(self, request: web.Request) -> web.Response:
        body = await self._body(request)

        async def run(ops: Operations, nodes: NodeOperations) -> web.Response:
            return await self._accepted(await ops.backups.submit_remove(ops.role.require().submit, body))
        return await self._on_master(request, run)
