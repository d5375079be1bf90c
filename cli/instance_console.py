"""`corral instance console NAME [--vnc [--listen [ADDR:]PORT]]`: the serial console, or the VNC display.

The command's arguments, its call and its rendering live here; the relays
themselves (cli.console, cli.vnc) import aiohttp, so only this command loads them.
"""

from __future__ import annotations

import sys
from typing import Any
from urllib.parse import quote

from cli.common import Context, Subparsers, UsageError, command


def add_commands(i: Subparsers) -> None:
    s = command(i, "console", console, "attach to the serial console (Ctrl-] detaches)")
    s.add_argument("name")
    s.add_argument("--vnc", action="store_true",
                   help="print how to reach the instance's VNC display (hvparam vnc=localhost or tcp) instead")
    s.add_argument("--listen", metavar="[ADDR:]PORT",
                   help="with --vnc: relay the display to this TCP port here (127.0.0.1 unless ADDR) until Ctrl-C")


def console(ctx: Context) -> int:
    if ctx.args.listen and not ctx.args.vnc:
        raise UsageError("--listen relays the VNC display: give --vnc too")
    if ctx.args.vnc:
        return vnc_display(ctx)
    from cli.console import attach  # imports aiohttp: only for this command
    return attach(ctx.client.path, ctx.args.name)


def vnc_display(ctx: Context) -> int:
    """How to reach the VNC display (its password too, for vnc=tcp); with --listen, relay it here."""
    from cli import vnc  # imports aiohttp: only for this command
    try:
        listen = vnc.parse_listen(ctx.args.listen) if ctx.args.listen else None
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    answer = ctx.client.get(f"/v1/instances/{quote(ctx.args.name)}/vnc")
    d = answer["data"]
    d["ssh"] = f"ssh -N -L 5901:{d['socket']} root@{d['address']}" if d["mode"] == "unix" else ""

    def human(d: dict[str, Any]) -> None:
        if listen is not None:
            print(f"the VNC display of '{d['name']}' (node '{d['node']}') is relayed on {listen[0]}:{listen[1]}: "
                  "point a VNC viewer there; Ctrl-C stops")
            if not vnc.is_loopback(listen[0]):
                print(f"WARNING: {listen[0]} is not loopback: whoever reaches that port reaches the display"
                      + (" with no password" if d["mode"] == "unix" else ""), file=sys.stderr)
        elif d["mode"] == "unix":
            print(f"the VNC display of '{d['name']}' is the unix socket {d['socket']} on node '{d['node']}', "
                  "which only root there can open; relay it to a port here (from any node) with")
            print(f"  corral instance console {d['name']} --vnc --listen 5901")
            print(f"or bring it here with `{d['ssh']}`; then point a VNC viewer at localhost:5901")
        else:
            print(f"the VNC display of '{d['name']}' is at {d['host']}:{d['port']} on node '{d['node']}'")
        if d["mode"] == "tcp":
            print(f"VNC password: {d['password'] or '(none recorded: `corral instance modify` gives it one)'}")
    status = ctx.out(answer, human)
    if listen is None or status:
        return status
    sys.stdout.flush()
    return vnc.listen(ctx.client.path, ctx.args.name, *listen)
