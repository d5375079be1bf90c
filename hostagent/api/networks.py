"""Handlers for /v1/networks: list and info from this node's replica; add and remove on the master.

Like users and tags, adding or removing a network is one small write (no
job). Removing is refused while a NIC is on the network: the instances are
named. Who may: read to look, admin to change (the route table in hostagent.api.app).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from hostagent import model
from hostagent.master.decide import networks
from hostagent.api.base import ApiBase
from hostagent.errors import Conflict, NotFound
from hostagent.master.node_ops import NodeOperations
from hostagent.master.operations import Operations
from hostagent.master.submit import used_addresses


class NetworkRoutes(ApiBase):
    async def network_list(self, request: web.Request) -> web.Response:
        instances = self._all(model.INSTANCES)
        rows = []
        for net in self._all(model.NETWORKS):
            row = networks.summary(net, self._held(net["name"], instances))
            rows.append({k: v for k, v in row.items() if k not in ("used", "free")})
        return self._ok(rows)

    async def network_info(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        self._require_cluster()
        net = self.agent.replica.get_json(model.network_key(name))
        if net is None:
            raise NotFound(self._unknown(name))
        instances = self._all(model.INSTANCES)
        return self._ok({**networks.summary(net, self._held(name, instances)),
                         "instances": networks.users(name, instances)})

    async def network_add(self, request: web.Request) -> web.Response:
        record = networks.new_network(await self._body(request), self.agent.clock.time())

        async def run(ops: Operations, __: NodeOperations) -> web.Response:
            clash = networks.overlapping(record["subnet"], await ops.store.prefix(model.NETWORKS))
            if clash:
                raise Conflict(f"subnet {record['subnet']} overlaps network(s) {', '.join(clash)}: an address there "
                               "could be handed out by two pools; give this network a subnet of its own")
            await ops.store.put_new(model.network_key(record["name"]), record,
                                    f"a network named '{record['name']}' already exists")
            await self._wait_replica(model.network_key(record["name"]))
            return self._ok(networks.summary(record, {}))
        return await self._on_master(request, run)

    async def network_remove(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]

        async def run(ops: Operations, __: NodeOperations) -> web.Response:
            instances = await ops.store.instances()
            using = networks.users(name, instances)
            if using:
                raise Conflict(f"network '{name}' is used by the NICs of instance(s) {', '.join(using)}: "
                               "remove or change those NICs first (`corral instance modify NAME --net N:remove`)")
            held = await used_addresses(ops.store, instances)
            if held.get(name):
                raise Conflict(f"network '{name}' has addresses held by {', '.join(sorted(set(held[name].values())))}; "
                               "try again once that is done")
            await ops.store.delete_existing(model.network_key(name), self._unknown(name))
            return self._ok({"name": name})
        return await self._on_master(request, run)

    def _held(self, name: str, instances: list[dict[str, Any]]) -> dict[str, str]:
        """Who holds each address of network `name`: NICs, and adds or modifies still running."""
        held = networks.holders(name, instances)
        prefix = model.reservation_key("ip", f"{name}/")
        for key, value in self.agent.replica.prefix_json(prefix):
            held.setdefault(key[len(prefix):], f"job {value.get('job')} (still running)")
        return held

    def _unknown(self, name: str) -> str:
        names = sorted(n["name"] for n in self._all(model.NETWORKS))
        return f"no network named '{name}' (networks: {', '.join(names) or 'none'}; `corral network add`)"
