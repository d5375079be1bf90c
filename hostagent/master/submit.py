"""What the submit checks of instance changes read, and their second choice when a job reserved theirs first.

The checks themselves are pure (hostagent.master.decide.checks); these read
their view of the cluster straight from etcd, with the addresses that
instances and running jobs hold, for `instance add`, `modify` and
`reinstall` alike.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from hostagent import model
from hostagent.errors import Reserved
from hostagent.master.decide import nics
from hostagent.master.decide.checks import ClusterView
from hostagent.master.store import Store

CHOOSE_TRIES = 8  # a request whose chosen pool address (or made-up MAC) a job reserved first chooses again


async def choosing_again(submit: Callable[[], Awaitable[int]]) -> int:
    """Submit; when a job reserved first a MAC or address this request chose itself (from a pool, or a MAC
    made up), choose again: the reservation is now seen, so the next choice differs (bounded). One the
    operator named gets a plain refusal on the next try, saying who holds it."""
    for _ in range(CHOOSE_TRIES - 1):
        try:
            return await submit()
        except Reserved as exc:
            if not exc.key.startswith((model.reservation_key("ip", ""), model.reservation_key("mac", ""))):
                raise
    return await submit()


async def cluster_view(store: Store, job_id: int | None = None) -> ClusterView:
    """What checks read; `job_id`: a running job checking again, whose own reservations are not others'."""
    instances = await store.prefix(model.INSTANCES)
    cluster = await store.get(model.CLUSTER_KEY) or {}
    return ClusterView(
        networks={n["name"]: n for n in await store.prefix(model.NETWORKS)},
        used_ips=await used_addresses(store, instances, job_id),
        cluster_hv=cluster.get("hvparams", {}),
        nodes={n["name"]: n for n in await store.prefix(model.NODES)},
        reports={r["node"]: r for r in await store.prefix(model.REPORTS)},
        instances={i["name"] for i in instances}, records=tuple(instances),
        used_macs={nic["mac"] for i in instances for nic in i["nics"]},
        defaults={**{k: cluster[f"default_{k}"] for k in ("memory_mib", "vcpus") if f"default_{k}" in cluster},
                  "require_owner": bool(cluster.get("require_owner")), "policy": cluster.get("policy") or {},
                  "enabled_disk_templates": cluster.get("enabled_disk_templates") or []})


async def used_addresses(store: Store, instances: list[dict[str, Any]], job_id: int | None = None,
                         but: str = "") -> dict[str, dict[str, str]]:
    """network -> address -> who holds it: the NICs of every instance but `but`, addresses held in etcd
    (model.address_key), and those jobs reserved for instances they are still adding or changing."""
    names = {i["uuid"]: i["name"] for i in instances}
    held = nics.taken_by_others(instances, but, {}).ips
    kvs, _ = await store.role.client.get_prefix(model.ADDRESSES)
    for kv in kvs:
        network, ip = kv.key[len(model.ADDRESSES):].split("/", 1)
        owner = names.get(model.loads(kv.value).get("instance"), "")
        if owner != but:
            held.setdefault(network, {}).setdefault(ip, f"instance '{owner}'" if owner else "an instance")
    kvs, _ = await store.role.client.get_prefix(model.reservation_key("ip", ""))
    for kv in kvs:
        network, ip = kv.key[len(model.reservation_key("ip", "")):].split("/", 1)
        job = model.loads(kv.value).get("job")
        if job != job_id:
            held.setdefault(network, {}).setdefault(ip, f"job {job} (still running)")
    return held
