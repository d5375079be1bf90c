"""`corral job list|info|watch|cancel`: the jobs (every change is one).

Each command's arguments, its call and its rendering live here together;
cli.main only registers the group. Waiting for a job is cli.common's.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from cli.common import Context, Subparsers, command, group
from cli.render import table, when
from hostagent.callers import describe as caller_words


def register(top: Subparsers) -> None:
    j = group(top, "job", "jobs (every change is one)")
    s = command(j, "list", show_list, "jobs not yet archived (finished ones are, after 6 h by default)")
    s.add_argument("--archived", action="store_true", help="the archived jobs instead (kept 30 days)")
    which = s.add_mutually_exclusive_group()
    which.add_argument("--running", action="store_true", help="only running jobs")
    which.add_argument("--failed", action="store_true", help="only failed jobs")
    for name, run, help_ in (("info", info, "one job with its log"), ("watch", watch, "follow a job until it ends"),
                             ("cancel", cancel, "cancel a job that has not started")):
        s = command(j, name, run, help_, job=name == "watch")
        s.add_argument("id", type=int)


def show_list(ctx: Context) -> int:
    def human(rows: list[dict[str, Any]]) -> None:
        print(table(["ID", "STATUS", "CREATED", "SUMMARY", "ERROR"],
                    [[r["id"], r["status"], when(r["created"]), r["summary"], r["error"] or ""] for r in rows]))
    a = ctx.args
    query = {k: v for k, v in (("archived", "1" if a.archived else ""),
                               ("status", "running" if a.running else "error" if a.failed else "")) if v}
    return ctx.out(ctx.client.get("/v1/jobs" + ("?" + urlencode(query) if query else "")), human)


def info(ctx: Context) -> int:
    def human(j: dict[str, Any]) -> None:
        print(f"job {j['id']}: {j['summary']} ({j['op']})")
        print(f"status:   {j['status']}" + (f" - {j['error']}" if j["error"] else ""))
        print(f"created:  {when(j['created'])}  started: {when(j['started'])}  ended: {when(j['ended'])}")
        print(f"master:   {j['master']}")
        print(f"by:       {caller_words(j.get('caller'))}")
        print("log:")
        for t, line in j["log"]:
            print(f"  {when(t)} {line}")
    return ctx.out(ctx.client.get(f"/v1/jobs/{ctx.args.id}"), human)


def cancel(ctx: Context) -> int:
    ctx.client.post(f"/v1/jobs/{ctx.args.id}/cancel")
    print(f"job {ctx.args.id} canceled")
    return 0


def watch(ctx: Context) -> int:
    return ctx.follow(ctx.args.id)
