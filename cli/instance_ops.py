"""`corral instance start|stop|reboot|...|failover`: the operations that are one job on one instance.

start, stop and reboot also take many instances at once (--all, --node,
--tag, --owner: cli.many). Each command's arguments and the body of its job
sit together here; the job goes to /v1/instances/NAME/COMMAND and is waited for.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from cli import many
from cli.common import Context, Handler, Subparsers, UsageError, command, kv_list
from cli.render import mib, table, when

Body = Callable[[argparse.Namespace], dict[str, Any]]


def add_commands(i: Subparsers) -> None:
    s = command(i, "start", _one_or_many(lambda a: {}),
                "start an instance (or many: --all, --node, --tag, --owner)", job=True)
    s.add_argument("name", nargs="?")
    many.add_selectors(s)
    s = command(i, "stop", _one_or_many(lambda a: {"force": a.force, "timeout_s": a.shutdown_timeout}),
                "ACPI power-down, then hard stop after the timeout", job=True)
    s.add_argument("name", nargs="?")
    s.add_argument("--force", action="store_true", help="hard stop at once")
    s.add_argument("--shutdown-timeout", type=float, help="seconds before the hard stop")
    many.add_selectors(s)
    s = command(i, "reboot", _one_or_many(lambda a: {"type": a.type}), "soft (power-down + start) or hard (reset)",
                job=True)
    s.add_argument("name", nargs="?")
    s.add_argument("--type", choices=("soft", "hard"), default="soft")
    many.add_selectors(s)
    s = command(i, "add-disk", _one(_add_disk_body), "add a blank disk: hot-plugged into a running file instance; "
                "a replicated instance's (and its copy) while stopped", job=True)
    s.add_argument("name")
    s.add_argument("size", help="e.g. 10G, or 10G,format=qcow2")
    s = command(i, "remove-disk", _one(lambda a: {"disk": a.disk, "destroy_data": a.destroy_data}),
                "remove the last disk (unplugged from a running file instance) and delete its data", job=True)
    s.add_argument("name")
    s.add_argument("disk", type=int, help="the disk's index (the last one)")
    s.add_argument("--destroy-data", action="store_true", help="confirm: its data is deleted on every node")
    s = command(i, "rename", _one(lambda a: {"new_name": a.new_name}),
                "give a stopped instance a new name (same UUID, MACs, disks)", job=True)
    s.add_argument("name")
    s.add_argument("new_name")
    s = command(i, "reinstall", _one(_reinstall_body),
                "install the OS again on fresh disks (destroys their content)", job=True)
    s.add_argument("name")
    s.add_argument("--os", "-o", help="another OS (default: the instance's own)")
    s.add_argument("--os-param", action="append", metavar="NAME=VALUE",
                   help="OS parameters (replace the instance's when given)")
    s.add_argument("--yes", action="store_true", help="confirm: the content of the disks is destroyed")
    s = command(i, "remove", remove, "stop an instance and delete it with its disks (adopted LVs too, as in Ganeti)", job=True)
    s.add_argument("name")
    s = command(i, "migrate", _one(lambda a: {"node": a.node, "max_bandwidth_mib_s": a.max_bandwidth}),
                "live-migrate a replicated instance to its secondary node", job=True)
    s.add_argument("name")
    s.add_argument("--node", "-n", help="target node (only its secondary, for now)")
    s.add_argument("--max-bandwidth", type=float, default=1024.0, help="MiB/s for the memory copy (default 1024)")
    s = command(i, "move", _one(lambda a: {"node": a.node}),
                "copy a stopped instance's disks to another node and move it there", job=True)
    s.add_argument("name")
    s.add_argument("--node", "-n", required=True, help="the node to move to")
    s = command(i, "replace-secondary", _one(lambda a: {"node": a.node}),
                "copy a replicated instance to a new secondary node", job=True)
    s.add_argument("name")
    s.add_argument("--node", "-n", required=True, help="the new secondary node")
    s = command(i, "activate-disks", _one(lambda a: {}), "check the disks (re-create missing copies, restart the "
                "mirror) and print their paths", job=True)
    s.add_argument("name")
    s = command(i, "deactivate-disks", _one(lambda a: {}), "close what activate-disks opened (DRBD back to "
                "Secondary); the instance must be stopped", job=True)
    s.add_argument("name")
    s = command(i, "grow-disk", _one(lambda a: {"disk": a.disk, "size": a.size}),
                "grow one disk (also while running)", job=True)
    s.add_argument("name")
    s.add_argument("disk", type=int, help="disk index (0 is the first)")
    s.add_argument("size", help="the new size, e.g. 20G")
    s = command(i, "snapshot", snapshot, "create, list, revert or remove snapshots of an instance's disks "
                "(file and mirror: copies; plain and drbd: LVM snapshots; a running guest's as of one instant)",
                job=True)
    s.add_argument("name")
    s.add_argument("action", choices=("create", "list", "revert", "remove"))
    s.add_argument("snapshot", nargs="?", help="the snapshot's name (not for list)")
    s.add_argument("--yes", action="store_true", help="revert: confirm that what the disks hold now is lost")
    s = command(i, "failover", _one(lambda a: {"ignore_consistency": a.ignore_consistency}),
                "restart a replicated instance on its secondary node", job=True)
    s.add_argument("name")
    s.add_argument("--ignore-consistency", action="store_true",
                   help="go on when the primary does not answer, or the copy is not known to be in sync")


def _one(body_of: Body) -> Handler:
    """The handler of an operation on the named instance, its job's body made by `body_of`."""
    def run(ctx: Context) -> int:
        return ctx.job(ctx.client.post(f"/v1/instances/{quote(ctx.args.name)}/{ctx.args.cmd}", body_of(ctx.args)))
    return run


def _one_or_many(body_of: Body) -> Handler:
    """As `_one`, or with selectors instead of a name one job per chosen instance (cli.many)."""
    one = _one(body_of)

    def run(ctx: Context) -> int:
        a = ctx.args
        if a.name and many.selected(a):
            raise UsageError("give an instance name or --all/--node/--tag/--owner, not both")
        if a.name:
            return one(ctx)
        if not many.selected(a):
            raise UsageError("which instance? give its name, or --all, --node N, --tag T or --owner O")
        try:
            names = many.choose(ctx.client, a)
        except many.NothingSelected as exc:
            raise UsageError(str(exc)) from None
        return many.run(ctx.client, a.cmd, names, body_of(a), a.parallel, a.timeout, a.json)
    return run


def _add_disk_body(a: argparse.Namespace) -> dict[str, Any]:
    size, _, fmt = a.size.partition(",format=")
    return {"size": size, "format": fmt or "raw"}


def _reinstall_body(a: argparse.Namespace) -> dict[str, Any]:
    return {"yes": a.yes, "os": a.os, "osparams": kv_list(a.os_param, "--os-param") if a.os_param else None}


def snapshot(ctx: Context) -> int:
    a = ctx.args
    if a.action == "list":
        def human(r: dict[str, Any]) -> None:
            print(table(["SNAPSHOT", "CREATED", "CONSISTENCY", "ON DISK", "NODE"],
                        [[s["name"], when(s["created"]), s["consistency"], mib(int(s["used_bytes"]) // 2**20),
                          s["node"]] for s in r["snapshots"]]) if r["snapshots"] else
                  f"instance '{r['name']}' has no snapshots")
        answer = ctx.client.get(f"/v1/instances/{quote(a.name)}")
        return ctx.out({**answer, "data": answer["data"]["snapshots"]}, lambda _: human(answer["data"]))
    if not a.snapshot:
        raise UsageError(f"which snapshot? `corral instance snapshot {a.name} {a.action} SNAPSHOT`")
    body: dict[str, Any] = {"snapshot": a.snapshot, **({"yes": a.yes} if a.action == "revert" else {})}
    return ctx.job(ctx.client.post(f"/v1/instances/{quote(a.name)}/snapshot-{a.action}", body))


def remove(ctx: Context) -> int:
    return ctx.job(ctx.client.delete(f"/v1/instances/{quote(ctx.args.name)}"))
