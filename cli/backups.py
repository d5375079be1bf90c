"""`corral backup export|list|import|restore|remove`: instances exported into a node's export directory and
brought back, as themselves (restore) or as new instances (import).

Each command's arguments, its call and its rendering live here together; cli.main only registers the group.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from cli.common import Context, Subparsers, command, group
from cli.render import mib, table, when

REF_HELP = "a backup: NODE:PATH, or INSTANCE/ID when only one node has it (`corral backup list`)"


def register(top: Subparsers) -> None:
    sub = group(top, "backup", "export instances into backups and bring them back")
    s = command(sub, "export", export, "copy an instance's configuration and disks into a backup (a job)", job=True)
    s.add_argument("name", help="the instance")
    s.add_argument("--to", metavar="NODE:DIR|DIR", help="an export directory (export_dirs in agent.toml) of the "
                   "instance's node; default: its first")
    s.add_argument("--live", action="store_true", help="copy a running guest as of one instant while it runs "
                   "(crash-consistent); without it, a running instance is refused")
    s.add_argument("--compress", action="store_true", help="compressed images (smaller, slower)")
    s.add_argument("--rate", type=float, metavar="MIB_S", help="at most this many MiB/s a disk, so the guest's "
                   "disk keeps room for its own I/O (default: as fast as it goes)")
    s = command(sub, "list", show_list, "backups in the nodes' export directories, oldest first")
    s.add_argument("instance", nargs="?", help="only this instance's")
    s.add_argument("--node", help="only those on this node")
    s = command(sub, "import", import_, "create a new instance from a backup (its disks copied, no OS installed)", job=True)
    s.add_argument("backup", help=REF_HELP + "; with --ganeti, NODE:DIR of an export Ganeti wrote")
    s.add_argument("--name", help="the new instance's name (required, except with --ganeti: the exported one's)")
    s.add_argument("--ganeti", action="store_true", help="DIR holds what `gnt-backup export` wrote (config.ini and "
                   "the disk dumps, which go through the OS's import script)")
    s.add_argument("--node", help="where it runs (default: the backup's node; another one receives the images over "
                   "TLS; plain and drbd only there); for mirror and drbd PRIMARY:SECONDARY")
    s.add_argument("-t", "--disk-template", choices=("file", "mirror", "plain", "drbd"),
                   help="default: the backed-up instance's")
    s.add_argument("--no-start", action="store_true", help="leave it stopped")
    s = command(sub, "restore", restore, "replace an instance's disks with a backup's (stopped first and started "
                "again if it runs)", job=True)
    s.add_argument("name", help="the instance")
    s.add_argument("--from", dest="backup", required=True, metavar="BACKUP", help=REF_HELP)
    s.add_argument("--yes", action="store_true", help="confirm that what its disks hold now is replaced")
    s = command(sub, "remove", remove, "delete a backup", job=True)
    s.add_argument("backup", help=REF_HELP)


def export(ctx: Context) -> int:
    a = ctx.args
    return ctx.job(ctx.client.post("/v1/backups", {"instance": a.name, "to": a.to, "live": a.live,
                                                   "compress": a.compress, "rate_mib_s": a.rate}))


def show_list(ctx: Context) -> int:
    def human(rows: list[dict[str, Any]]) -> None:
        if not rows:
            print("no backups" + (f" of '{ctx.args.instance}'" if ctx.args.instance else ""))
            return
        print(table(["BACKUP", "INSTANCE", "CREATED", "CONSISTENCY", "DISKS", "ON DISK"],
                    [[r["ref"], r["instance"], when(r["created"]), r["consistency"]
                      + (", compressed" if r["compressed"] else ""),
                      " ".join(mib(int(size) // 2**20) for _, size in sorted(r["disks"].items())),
                      mib(int(r["used_bytes"]) // 2**20)] for r in rows]))
    query = "&".join(f"{k}={quote(v, safe='')}" for k, v in (("instance", ctx.args.instance),
                                                            ("node", ctx.args.node)) if v)
    return ctx.out(ctx.client.get("/v1/backups" + (f"?{query}" if query else "")), human)


def import_(ctx: Context) -> int:
    a = ctx.args
    body: dict[str, Any] = {"backup": a.backup, "start": not a.no_start, **({"name": a.name} if a.name else {}),
                            **({"ganeti": True} if a.ganeti else {})}
    if a.node:
        body["node"] = a.node
    if a.disk_template:
        body["disk_template"] = a.disk_template
    return ctx.job(ctx.client.post("/v1/backups/import", body))


def restore(ctx: Context) -> int:
    a = ctx.args
    return ctx.job(ctx.client.post(f"/v1/instances/{quote(a.name, safe='')}/restore",
                                   {"backup": a.backup, "yes": a.yes}))


def remove(ctx: Context) -> int:
    return ctx.job(ctx.client.post("/v1/backups/remove", {"backup": ctx.args.backup}))
