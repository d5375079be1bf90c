"""`corral cluster ...`: the cluster as a whole: init, join, info, verify, settings, fencing, master hand-over.

Each command's arguments, its call and its rendering live here together;
cli.main only registers the group.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from cli import planning, tags
from cli.common import Context, Subparsers, UsageError, command, group, kv_list
from cli.render import clock, mib, when


def register(top: Subparsers) -> None:
    c = group(top, "cluster", "the cluster as a whole")
    s = command(c, "init", init, "create a cluster with this node as master", job=True)
    s.add_argument("--name", required=True)
    s.add_argument("--hv", action="append", help="default hypervisor parameters, e.g. accel=tcg")
    s.add_argument("--candidates", type=int, default=3, choices=(1, 3, 5),
                   help="master candidates (etcd members) to keep when nodes allow (default 3)")
    s.add_argument("--restart-backoff", type=float, metavar="S",
                   help="seconds before the master's second attempt to restart an instance that died; "
                        "doubles up to 60 s, 5 attempts (default 2)")
    s.add_argument("--sync-rate", type=float, default=0.0, metavar="MIB_S",
                   help="cap on the background copy of replicated disks (full syncs, resyncs); "
                        "guest writes are never slowed (default 0: no cap)")
    command(c, "info", info, "name, master, candidates, quorum")
    s = command(c, "verify", verify, "check the cluster; non-zero exit on errors")
    s.add_argument("--repair", action="store_true",
                   help="have the master fix what is safe (stray QEMUs, orphan NBD exports, leftover restart "
                        "tracks; never disks), print what it did, then verify again")
    command(c, "replica", replica, "this node's config replica: revision and checksum")
    s = command(c, "rotate-secrets", rotate_secrets, "new gossip key and node certificates, without downtime",
                job=True)
    s.add_argument("--new-ca", action="store_true",
                   help="also replace the cluster CA (etcd members restart one at a time; "
                        "join tokens issued before stop working)")
    s = command(c, "join", join, "join this node to a cluster (token from `corral node add`)")
    s.add_argument("address", help="any cluster node's address, ADDRESS or ADDRESS:PORT")
    s.add_argument("--token", required=True)
    s = command(c, "master-failover", master_failover, "hand the master role to another candidate")
    s.add_argument("--to", help="the candidate to become master (default: any)")
    s = command(c, "fencing", fencing, "disarm fencing for network maintenance (nothing self-fences or fails "
                                       "over), or arm it again")
    s.add_argument("state", choices=("arm", "disarm"))
    s = command(c, "alert", alert_clear, "clear the alert raised when many nodes were lost at once")
    s.add_argument("action", choices=("clear",))
    s = command(c, "modify", modify, "cluster-wide settings: failover, instance defaults")
    s.add_argument("--auto-failover", choices=("yes", "no"),
                   help="default for instances without their own setting (default no)")
    s.add_argument("--max-lost-nodes", metavar="N|default",
                   help="more nodes lost at once raise the alert and stop automatic moves "
                        "(default: one, or a third of the nodes)")
    s.add_argument("--failback-after", type=float, metavar="S",
                   help="instances failed over automatically migrate back once their node has been back S "
                        "seconds and their copy there is in sync (default 0: only with `instance migrate`)")
    s.add_argument("--default-memory", metavar="SIZE", help="memory of new instances that give none (512M)")
    s.add_argument("--default-vcpus", type=int, metavar="N", help="vCPUs of new instances that give none (1)")
    s.add_argument("--hv", action="append", metavar="NAME=VALUE",
                   help="hypervisor defaults every instance inherits (NAME= resets one); at each instance's "
                        "next start")
    s.add_argument("--candidates", type=int, choices=(1, 3, 5), help="master candidates (etcd members) to keep")
    s.add_argument("--sync-rate", type=float, metavar="MIB_S", help="cap on background disk copies (0: none)")
    s.add_argument("--restart-backoff", type=float, metavar="S", help="seconds before the second restart attempt")
    s.add_argument("--disk-templates", metavar="T[,T]", help="templates new instances may use, e.g. file,mirror")
    s.add_argument("--policy", action="append", metavar="BOUND=VALUE",
                   help="instance bounds: min_memory, max_memory, max_disk_size (e.g. 4G), min_vcpus, max_vcpus, "
                        "max_disks; BOUND= lifts one")
    s.add_argument("--job-archive-after", type=float, metavar="S",
                   help="finished jobs move to the archive S seconds after they ended (default 21600: 6 h)")
    s.add_argument("--require-owner", choices=("yes", "no"),
                   help="every new instance must name its owner; verify lists those without one")
    s.add_argument("--backup-keep", type=int, metavar="N",
                   help="scheduled backups an instance keeps unless it sets its own (default 7)")
    s.add_argument("--backup-to", metavar="NODE:DIR|DIR|default",
                   help="export directory of scheduled backups unless an instance sets its own (default: the "
                        "node's first)")
    s.add_argument("--backup-max-per-node", type=int, metavar="N",
                   help="scheduled exports run at once per node, counting every export there (default 1)")
    planning.register(c)
    s = command(c, "simulate", simulate, "what the master would do if a node died now (nothing is changed)")
    s.add_argument("--fail", action="append", required=True, metavar="NODE", help="a node to take away (repeat)")
    tags.add_commands(c, "cluster")


def init(ctx: Context) -> int:
    hv = kv_list(ctx.args.hv, "--hv")
    return ctx.job(ctx.client.post("/v1/cluster/init", {"name": ctx.args.name, "hvparams": hv,
                                                        "candidate_pool_size": ctx.args.candidates,
                                                        "sync_rate_mib_s": ctx.args.sync_rate,
                                                        "restart_backoff_s": ctx.args.restart_backoff}))


def info(ctx: Context) -> int:
    def human(d: dict[str, Any]) -> None:
        if not d["initialized"]:
            print(f"node '{d['this_node']}' is not in a cluster yet: `corral cluster init --name NAME`")
            return
        print(f"cluster:      {d['name']}")
        print(f"master:       {d['master'] or 'NONE ELECTED'}" + (f" (token {d['token']})" if d["token"] else ""))
        print(f"candidates:   {', '.join(d['candidates']) or '-'}")
        print(f"nodes:        {d['nodes']}    instances: {d['instances']}")
        print(f"this node:    {d['this_node']}" + (" (master)" if d["this_node_is_master"] else ""))
        quorum = d.get("quorum") or {}
        print("quorum:       " + ("yes (etcd has a leader; changes are accepted)" if quorum.get("ok")
                                  else f"NO - changes are refused: {quorum.get('reason')}"))
        if d["hvparams"]:
            print("hv defaults:  " + ", ".join(f"{k}={v}" for k, v in sorted(d["hvparams"].items())))
        print(f"instances:    new ones get {mib(d.get('default_memory_mib', 512))} and {d.get('default_vcpus', 1)} "
              f"vCPU(s) unless they say; templates {', '.join(d.get('enabled_disk_templates') or ['all'])}"
              + ("; an owner is required" if d.get("require_owner") else ""))
        if d.get("policy"):
            print("policy:       " + ", ".join(f"{k.replace('_mib', '')}="
                                           + (mib(v) if k.endswith("_mib") else str(v))
                                           for k, v in sorted(d["policy"].items())))
        if d.get("tags"):
            print(f"tags:         {', '.join(d['tags'])}")
        print(f"failover:     auto-failover default {'on' if d.get('auto_failover') else 'off'}; more than "
              f"{d.get('max_lost_nodes') or 'max(1, nodes/3)'} node(s) lost at once raise the alert; failback "
              + (f"after {d['failback_after_s']:.0f} s back" if d.get("failback_after_s") else "only on request"))
        print(f"backups:      scheduled ones keep {d.get('backup_keep', 7)} per instance unless it says, go to "
              f"{d.get('backup_to') or 'the first export directory of the node'}; at most "
              f"{d.get('backup_max_per_node', 1)} export(s) at once per node")
        for line in redundancy_lines(d.get("redundancy")):
            print(line)
        if d.get("fencing") == "disarmed":
            print(f"FENCING:      DISARMED{_since_words(d.get('fencing_since'))}: nodes cut off keep running "
                  "their instances and NOTHING fails over automatically; `corral cluster fencing arm`")
        else:
            print("fencing:      armed (a node cut off stops its auto-failover instances; the master fails "
                  "them over once its lease expires)")
        if d.get("alert"):
            print(f"ALERT:        {d['alert']['reason']}{_since_words(d['alert'].get('since'))}")
    return ctx.out(ctx.client.get("/v1/cluster"), human)


def verify(ctx: Context) -> int:
    """With --repair: first what the master did about each finding, then a fresh verify."""
    steps = ctx.client.post("/v1/cluster/repair")["data"] if ctx.args.repair else None
    if steps is not None and not ctx.args.json:
        for step in steps:
            print(f"{step['outcome'].upper()}: {step['message']}")
            print(f"    {step['action'] + ': ' if step['action'] else ''}{step['detail']}")
        print("verifying again:" if steps else "cluster verify --repair: nothing to repair")
    answer = ctx.client.get("/v1/cluster/verify")
    findings = answer["data"]
    if steps is not None and ctx.args.json:
        print(json.dumps({"repair": steps, "findings": findings}, indent=2, sort_keys=True))
    else:
        ctx.out(answer, lambda d: print("\n".join(f"{f['severity'].upper()}: {f['message']}" for f in d)
                                        or "cluster verify: no problems found"))
    return 1 if any(f["severity"] == "error" for f in findings) else 0


def replica(ctx: Context) -> int:
    return ctx.out(ctx.client.get("/v1/cluster/replica"), lambda d: print(
        f"node '{d['node']}': replica at revision {d['revision']}, config checksum {d['checksum'][:16]} "
        f"(without node reports)"))


def rotate_secrets(ctx: Context) -> int:
    return ctx.job(ctx.client.post("/v1/cluster/rotate-secrets", {"new_ca": ctx.args.new_ca}))


def join(ctx: Context) -> int:
    answer = ctx.client.post("/v1/cluster/join", {"address": ctx.args.address, "token": ctx.args.token})
    return ctx.out(answer, lambda d: print(f"node '{d['node']}' joined cluster '{d['cluster']}' "
                                           f"(master: {d['master']})"))


def master_failover(ctx: Context) -> int:
    before = ctx.client.get("/v1/cluster")["data"]["master"]
    ctx.client.post("/v1/cluster/master-failover", {"to": ctx.args.to} if ctx.args.to else {})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        info = ctx.client.get("/v1/cluster")["data"]
        if info["master"] not in (None, before):
            print(json.dumps({"from": before, "to": info["master"]}) if ctx.args.json
                  else f"master is now '{info['master']}' (was '{before}')")
            return 0
        time.sleep(0.2)
    print(f"error: no new master within 30 s after '{before}' stepped down; see `corral cluster info`",
          file=sys.stderr)
    return 1


def fencing(ctx: Context) -> int:
    answer = ctx.client.post("/v1/cluster/fencing", {"armed": ctx.args.state == "arm"})
    return ctx.out(answer, lambda d: print(f"fencing is {d['fencing']}" + ("" if d["changed"] else
                                                                           " (it already was)")))


def alert_clear(ctx: Context) -> int:
    return ctx.out(ctx.client.post("/v1/cluster/alert/clear"),
                   lambda d: print(f"alert cleared (it said: {d['cleared']['reason']})"))


def modify(ctx: Context) -> int:
    body: dict[str, Any] = {}
    if ctx.args.auto_failover:
        body["auto_failover"] = ctx.args.auto_failover == "yes"
    if ctx.args.failback_after is not None:
        body["failback_after_s"] = ctx.args.failback_after
    if ctx.args.max_lost_nodes:
        body["max_lost_nodes"] = None if ctx.args.max_lost_nodes == "default" else _whole(
            ctx.args.max_lost_nodes, "--max-lost-nodes")
    if ctx.args.default_memory:
        body["default_memory"] = ctx.args.default_memory
    if ctx.args.default_vcpus is not None:
        body["default_vcpus"] = ctx.args.default_vcpus
    if ctx.args.require_owner:
        body["require_owner"] = ctx.args.require_owner == "yes"
    if ctx.args.job_archive_after is not None:
        body["job_archive_after_s"] = ctx.args.job_archive_after
    if ctx.args.hv:  # NAME= puts NAME back to its built-in default
        body["hvparams"] = {k: (v or None) for k, v in kv_list(ctx.args.hv, "--hv").items()}
    if ctx.args.candidates is not None:
        body["candidate_pool_size"] = ctx.args.candidates
    if ctx.args.sync_rate is not None:
        body["sync_rate_mib_s"] = ctx.args.sync_rate
    if ctx.args.restart_backoff is not None:
        body["restart_backoff_s"] = ctx.args.restart_backoff
    if ctx.args.disk_templates:
        body["enabled_disk_templates"] = [t.strip() for t in ctx.args.disk_templates.split(",") if t.strip()]
    if ctx.args.backup_keep is not None:
        body["backup_keep"] = ctx.args.backup_keep
    if ctx.args.backup_to is not None:
        body["backup_to"] = "" if ctx.args.backup_to == "default" else ctx.args.backup_to
    if ctx.args.backup_max_per_node is not None:
        body["backup_max_per_node"] = ctx.args.backup_max_per_node
    if ctx.args.policy:  # NAME= lifts that bound
        body["policy"] = {k: (_policy_value(v) if v else None)
                          for k, v in kv_list(ctx.args.policy, "--policy").items()}
    return ctx.out(ctx.client.post("/v1/cluster/modify", body),
                   lambda d: print(", ".join(f"{k}={'default' if v is None else v}" for k, v in d.items())))


def simulate(ctx: Context) -> int:
    def human(d: dict[str, Any]) -> None:
        print(f"if {', '.join(d['fail'])} failed now:")
        for e in d["events"]:
            print(f"  {e['kind']:<11} {e['message']}")
        if not d["failovers"]:
            print("  nothing would be failed over")
        print("everything that should move would fit" if d["fits"] else
              f"NOT everything would fit: no memory for {', '.join(d['short'])} (see above)")
    return ctx.out(ctx.client.get("/v1/cluster/simulate?fail=" + ",".join(ctx.args.fail)), human)


def redundancy_lines(r: dict[str, Any] | None) -> list[str]:
    """`cluster info`: the replicated instances without a second copy in sync right now, and when the last of
    them should have one again; [] from an agent that does not say (or a cluster with none replicated)."""
    if not r or not r.get("replicated"):
        return []
    count, behind = r["replicated"], r.get("not_redundant") or []
    if not behind:
        return [f"redundancy:   all {count} replicated instance(s) have their second copy in sync"]
    lines = [f"redundancy:   {len(behind)} of {count} replicated instance(s) without a second copy in sync now: "
             + ", ".join(behind)]
    copying, measuring = r.get("copying") or {}, r.get("measuring") or []
    if copying:
        lines.append("              being copied: " + "; ".join(f"{name} ({why})" for name, why in copying.items()))
    if r.get("eta_s") is not None:
        lines.append(f"              the last of them in sync again {_in_words(r['eta_s'])}"
                     + (f" (by {clock(r['eta_at'])})" if r.get("eta_at") else "")
                     + (f"; the ETA of {', '.join(measuring)} is being measured" if measuring else ""))
    elif measuring:
        lines.append(f"              the ETA of {', '.join(measuring)} is being measured (the copy just began)")
    lines += [f"              not being copied: {name} ({why}): when it is in sync again is unknown"
              for name, why in (r.get("unknown") or {}).items()]
    return lines


def _in_words(seconds: float) -> str:
    if seconds < 1:
        return "any moment now"
    return f"in about {seconds:.0f} s" if seconds < 120 else f"in about {seconds / 60:.0f} min"


def _since_words(ts: float | None) -> str:
    return f" since {when(ts)}" if ts else ""


def _whole(value: str, what: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"{what}: {value!r} is not a whole number") from None


def _policy_value(value: str) -> Any:
    """A policy bound as typed: a count stays a number, a size stays text (the agent reads units)."""
    return int(value) if value.isdigit() else value
