"""`corral instance ...`: the group, in its order, and the commands that shape an instance: add and modify.

The other instance commands live in instance_show (list, info),
instance_console (console) and instance_ops (the one-job operations); each
command's arguments, its call and its rendering live together in its module.
"""

from __future__ import annotations

import argparse
from typing import Any
from urllib.parse import quote

from cli import instance_console, instance_ops, instance_show, networks, tags
from cli.common import Context, Subparsers, UsageError, command, group, kv_list
from hostagent.units import SizeError, parse_mib


def register(top: Subparsers) -> None:
    i = group(top, "instance", "instances (virtual machines)")
    s = command(i, "add", add, "create an instance", job=True)
    s.add_argument("name")
    s.add_argument("--os", "-o", required=True, help="OS definition or image (`corral os list`)")
    s.add_argument("--node", "-n", help="PRIMARY or PRIMARY:SECONDARY (default: chosen by the master)")
    s.add_argument("--disk-template", "-t", default="file",
                   help="file (local files), mirror (copied synchronously to a secondary node), plain "
                        "(LVM logical volumes in the node's volume group) or drbd (logical volumes replicated to a "
                        "secondary node by DRBD, protocol C)")
    s.add_argument("--disk", action="append",
                   help="SIZE[,format=raw|qcow2]; repeat for more disks (default 1G). With -t plain, adopt=LV "
                        "takes the existing logical volume LV of the node's volume group as the disk, data and "
                        "size as they are, with no OS install (Ganeti's adoption; every disk adopts, --node "
                        "names the node); `instance remove` then deletes it like any other disk")
    s.add_argument("--memory", "-m", help="e.g. 512M, 2G (default: the cluster's, 512M unless changed)")
    s.add_argument("--vcpus", type=int, help="virtual CPUs (default: the cluster's, 1 unless changed)")
    s.add_argument("--net", action="append", help=networks.NET_HELP + "; repeat for more NICs")
    s.add_argument("--hv", action="append", help="hypervisor parameters, e.g. accel=tcg,kernel_path=/boot/vmlinuz")
    s.add_argument("--os-param", action="append", help="OS parameters NAME=VALUE")
    s.add_argument("--no-start", action="store_true", help="create but do not start")
    s.add_argument("--owner", help="who to ask about this instance (`cluster modify --require-owner yes` "
                                   "makes it required)")
    s.add_argument("--description", help="one line saying what it is for")
    s.add_argument("--cdrom", metavar="PATH", help="an ISO file in the node's iso_dirs as a CD-ROM "
                                                   "(boot from it with --hv boot=cdrom)")
    s.add_argument("--tag", action="append", metavar="TAG", help="a tag; repeat for more")
    s.add_argument("--priority", choices=("critical", "high", "normal", "low"),
                   help="restart order after an outage (default normal)")
    s.add_argument("--after", action="append", metavar="INSTANCE",
                   help="restart only once INSTANCE runs; repeat for more")
    _boot_arguments(s)
    s.add_argument("--auto-failover", choices=("yes", "no"),
                   help="fail over to the secondary when the primary node is lost (default: the cluster's)")
    s = command(i, "modify", modify, "change an instance: memory, vCPUs, parameters, how it is kept running",
                job=True)
    s.add_argument("name")
    s.add_argument("--priority", choices=("critical", "high", "normal", "low"), help="restart order after an outage")
    after = s.add_mutually_exclusive_group()
    after.add_argument("--after", action="append", metavar="INSTANCE",
                       help="restart only once INSTANCE runs; repeat for more (replaces the list)")
    after.add_argument("--no-after", action="store_true", help="wait for no other instance")
    _boot_arguments(s, modify=True)
    s.add_argument("--auto-failover", choices=("yes", "no", "default"),
                   help="fail over when the primary node is lost; default: follow the cluster's setting")
    s.add_argument("--memory", "-m", help="e.g. 1G (a running instance: at its next restart)")
    s.add_argument("--vcpus", type=int, help="virtual CPUs (a running instance: at its next restart)")
    s.add_argument("--hv", action="append", metavar="NAME=VALUE",
                   help="hypervisor parameters; NAME= resets NAME to the cluster's (at the next restart)")
    s.add_argument("--os-param", action="append", metavar="NAME=VALUE",
                   help="OS parameters for the next install; NAME= removes NAME")
    s.add_argument("--net", action="append", metavar="CHANGE",
                   help="NICs: a stopped instance's change at its next start; a running one gains NICs at the end "
                        "and loses its last one live (hot-plug), other changes wait for a stop: "
                        + networks.MODIFY_NET_HELP)
    s.add_argument("--owner", help="who to ask about this instance ('' clears it)")
    s.add_argument("--description", help="one line saying what it is for ('' clears it)")
    s.add_argument("--cdrom", metavar="PATH|none", help="insert an ISO file (live if the running instance has a "
                                                        "CD-ROM drive, else at its next start); none ejects")
    s.add_argument("--backup", metavar="SCHEDULE",
                   help="the master backs the instance up by itself (live while it runs): hourly, daily, weekly, or "
                        "every N s/m/h such as 6h (at least 20s); none stops it")
    s.add_argument("--backup-keep", metavar="N|default",
                   help="scheduled backups kept in the export directory, oldest removed first (default: the "
                        "cluster's, 7 unless changed)")
    s.add_argument("--backup-to", metavar="NODE:DIR|DIR|default",
                   help="export directory of scheduled backups (default: the cluster's, else the node's first)")
    s.add_argument("--restart", action="store_true", help="restart the instance now if changes are pending")
    s.add_argument("--force", action="store_true",
                   help="write a memory increase even if its nodes cannot promise it (N+1), with a warning")
    instance_show.add_commands(i)
    instance_console.add_commands(i)
    instance_ops.add_commands(i)
    tags.add_commands(i, "instance")


def add(ctx: Context) -> int:
    a = ctx.args
    body: dict[str, Any] = {"name": a.name, "os": a.os, "disk_template": a.disk_template,
                            "start": not a.no_start,
                            "disks": [_disk(d) for d in (a.disk or ["1G"])],
                            "nics": [networks.nic_spec(n) for n in (a.net or ["mode=user"])],
                            "hvparams": kv_list(a.hv, "--hv"), "osparams": kv_list(a.os_param, "--os-param")}
    for field in ("owner", "description"):
        if getattr(a, field) is not None:
            body[field] = getattr(a, field)
    if a.tag:
        body["tags"] = a.tag
    if a.memory is not None:  # otherwise the cluster's default (`cluster modify --default-memory`)
        body["memory"] = _memory(a.memory)
    if a.vcpus is not None:
        body["vcpus"] = a.vcpus
    if a.node:
        body["node"] = a.node
    if a.priority:
        body["priority"] = a.priority
    if a.after:
        body["after"] = a.after
    body.update(_boot_options(a))
    if a.auto_failover:
        body["auto_failover"] = a.auto_failover == "yes"
    if a.cdrom is not None:
        body["cdrom"] = a.cdrom
    return ctx.job(ctx.client.post("/v1/instances", body))


def modify(ctx: Context) -> int:
    a = ctx.args
    body: dict[str, Any] = _boot_options(a)
    if a.priority:
        body["priority"] = a.priority
    if a.after or a.no_after:
        body["after"] = a.after or []
    if a.auto_failover:
        body["auto_failover"] = {"yes": True, "no": False, "default": None}[a.auto_failover]
    if a.memory:
        body["memory"] = _memory(a.memory)
    if a.vcpus is not None:
        body["vcpus"] = a.vcpus
    for text in ("owner", "description"):
        if getattr(a, text) is not None:
            body[text] = getattr(a, text)
    for option, field in ((a.hv, "hvparams"), (a.os_param, "osparams")):
        if option:  # NAME= (no value) removes NAME: back to the default
            body[field] = {k: (v or None) for k, v in kv_list(option, f"--{field[:2]}").items()}
    if a.net:
        body["nics"] = [networks.nic_change(n) for n in a.net]
    if a.cdrom is not None:
        body["cdrom"] = a.cdrom
    body.update(_backup_options(a))
    if not body:
        raise UsageError("nothing to change: give --cdrom, --memory, --vcpus, --hv, --os-param, --net, --owner, "
                         "--description, --priority, --after/--no-after, --boot-pattern, --boot-timeout, "
                         "--auto-failover, --backup, --backup-keep or --backup-to")
    body.update({"restart": a.restart, "force": a.force})
    return ctx.job(ctx.client.post(f"/v1/instances/{quote(a.name)}/modify", body))


def _backup_options(a: argparse.Namespace) -> dict[str, Any]:
    """--backup, --backup-keep, --backup-to as the agent takes them (it checks the schedule and the target)."""
    body: dict[str, Any] = {}
    if a.backup is not None:
        body["backup_schedule"] = a.backup
    if a.backup_keep is not None:
        if a.backup_keep == "default":
            body["backup_keep"] = None
        elif a.backup_keep.isdigit():
            body["backup_keep"] = int(a.backup_keep)
        else:
            raise UsageError(f"--backup-keep: {a.backup_keep!r} is not a whole number of backups (or default)")
    if a.backup_to is not None:
        body["backup_to"] = "" if a.backup_to == "default" else a.backup_to
    return body


def _memory(value: str) -> str:
    """--memory as typed, once it parses as a size (the agent reads it again)."""
    try:
        parse_mib(value, "memory")
    except SizeError as exc:
        raise UsageError(str(exc)) from None
    return value


def _disk(spec: str) -> dict[str, str]:
    """'10G' or '10G,format=qcow2' or 'size=10G,format=qcow2', or 'adopt=LV' (an existing LV, plain only)."""
    disk: dict[str, str] = {}
    for i, part in enumerate(spec.split(",")):
        if "=" in part:
            key, val = part.split("=", 1)
            if key.split(":")[-1] == "adopt" and ":" in key:
                raise UsageError(f"--disk: {part!r}: disks are numbered by the order of --disk here; give "
                                 f"adopt={val} (Ganeti's N:adopt=)")
            if key not in ("size", "format", "adopt"):
                raise UsageError(f"--disk: unknown option {key!r} (size, format, adopt)")
            disk[key] = val
        elif i == 0:
            disk["size"] = part
        else:
            raise UsageError(f"--disk: {part!r} is not NAME=VALUE")
    if "adopt" in disk:
        if "size" in disk:
            raise UsageError(f"--disk {spec}: an adopted disk takes its LV's size; give adopt={disk['adopt']} alone")
        return disk
    if "size" not in disk:
        raise UsageError("--disk needs a size, e.g. --disk 10G or --disk 10G,format=qcow2 (or adopt=LV)")
    try:
        parse_mib(disk["size"], "disk size")
    except SizeError as exc:
        raise UsageError(str(exc)) from None
    return disk


def _boot_arguments(s: argparse.ArgumentParser, modify: bool = False) -> None:
    s.add_argument("--boot-pattern", metavar="REGEX",
                   help="each boot must print a console line matching REGEX (e.g. 'login:') or it counts as a "
                        "failed start" + ("; '' removes the check" if modify else ""))
    s.add_argument("--boot-timeout", type=float, metavar="S", help="seconds a boot may take to print it (default 120)")


def _boot_options(a: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if a.boot_pattern is not None:
        body["boot_pattern"] = a.boot_pattern
    if a.boot_timeout is not None:
        body["boot_timeout_s"] = a.boot_timeout
    return body
