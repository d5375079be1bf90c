"""`corral ... add-tags | remove-tags | list-tags` for instances, nodes and the cluster, and `search-tags`.

Each command's arguments, its call and its rendering live here together; the
cluster, node and instance groups add the tag commands with `add_commands`.
"""

from __future__ import annotations

import json
from functools import partial
from typing import Any
from urllib.parse import quote, urlencode

from cli.common import Context, Subparsers, command
from cli.render import table

KINDS = {"instance": "/v1/instances/{}", "node": "/v1/nodes/{}", "cluster": "/v1/cluster"}


def add_commands(sub: Subparsers, kind: str) -> None:
    """The tag commands of the `kind` group."""
    for verb, help_, run in (("add-tags", "add tags", partial(change, kind=kind, verb="add")),
                             ("remove-tags", "remove tags", partial(change, kind=kind, verb="remove")),
                             ("list-tags", "list tags", partial(show, kind=kind))):
        s = command(sub, verb, run, f"{help_} of {'the cluster' if kind == 'cluster' else 'a ' + kind}")
        if kind != "cluster":
            s.add_argument("name")
        if verb != "list-tags":
            s.add_argument("tags", nargs="+", metavar="TAG", help="letters, digits and . _ + * / : @ -")


def register(top: Subparsers) -> None:
    s = command(top, "search-tags", search, "every tag of the cluster, its nodes and instances matching PATTERN")
    s.add_argument("pattern", help="an RE2 regular expression, found anywhere in the tag (e.g. ^project:)")


def change(ctx: Context, kind: str, verb: str) -> int:
    path = KINDS[kind] if kind == "cluster" else KINDS[kind].format(quote(ctx.args.name, safe=""))
    answer = ctx.client.post(f"{path}/tags", {verb: ctx.args.tags})
    return _print(ctx, answer["data"]["tags"])


def show(ctx: Context, kind: str) -> int:
    if kind == "cluster":
        found = ctx.client.get("/v1/cluster")["data"].get("tags") or []
    else:
        found = ctx.client.get(KINDS[kind].format(quote(ctx.args.name, safe="")))["data"].get("tags") or []
    return _print(ctx, found)


def search(ctx: Context) -> int:
    rows: list[dict[str, Any]] = ctx.client.get("/v1/tags?" + urlencode({"pattern": ctx.args.pattern}))["data"]
    if ctx.args.json:
        print(json.dumps(rows, indent=2, sort_keys=True))
    elif rows:
        print(table(["KIND", "NAME", "TAG"], [[r["kind"], r["name"] or "-", r["tag"]] for r in rows]))
    return 0 if rows else 1  # like grep: nothing found is not an error, but says so


def _print(ctx: Context, found: list[str]) -> int:
    print(json.dumps(found) if ctx.args.json else "\n".join(found))
    return 0
