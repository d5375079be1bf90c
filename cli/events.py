"""`corral events`: what the master decided by itself (restarts, giving up), and why.

The command's arguments, its call and its rendering live here together;
cli.main only registers it.
"""

from __future__ import annotations

from urllib.parse import quote

from cli.common import Context, Subparsers, command
from cli.render import table, when
from hostagent.callers import describe as caller_words


def register(top: Subparsers) -> None:
    s = command(top, "events", show, "what the master decided by itself (restarts, giving up), and why")
    s.add_argument("--instance", help="only this instance")
    s.add_argument("--node", help="only this node")
    s.add_argument("--limit", type=int, default=50, help="the newest N (default 50; 0 for all)")


def show(ctx: Context) -> int:
    query = "&".join(f"{k}={quote(v)}" for k, v in (("instance", ctx.args.instance), ("node", ctx.args.node),
                                                      ("limit", str(ctx.args.limit))) if v)
    return ctx.out(ctx.client.get(f"/v1/events?{query}"), lambda rows: print(table(
        ["TIME", "KIND", "INSTANCE", "NODE", "WHY"],
        [[when(e["time"]), e["kind"], e["instance"], e["node"],
          e["message"] + (f" (by {caller_words(e['caller'])})" if e.get("caller") else "")] for e in rows])))
