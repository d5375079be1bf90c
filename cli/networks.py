"""`corral network add|list|info|remove`, and the `--net` specs of `instance add` and `instance modify`.

Each command's arguments, its call and its rendering live here together;
cli.main only registers the group.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from cli.common import Context, Subparsers, command, group
from cli.render import table

NIC_KEYS = ("mode", "bridge", "mac", "network", "ip", "vlan")
NET_HELP = ("mode=user | mode=bridged,bridge=br0 | network=NAME,ip=pool|ADDR; also mac=, vlan=N "
            "(a NIC on a network takes its bridge and VLAN unless given)")
MODIFY_NET_HELP = ("add:KEY=VALUE,... | N:remove | N:modify,KEY=VALUE,... (N counts from 0; keys: "
                   f"{', '.join(NIC_KEYS)}; ip=pool, ip=none); repeat for more, applied in order")


class NetSpecError(ValueError):
    """A `--net` the agent would not understand; the message says what is accepted."""


def nic_spec(text: str) -> dict[str, Any]:
    """'network=lan,ip=pool' -> {"network": "lan", "ip": "pool"} (vlan as a number)."""
    spec: dict[str, Any] = {}
    for part in filter(None, text.split(",")):
        key, eq, value = part.partition("=")
        if not eq or key.strip() not in NIC_KEYS:
            raise NetSpecError(f"--net: {part!r} is not KEY=VALUE with KEY one of {', '.join(NIC_KEYS)}")
        if key.strip() in spec:
            raise NetSpecError(f"--net: {key.strip()} is given twice in {text!r}; give each KEY once")
        spec[key.strip()] = value.strip()
    if "vlan" in spec:
        if spec["vlan"] in ("", "none"):
            spec["vlan"] = None
        elif not spec["vlan"].isdigit():
            raise NetSpecError(f"--net: vlan {spec['vlan']!r} is not a VLAN id (1-4094, or none)")
        else:
            spec["vlan"] = int(spec["vlan"])
    return spec


def nic_change(text: str) -> dict[str, Any]:
    """`instance modify --net`: 'add:network=lan,ip=pool', '1:remove', '0:modify,ip=10.0.0.9' (Ganeti's forms)."""
    head, _, rest = text.partition(":")
    if head == "add":
        return {"action": "add", **nic_spec(rest)}
    action, _, params = rest.partition(",")
    if not head.isdigit() or action not in ("remove", "modify"):
        raise NetSpecError(f"--net {text!r}: give add:KEY=VALUE,..., N:remove or N:modify,KEY=VALUE,... "
                           "(N: the NIC's number, from 0)")
    if action == "remove" and params:
        raise NetSpecError(f"--net {text!r}: remove takes no KEY=VALUE")
    return {"action": action, "index": int(head), **nic_spec(params)}


def register(top: Subparsers) -> None:
    sub = group(top, "network", "networks with an IPv4 address pool for instance NICs")
    s = command(sub, "add", add, "add a network with an IPv4 address pool (IPv4 only)")
    s.add_argument("name")
    s.add_argument("--subnet", required=True, metavar="CIDR", help="IPv4 network, /16 to /30, e.g. 192.0.2.0/24")
    s.add_argument("--gateway", metavar="IP", help="never handed out, given to the OS scripts")
    s.add_argument("--mac-prefix", metavar="P", help="three octets (e.g. aa:00:00) for the MACs of its NICs")
    s.add_argument("--bridge", metavar="BR", help="host bridge its NICs are put on (bridged mode)")
    s.add_argument("--vlan", type=int, metavar="N", help="VLAN id (1-4094) of its NICs' taps on the bridge")
    s.add_argument("--tag", action="append", metavar="TAG", help="a tag (given to OS scripts); repeat for more")
    command(sub, "list", show_list, "all networks with their free and used address counts")
    for verb, run, help_ in (
            ("info", info, "one network: free ranges, and which instance NIC holds each used address"),
            ("remove", remove, "remove a network no NIC is on")):
        s = command(sub, verb, run, help_)
        s.add_argument("name")


def add(ctx: Context) -> int:
    body: dict[str, Any] = {"name": ctx.args.name, "subnet": ctx.args.subnet}
    for field in ("gateway", "mac_prefix", "bridge", "vlan"):
        if getattr(ctx.args, field) is not None:
            body[field] = getattr(ctx.args, field)
    if ctx.args.tag:
        body["tags"] = ctx.args.tag
    answer = ctx.client.post("/v1/networks", body)
    return ctx.out(answer, lambda d: print(f"network '{d['name']}' added: {d['subnet']}, "
                                           f"{_addresses(d['free_count'])} to hand out"))


def show_list(ctx: Context) -> int:
    def human(rows: list[dict[str, Any]]) -> None:
        print(table(["NETWORK", "SUBNET", "GATEWAY", "BRIDGE", "VLAN", "MAC PREFIX", "USED", "FREE"],
                    [[r["name"], r["subnet"], r["gateway"] or "-", r["bridge"] or "-", str(r["vlan"] or "-"),
                      r["mac_prefix"] or "-", str(r["used_count"]), str(r["free_count"])] for r in rows]))
    return ctx.out(ctx.client.get("/v1/networks"), human)


def info(ctx: Context) -> int:
    def human(d: dict[str, Any]) -> None:
        print(f"network:      {d['name']} ({d['uuid']})")
        print(f"subnet:       {d['subnet']} (IPv4), gateway {d['gateway'] or 'none'}")
        print("nics get:     " + (f"bridge {d['bridge']}" if d["bridge"] else "no bridge (give one per NIC)")
              + (f", vlan {d['vlan']}" if d["vlan"] else "")
              + f", MACs {d['mac_prefix'] or '52:54:00'}:xx:xx:xx")
        if d.get("tags"):
            print(f"tags:         {', '.join(d['tags'])}")
        print("never given:  " + ", ".join(f"{ip} ({why})" for ip, why in d["reserved"].items()))
        print(f"addresses:    {_addresses(d['size'])} to hand out, {d['used_count']} used, {d['free_count']} free")
        print("free:         " + (", ".join(d["free"][:20]) + (" ..." if len(d["free"]) > 20 else "") or "none"))
        for used in d["used"]:
            print(f"used:         {used['ip']:15}  {used['by']}")
        print(f"instances:    {', '.join(d['instances']) or 'none'}")
    return ctx.out(ctx.client.get(f"/v1/networks/{quote(ctx.args.name, safe='')}"), human)


def remove(ctx: Context) -> int:
    answer = ctx.client.delete(f"/v1/networks/{quote(ctx.args.name, safe='')}")
    return ctx.out(answer, lambda d: print(f"network '{d['name']}' removed"))


def _addresses(n: int) -> str:
    return f"{n} address" + ("" if n == 1 else "es")
