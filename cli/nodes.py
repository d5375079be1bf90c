"""`corral node ...`: the nodes: list and inspect, join tokens, flags, drain, evacuate, remove.

Each command's arguments, its call and its rendering live here together;
cli.main only registers the group.
"""

from __future__ import annotations

import sys
from typing import Any
from urllib.parse import quote

from cli import tags
from cli.common import Context, Subparsers, UsageError, command, group
from cli.render import mib, table, when


def register(top: Subparsers) -> None:
    n = group(top, "node", "nodes")
    command(n, "list", show_list, "all nodes")
    s = command(n, "info", info, "one node")
    s.add_argument("name")
    s = command(n, "add", add, "issue a one-time join token for a new node")
    s.add_argument("name")
    s.add_argument("--address", required=True, help="the new node's IP address")
    s.add_argument("--ttl", type=float, help="token lifetime in seconds (default 3600)")
    command(n, "tokens", tokens, "join tokens that can still be used (never their secret)")
    s = command(n, "token-revoke", token_revoke, "revoke the join token(s) of a node not yet joined")
    s.add_argument("name")
    s = command(n, "remove", remove, "remove a node from the cluster")
    s.add_argument("name")
    s.add_argument("--force", action="store_true", help="even if it still hosts instances")
    s = command(n, "migrate", evacuate, "live-migrate every replicated primary instance off the node", job=True)
    s.add_argument("name")
    s = command(n, "failover", evacuate, "fail over every replicated primary instance of the node", job=True)
    s.add_argument("name")
    s.add_argument("--ignore-consistency", action="store_true", help="as for `instance failover`")
    for name, help_ in (("drain", "place no new instances on the node"),
                        ("undrain", "let the node take new instances again")):
        s = command(n, name, drain, help_)
        s.add_argument("name")
    s = command(n, "evacuate", evacuate_all, "drain the node and move every instance and disk copy off it (one job)",
                job=True)
    s.add_argument("name")
    s.add_argument("--dry-run", action="store_true", help="print the plan only; change nothing")
    s = command(n, "modify", modify, "change a node's flags")
    s.add_argument("name")
    for flag, help_ in (("candidate", "may be a master candidate (etcd member)"),
                        ("drained", "takes no new instances"), ("offline", "out of service")):
        s.add_argument(f"--{flag}", choices=("yes", "no"), help=help_)
    tags.add_commands(n, "node")


def show_list(ctx: Context) -> int:
    def flags(r: dict[str, Any]) -> str:
        return ",".join(f for f in ("drained", "offline") if r[f]) or "-"

    def human(rows: list[dict[str, Any]]) -> None:
        print(table(["NODE", "ROLE", "STATUS", "GOSSIP", "ETCD", "LEASE", "FLAGS", "MEM FREE/TOTAL",
                     "DISK FREE/TOTAL", "CPUS", "PINST", "SINST", "PROBLEMS"],
                    [[r["name"], r["role"], r["status"], r["gossip"], r["etcd"], r["lease"], flags(r),
                      f"{mib(r['memory_free'])}/{mib(r['memory_total'])}",
                      f"{mib(r['disk_free'])}/{mib(r['disk_total'])}", r["cpus"],
                      r["primary_instances"], r["secondary_instances"], "; ".join(r["problems"]) or ""]
                     for r in rows]))
    return ctx.out(ctx.client.get("/v1/nodes"), human)


def info(ctx: Context) -> int:
    def human(r: dict[str, Any]) -> None:
        for key in ("name", "role", "status", "address", "gossip", "drained", "offline", "cpus", "load_1m",
                    "version", "report_age_s"):
            print(f"{key + ':':14}{r[key]}")
        print(f"{'memory:':14}{mib(r['memory_free'])} free of {mib(r['memory_total'])}")
        print(f"{'disk:':14}{mib(r['disk_free'])} free of {mib(r['disk_total'])}"
              + (f" ({mib(r['snapshot_bytes'] // 2**20)} held by snapshots)" if r.get("snapshot_bytes") else ""))
        if r.get("load_10s") is not None:
            print(f"{'load 10 s:':14}{r['load_10s']:g} (tasks running or waiting on I/O, the restart gate's figure)")
        if r.get("loop_lag_ms") is not None:
            print(f"{'loop lag:':14}{r['loop_lag_ms']:g} ms at worst in the last minute (agent's event loop)")
        lvm = r.get("lvm")
        if lvm:
            print(f"{'lvm:':14}volume group {lvm['vg']}: " + (lvm["error"] if "error" in lvm else
                  f"{mib(lvm['free_mib'])} free of {mib(lvm['size_mib'])}"))
        print(f"{'instances:':14}{', '.join(r['instances']) or '-'}")
        fencing = r.get("fencing")
        if fencing:
            left = fencing.get("deadline_in_s")
            print(f"{'fencing:':14}" + ("disarmed: stops nothing when cut off" if not fencing["armed"] else
                  f"stops {', '.join(fencing['guarded']) or 'nothing'} if its lease is not renewed"
                  + (f" within {left:.0f} s" if left is not None else "")))
        print(f"{'os:':14}{', '.join(sorted(r['os'])) or '-'}")
        if r["problems"]:
            print(f"{'problems:':14}{'; '.join(r['problems'])}")
    return ctx.out(ctx.client.get(f"/v1/nodes/{quote(ctx.args.name)}"), human)


def add(ctx: Context) -> int:
    body: dict[str, Any] = {"name": ctx.args.name, "address": ctx.args.address}
    if ctx.args.ttl:
        body["ttl_s"] = ctx.args.ttl
    answer = ctx.client.post("/v1/nodes", body)

    def human(d: dict[str, Any]) -> None:
        print(f"join token for node '{d['node']}' at {d['address']} (one use, expires {when(d['expires'])}):")
        print(f"  {d['token']}")
        print(f"on {d['node']}, with its agent running: corral cluster join <ADDRESS OF A NODE> --token {d['token']}")
    return ctx.out(answer, human)


def tokens(ctx: Context) -> int:
    def human(rows: list[dict[str, Any]]) -> None:
        print(table(["NODE", "ADDRESS", "CREATED", "EXPIRES", "STATE"],
                    [[r["node"], r["address"], when(r["created"]), when(r["expires"]), r["state"]]
                     for r in rows]) if rows else "no join tokens (used and expired ones are deleted)")
    return ctx.out(ctx.client.get("/v1/join-tokens"), human)


def token_revoke(ctx: Context) -> int:
    answer = ctx.client.delete(f"/v1/join-tokens/{quote(ctx.args.name)}")
    return ctx.out(answer, lambda d: print(f"revoked {d['revoked']} join token(s) for node '{d['node']}'"))


def remove(ctx: Context) -> int:
    suffix = "?force=1" if ctx.args.force else ""
    answer = ctx.client.delete(f"/v1/nodes/{quote(ctx.args.name)}{suffix}")
    return ctx.out(answer, lambda d: print(f"node '{d['node']}' removed"
                                           + (f"; its instances now show node-down: {', '.join(d['instances_left'])}"
                                              if d["instances_left"] else "")))


def evacuate(ctx: Context) -> int:
    """`node migrate` or `node failover`: one job per replicated primary instance."""
    action = ctx.args.cmd
    body = {"ignore_consistency": ctx.args.ignore_consistency} if action == "failover" else {}
    data = ctx.client.post(f"/v1/nodes/{quote(ctx.args.name)}/{action}", body)["data"]
    for line in data["skipped"]:
        print(f"skipped {line}", file=sys.stderr)
    if not data["job_ids"]:
        print(f"node '{ctx.args.name}' is the primary of no replicated instance")
    worst = 0
    for job_id in data["job_ids"]:
        worst = max(worst, ctx.job({"data": {"job_id": job_id}}))
    return worst


def drain(ctx: Context) -> int:
    """`node drain` or `node undrain`."""
    drained = ctx.args.cmd == "drain"
    answer = ctx.client.post(f"/v1/nodes/{quote(ctx.args.name)}/{ctx.args.cmd}")

    def human(d: dict[str, Any]) -> None:
        if not d["changed"]:
            print(f"node '{d['node']}' {'was already' if drained else 'was not'} drained; nothing changed")
        elif drained:
            print(f"node '{d['node']}' drained: no new instances are placed there "
                  f"(`corral node evacuate {d['node']}` moves its instances off)")
        else:
            print(f"node '{d['node']}' undrained: it takes new instances again")
    return ctx.out(answer, human)


def evacuate_all(ctx: Context) -> int:
    path = f"/v1/nodes/{quote(ctx.args.name)}/evacuate"
    if not ctx.args.dry_run:
        return ctx.job(ctx.client.post(path, {}))
    answer = ctx.client.post(path, {"dry_run": True})

    def human(plan: dict[str, Any]) -> None:
        steps = plan["steps"]
        print(f"evacuating node '{plan['node']}' would take {len(steps)} step(s)"
              + (":" if steps else " (it holds no instance)"))
        for index, step in enumerate(steps, 1):
            print(f"  {index}. {step['description']}")
        for problem in plan["problems"]:
            print(f"  cannot: {problem}")
        print("dry run: nothing was changed" + ("" if plan["fits"] else
                                                "; without --dry-run the evacuation would be refused"))
    ctx.out(answer, human)
    return 0 if answer["data"]["fits"] else 1


def modify(ctx: Context) -> int:
    changes = {k: v == "yes" for k, v in (("candidate", ctx.args.candidate), ("drained", ctx.args.drained),
                                          ("offline", ctx.args.offline)) if v is not None}
    if not changes:
        raise UsageError("nothing to change: give --candidate, --drained or --offline (yes|no)")
    answer = ctx.client.post(f"/v1/nodes/{quote(ctx.args.name)}/modify", changes)
    return ctx.out(answer, lambda d: print(f"node '{d['name']}': " + ", ".join(
        f"{k}={'yes' if v else 'no'}" for k, v in changes.items())))
