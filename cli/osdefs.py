"""`corral os list`: the operating system definitions and images this node has.

The command's arguments, its call and its rendering live here together;
cli.main only registers the group.
"""

from __future__ import annotations

import sys
from typing import Any

from cli.common import Context, Subparsers, command, group
from cli.render import table


def register(top: Subparsers) -> None:
    o = group(top, "os", "operating system definitions and images")
    command(o, "list", show_list, "OS definitions and images on this node")


def show_list(ctx: Context) -> int:
    def human(d: dict[str, Any]) -> None:
        print(table(["OS", "KIND", "VARIANTS", "PATH"],
                    [[r["name"], r["kind"], ",".join(r["variants"]) or "-", r["path"]] for r in d["os"]]))
        for p in d["problems"]:
            print(f"warning: {p}", file=sys.stderr)
    return ctx.out(ctx.client.get("/v1/os"), human)
