"""Cluster-wide failover settings an operator changes: fencing armed or disarmed, the alert, defaults.

All of them live in the cluster record (/corral/cluster) that every node
mirrors: agents read `fencing` there to know whether to self-fence, the
master reads it (and `alert`, `auto_failover`, `max_lost_nodes`) to know
whether it may move anything. Each change is recorded as an event.
"""

from __future__ import annotations

from typing import Any

from election.etcd import Op
from kvm.hvparams import HvParamError, parse_hvparams

from hostagent import model
from hostagent.master.decide import backup_schedule, policy
from hostagent.master.decide.checks import DISK_TEMPLATES
from hostagent.errors import BadRequest, Conflict
from hostagent.master.decide.restarts import Event
from hostagent.master.store import Store
from hostagent.units import SizeError, parse_mib


# setting -> what it must be (for errors)
MODIFIABLE = {
    "auto_failover": "yes or no: the default for instances without their own --auto-failover",
    "max_lost_nodes": "a whole number >= 1: more nodes lost at once raise the alert and stop automatic moves "
                      "(or 'default': one, or a third of the nodes)",
    "failback_after_s": "seconds a node must be back (and the copy in sync) before the instances failed over "
                        "from it migrate back by themselves (0: only when asked, with `instance migrate`)",
    "default_memory": "a size such as 512M or 2G: the memory of new instances that do not give theirs",
    "default_vcpus": "a whole number from 1 to 255: the vCPUs of new instances that do not give theirs",
    "require_owner": "yes or no: every new instance must name its owner, and `cluster verify` lists those "
                     "without one",
    "job_archive_after_s": "seconds after it ended that a job moves to the archive (`job list --archived`), "
                           "1 or more (default 21600: 6 hours)",
    "hvparams": "an object of hypervisor parameters every instance inherits (null puts one back to its default)",
    "candidate_pool_size": "1, 3 or 5: the master candidates (etcd members) the master keeps",
    "sync_rate_mib_s": "a number of MiB/s for background disk copies and each DRBD resync (0: no cap; DRBD at 60)",
    "restart_backoff_s": "seconds (above 0, at most 3600) before the second restart attempt (it doubles after)",
    "enabled_disk_templates": f"a list of the templates new instances may use, from {', '.join(DISK_TEMPLATES)}",
    "policy": f"bounds every instance must keep: {policy.WORDS}",
    "backup_keep": f"a whole number from 1 to {backup_schedule.MAX_KEEP}: the backups a scheduled instance keeps "
                   f"in its export directory unless it sets its own (default {backup_schedule.DEFAULT_KEEP})",
    "backup_to": "where scheduled backups go unless an instance sets its own: NODE:DIR or an absolute DIR (an "
                 "export directory of each instance's node), or '' for the node's first export directory",
    "backup_max_per_node": "a whole number from 1 to 64: scheduled exports the master runs at once per node, "
                           f"counting every export job there (default {backup_schedule.DEFAULT_MAX_PER_NODE})",
}


def check_changes(changes: dict[str, Any]) -> list[str]:
    """Problems with a `cluster modify` request (pure)."""
    problems = [f"unknown cluster setting '{k}' (known: {', '.join(MODIFIABLE)})" for k in changes
                if k not in MODIFIABLE]
    archive = changes.get("job_archive_after_s", 21600)
    if isinstance(archive, bool) or not isinstance(archive, (int, float)) or archive < 1:
        problems.append(f"job_archive_after_s must be {MODIFIABLE['job_archive_after_s']}, got {archive!r}")
    if "require_owner" in changes and not isinstance(changes["require_owner"], bool):
        problems.append(f"require_owner must be {MODIFIABLE['require_owner']}, got {changes['require_owner']!r}")
    if "auto_failover" in changes and not isinstance(changes["auto_failover"], bool):
        problems.append(f"auto_failover must be {MODIFIABLE['auto_failover']}, got {changes['auto_failover']!r}")
    lost = changes.get("max_lost_nodes", 1)
    if lost is not None and (isinstance(lost, bool) or not isinstance(lost, int) or lost < 1):
        problems.append(f"max_lost_nodes must be {MODIFIABLE['max_lost_nodes']}, got {lost!r}")
    back = changes.get("failback_after_s", 0)
    if isinstance(back, bool) or not isinstance(back, (int, float)) or back < 0:
        problems.append(f"failback_after_s must be {MODIFIABLE['failback_after_s']}, got {back!r}")
    if "default_memory" in changes:
        try:
            parse_mib(changes["default_memory"], "default_memory")
        except SizeError as exc:
            problems.append(str(exc))
    vcpus = changes.get("default_vcpus", 1)
    if isinstance(vcpus, bool) or not isinstance(vcpus, int) or not 1 <= vcpus <= 255:
        problems.append(f"default_vcpus must be {MODIFIABLE['default_vcpus']}, got {vcpus!r}")
    problems += _more_problems(changes)
    if not changes:
        problems.append(f"nothing to change (settings: {', '.join(MODIFIABLE)})")
    return problems


def _more_problems(changes: dict[str, Any]) -> list[str]:
    """Checks of what `cluster init` set and `cluster modify` may now change."""
    problems: list[str] = []
    if "hvparams" in changes:
        if not isinstance(changes["hvparams"], dict):
            problems.append(f"hvparams must be {MODIFIABLE['hvparams']}")
        else:
            try:
                parse_hvparams({k: v for k, v in changes["hvparams"].items() if v is not None})
            except HvParamError as exc:
                problems.extend(exc.problems)
    if "candidate_pool_size" in changes and changes["candidate_pool_size"] not in (1, 3, 5):
        problems.append(f"candidate_pool_size must be {MODIFIABLE['candidate_pool_size']}, "
                        f"got {changes['candidate_pool_size']!r}")
    rate = changes.get("sync_rate_mib_s", 0)
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or rate < 0:
        problems.append(f"sync_rate_mib_s must be {MODIFIABLE['sync_rate_mib_s']}, got {rate!r}")
    backoff = changes.get("restart_backoff_s", 2)
    if isinstance(backoff, bool) or not isinstance(backoff, (int, float)) or not 0 < backoff <= 3600:
        problems.append(f"restart_backoff_s must be {MODIFIABLE['restart_backoff_s']}, got {backoff!r}")
    if "enabled_disk_templates" in changes:
        wanted = changes["enabled_disk_templates"]
        if not isinstance(wanted, list) or not wanted or any(t not in DISK_TEMPLATES for t in wanted):
            problems.append(f"enabled_disk_templates must be {MODIFIABLE['enabled_disk_templates']}, "
                            f"got {wanted!r}")
    if "policy" in changes:
        policy.parse(changes["policy"], problems)
    return problems + _backup_problems(changes)


def _backup_problems(changes: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    if "backup_keep" in changes:
        keep = changes["backup_keep"]
        if isinstance(keep, bool) or not isinstance(keep, int) or not 1 <= keep <= backup_schedule.MAX_KEEP:
            problems.append(f"backup_keep must be {MODIFIABLE['backup_keep']}, got {keep!r}")
    if "backup_to" in changes:
        try:
            backup_schedule.parse_target(changes["backup_to"])
        except ValueError as exc:
            problems.append(f"backup_to: {exc}")
    if "backup_max_per_node" in changes:
        most = changes["backup_max_per_node"]
        if isinstance(most, bool) or not isinstance(most, int) or not 1 <= most <= 64:
            problems.append(f"backup_max_per_node must be {MODIFIABLE['backup_max_per_node']}, got {most!r}")
    return problems


def stored(changes: dict[str, Any], cluster: dict[str, Any]) -> dict[str, Any]:
    """The cluster record's fields for checked changes (sizes kept in MiB; hvparams and the policy
    merged into what the cluster has, a null or empty value removing one)."""
    out: dict[str, Any] = {}
    for key, value in changes.items():
        if key == "default_memory":
            out["default_memory_mib"] = parse_mib(value, key)
        elif key == "hvparams":
            merged = {**(cluster.get("hvparams") or {}), **value}
            out["hvparams"] = {k: v for k, v in merged.items() if v is not None}
        elif key == "backup_to":
            out[key] = backup_schedule.parse_target(value)
        elif key == "policy":
            bounds = policy.parse(value, [])
            lifted = {policy.FIELDS[k][0] for k, v in value.items() if k in policy.FIELDS and v in (None, "")}
            out["policy"] = {k: v for k, v in {**(cluster.get("policy") or {}), **bounds}.items() if k not in lifted}
        else:
            out[key] = value
    return out


async def _update(store: Store, change: dict[str, Any], message: str) -> dict[str, Any]:
    cluster = await store.get(model.CLUSTER_KEY) or {}
    cluster.update(change)
    now = store.clock.time()
    await store.write([Op.put(model.CLUSTER_KEY, model.dumps(cluster))],
                      events=[Event("", store.role.node, "operator", message)], now=now)
    return cluster


async def set_fencing(store: Store, arm: bool) -> dict[str, Any]:
    cluster = await store.get(model.CLUSTER_KEY) or {}
    state = "armed" if arm else "disarmed"
    if cluster.get("fencing", "armed") == state:
        return {"fencing": state, "changed": False}
    message = ("fencing armed: nodes cut off stop their auto-failover instances again, and the master fails "
               "them over" if arm else
               "fencing DISARMED by the operator: no node stops its instances when cut off, and nothing is "
               "failed over automatically, until `corral cluster fencing arm`")
    await _update(store, {"fencing": state, "fencing_since": store.clock.time()}, message)
    return {"fencing": state, "changed": True}


async def clear_alert(store: Store) -> dict[str, Any]:
    cluster = await store.get(model.CLUSTER_KEY) or {}
    alert = cluster.get("alert")
    if not alert:
        raise Conflict("there is no cluster alert to clear")
    await _update(store, {"alert": None}, f"cluster alert cleared by the operator (it said: {alert['reason']})")
    return {"cleared": alert}


async def modify(store: Store, changes: dict[str, Any]) -> dict[str, Any]:
    problems = check_changes(changes)
    if problems:
        raise BadRequest("; ".join(problems))
    said = ", ".join(f"{k}={v}" for k, v in sorted(changes.items()))
    current = await store.get(model.CLUSTER_KEY) or {}
    cluster = await _update(store, stored(changes, current), f"cluster settings changed by the operator: {said}")
    return {k: cluster.get("default_memory_mib" if k == "default_memory" else k) for k in MODIFIABLE}
