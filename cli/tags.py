"""`corral ... add-tags | remove-tags | list-tags` for instances, nodes and the cluster, and `search-tags`.

Each command's arguments, its call and its rendering live here together;
cli.main only registers them.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlencode

from cli.client import AgentClient
from cli.render import table

KINDS = {"instance": "/v1/instances/{}", "node": "/v1/nodes/{}", "cluster": "/v1/cluster"}


def add_parsers(groups: dict[str, argparse._SubParsersAction], common: argparse.ArgumentParser) -> None:
    for kind, sub in groups.items():
        for verb, help_ in (("add-tags", "add tags"), ("remove-tags", "remove tags"), ("list-tags", "list tags")):
            s = sub.add_parser(verb, help=f"{help_} of {'the cluster' if kind == 'cluster' else 'a ' + kind}",
                               parents=[common])
            if kind != "cluster":
                s.add_argument("name")
            if verb != "list-tags":
                s.add_argument("tags", nargs="+", metavar="TAG", help="letters, digits and . _ + * / : @ -")


def handlers(kind: str, client: AgentClient, args: argparse.Namespace) -> dict[tuple[str, str], Callable[[], int]]:
    """The (group, command) -> handler entries of this module for `kind`."""
    return {(kind, "add-tags"): lambda: change(client, kind, args, "add"),
            (kind, "remove-tags"): lambda: change(client, kind, args, "remove"),
            (kind, "list-tags"): lambda: show(client, kind, args)}


def change(client: AgentClient, kind: str, args: argparse.Namespace, verb: str) -> int:
    path = KINDS[kind] if kind == "cluster" else KINDS[kind].format(quote(args.name, safe=""))
    answer = client.post(f"{path}/tags", {verb: args.tags})
    return _print(args, answer["data"]["tags"])


def show(client: AgentClient, kind: str, args: argparse.Namespace) -> int:
    if kind == "cluster":
        found = client.get("/v1/cluster")["data"].get("tags") or []
    else:
        found = client.get(KINDS[kind].format(quote(args.name, safe="")))["data"].get("tags") or []
    return _print(args, found)


def search(client: AgentClient, args: argparse.Namespace) -> int:
    rows: list[dict[str, Any]] = client.get("/v1/tags?" + urlencode({"pattern": args.pattern}))["data"]
    if args.json:
        print(json.dumps(rows, indent=2, sort_keys=True))
    elif rows:
        print(table(["KIND", "NAME", "TAG"], [[r["kind"], r["name"] or "-", r["tag"]] for r in rows]))
    return 0 if rows else 1  # like grep: nothing found is not an error, but says so


def _print(args: argparse.Namespace, found: list[str]) -> int:
    print(json.dumps(found) if args.json else "\n".join(found))
    return 0
