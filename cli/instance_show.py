"""`corral instance list|info`: what the instances are and how they run.

Each command's arguments, its call and its rendering live here together;
cli.instances registers them in the group's order.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import quote, urlencode

from cli.common import Context, Subparsers, UsageError, command
from cli.render import mib, table, when


def add_commands(i: Subparsers) -> None:
    s = command(i, "list", show_list, "all instances, or those matching every filter given")
    s.add_argument("--tag", help="only instances with this tag")
    s.add_argument("--node", help="only instances on this node (primary or secondary)")
    s.add_argument("--status", help="only instances in this status (running, stopped, node-down, ...)")
    s.add_argument("--owner", help="only instances of this owner")
    s.add_argument("-o", "--output", metavar="FIELDS", help="these fields as columns, e.g. name,status,owner,tags")
    s = command(i, "info", info, "one instance")
    s.add_argument("name")


def show_list(ctx: Context) -> int:
    a = ctx.args
    query = {k: v for k, v in (("tag", a.tag), ("node", a.node), ("status", a.status), ("owner", a.owner)) if v}
    url = "/v1/instances" + ("?" + urlencode(query) if query else "")

    def chosen(rows: list[dict[str, Any]]) -> None:
        fields = [f.strip() for f in a.output.split(",") if f.strip()]
        unknown = [f for f in fields if rows and f not in rows[0]]
        if unknown:
            raise UsageError(f"-o: no field {', '.join(unknown)} (fields: {', '.join(sorted(rows[0]))})")
        print(table([f.upper() for f in fields], [[_cell(r.get(f)) for f in fields] for r in rows]))

    if a.output:
        return ctx.out(ctx.client.get(url), chosen)

    def human(rows: list[dict[str, Any]]) -> None:
        print(table(["INSTANCE", "STATUS", "NODE", "TEMPLATE", "COPY", "MEMORY", "VCPUS", "OS", "REASON"],
                    [[r["name"], r["status"],
                      r["primary_node"] + (f":{r['secondary_node']}" if r["secondary_node"] else ""),
                      r["disk_template"], copy_cell(r.get("replication")),
                      mib(r["memory"]) + ("*" if "memory_mib" in r.get("pending", {}) else ""),
                      f"{r['vcpus']}" + ("*" if "vcpus" in r.get("pending", {}) else ""), r["os"],
                      "; ".join(filter(None, [r["reason"], "pending: restart to apply" if r.get("pending")
                                              else ""]))] for r in rows]))
    return ctx.out(ctx.client.get(url), human)


def info(ctx: Context) -> int:
    def human(r: dict[str, Any]) -> None:
        print(f"instance:     {r['name']} ({r['uuid']})")
        print(f"status:       {r['status']}" + (f" - {r['reason']}" if r["reason"] else "")
              + (f" (pid {r['pid']})" if r["pid"] else ""))
        for label, value in (("owner:", r.get("owner")), ("description:", r.get("description")),
                             ("tags:", ", ".join(r.get("tags") or []))):
            if value:
                print(f"{label:14}{value}")
        if r.get("pending"):
            print(f"pending:      {_pending(r['pending'])}: takes effect at the next restart "
                  f"(`corral instance reboot {r['name']}`)")
        print(f"admin state:  {r['admin_state']} (restart priority {r['priority']}"
              + (f", after {', '.join(r['after'])})" if r["after"] else ")"))
        boot = "none"
        if r.get("boot_pattern"):
            boot = f"a console line matching '{r['boot_pattern']}' within {r['boot_timeout_s']:.0f} s"
            boot += f" (this boot: {r['boot']})" if r.get("boot") else ""
        print(f"boot check:   {boot}")
        own = r.get("auto_failover")
        print("auto failover: " + (("yes" if own else "no") if own is not None else
                                   f"default ({'yes' if r.get('auto_failover_default') else 'no'})"))
        print(f"nodes:        primary {r['primary_node']}" + (f", secondary {r['secondary_node']}" if r["secondary_node"] else ""))
        print(f"os:           {r['os']}")
        if r.get("cdrom") is not None:
            print(f"cdrom:        {r['cdrom'] or '(empty)'}")
        print(f"resources:    {mib(r['memory'])} memory, {r['vcpus']} vcpus")
        rep = r.get("replication")
        if rep:
            print(f"replication:  to {rep['secondary']}: {rep['summary']}")
            if rep.get("redundant") is False and rep.get("why") and rep["why"] != rep["summary"]:
                print(f"              no second copy in sync now: {rep['why']}")
            since = rep.get("record_since")
            print(f"failover:     the copy is recorded {rep.get('record', 'unknown')}"
                  + (f" since {when(since)}" if since else ""))
            last = rep.get("last_degraded")
            if last:
                print(f"last degraded: {when(last['at'])}: {last['reason']}; guest paused "
                      f"{last['pause_ms']} ms until the master recorded the copy out of date")
        states = {s["index"]: s for s in (rep or {}).get("disks", [])}
        for d in r["disks"]:
            where = f" on {r['primary_node']}" + (f" + {rep['secondary']}" if rep else "")
            state = states.get(d["index"])
            print(f"disk {d['index']}:       {r['disk_template']} {mib(d['size_mib'])} {d['format']}{where}"
                  + (f", {disk_state_words(state)}" if state else ""))
            if state and state.get("last_sync_words"):
                print(f"              {state['last_sync_words']}")
        if r.get("snapshots"):
            print(f"snapshots:    {len(r['snapshots'])}, {mib(r['snapshot_bytes'] // 2**20)} on disk: "
                  + ", ".join(s["name"] + ("" if s["node"] == r["primary_node"] else f" (on {s['node']})")
                              for s in r["snapshots"]))
        _backups(r.get("backup") or {})
        for i, n in enumerate(r["nics"]):
            print(f"nic {i}:        {n['mode']} {n['mac']}" + (f" bridge {n['bridge']}" if n["bridge"] else "")
                  + (f" vlan {n['vlan']}" if n.get("vlan") else "")
                  + (f" network {n['network']} ip {n.get('ip') or 'none'}" if n.get("network") else ""))
        if r["hvparams"]:
            print("hv overrides: " + ", ".join(f"{k}={v}" for k, v in sorted(r["hvparams"].items())))
        print(f"created:      {when(r['ctime'])}")
        if r.get("console_tail"):
            print("console (last lines):")
            for line in r["console_tail"]:
                print(f"  | {line}")
    return ctx.out(ctx.client.get(f"/v1/instances/{quote(ctx.args.name)}"), human)


def copy_cell(rep: dict[str, Any] | None) -> str:
    """The `instance list` COPY column: '-' for an instance without a secondary, else a word or three."""
    if not rep:
        return "-"
    return str(rep.get("short") or rep["summary"])  # an agent before `short` gives only the long summary


def disk_state_words(state: dict[str, Any]) -> str:
    """One disk's copy as its `instance info` line ends: the agent's words (percent, left, rate, ETA)."""
    if state.get("words"):
        return str(state["words"])
    return str(state["status"]).replace("_", " ")  # an agent before `words`


def _backups(b: dict[str, Any]) -> None:
    """The backup schedule, keep count and target, the newest backup and when the next is due."""
    made = f"{b.get('count') or 0} backup(s) in `corral backup list`"
    if not b.get("schedule"):
        print("backups:      none scheduled" + (f"; {made}" if b.get("count") else ""))
        return
    print(f"backups:      {b['words']}, keep {b['keep']}" + (" (the cluster's)" if b.get("keep_own") is None else "")
          + f", into {b.get('to') or 'the first export directory of its node'}"
          + (" (the cluster's)" if b.get("to") and not b.get("to_own") else ""))
    due = b.get("next_due") or 0.0
    print(f"              last backup {when(b['last']) if b.get('last') else 'none yet'} ({made}); next "
          + (f"under way (job {b['job']})" if b.get("job") is not None else
             "due now" if due <= time.time() else f"due {when(due)}"))
    if b.get("last_error"):
        print(f"              last scheduled attempt failed at {when(b.get('failed_at'))}: {b['last_error']}")


def _cell(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "-"
    if value is None or value == "":
        return "-"
    return str(value)


def _pending(changes: dict[str, Any]) -> str:
    words = []
    if "memory_mib" in changes:
        words.append(f"memory {mib(changes['memory_mib'])}")
    if "vcpus" in changes:
        words.append(f"{changes['vcpus']} vCPUs")
    if "cdrom" in changes:
        words.append(f"a CD-ROM drive ({changes['cdrom'] or 'empty'})")
    if "hvparams" in changes:
        words.append("hypervisor parameters " + (",".join(f"{k}={v}" for k, v in sorted(changes["hvparams"].items()))
                                                 or "(the cluster's)"))
    return ", ".join(words)
