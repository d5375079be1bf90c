"""`corral user add|list|remove`: API users for the TCP API (people and scripts).

Each command's arguments, its call and its rendering live here together;
cli.main only registers the group.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from cli.common import Context, Subparsers, command, group
from cli.render import table, when


def register(top: Subparsers) -> None:
    u = group(top, "user", "API users for the TCP API (people and scripts)")
    s = command(u, "add", add, "create a user and print its token")
    s.add_argument("name")
    s.add_argument("--role", required=True, choices=("read", "write", "admin"),
                   help="read: look; write: instances and jobs; admin: also users, nodes, cluster settings "
                        "and secrets (README: Users and roles)")
    command(u, "list", show_list, "all users")
    s = command(u, "remove", remove, "remove a user")
    s.add_argument("name")


def add(ctx: Context) -> int:
    answer = ctx.client.post("/v1/users", {"name": ctx.args.name, "role": ctx.args.role})

    def human(d: dict[str, Any]) -> None:
        print(f"user '{d['name']}' ({d['role']}) created; its token (shown only now):")
        print(f"  {d['token']}")
        print("use it as the HTTP header  Authorization: Bearer <token>  on any node's API "
              f"(port {d.get('api_port', 7947)})")
    return ctx.out(answer, human)


def show_list(ctx: Context) -> int:
    return ctx.out(ctx.client.get("/v1/users"), lambda rows: print(table(
        ["USER", "ROLE", "CREATED"], [[u["name"], u["role"], when(u["created"])] for u in rows])))


def remove(ctx: Context) -> int:
    answer = ctx.client.delete(f"/v1/users/{quote(ctx.args.name)}")
    return ctx.out(answer, lambda d: print(f"user '{d['name']}' removed"))
