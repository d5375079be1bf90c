"""The master's instance and cluster operations: submit-time checks and job handlers.

Checks that can fail on bad input run before a job exists, so bad input is
refused with nothing recorded. The job handlers then order the nodes, and
undo their own partial work when a step fails.
"""

from __future__ import annotations

import random
import re
import time
import uuid
from typing import Any

from election.etcd import Op
from kvm.hvparams import HvParamError, hvparams_to_dict, parse_hvparams

from hostagent import model
from hostagent.jobs import Conflict, Handler, JobContext, JobFailed
from hostagent.master import MasterRole
from hostagent.orders import NodeClient, OrderFailed
from hostagent.status import instance_status
from hostagent.units import SizeError, format_mib, parse_mib

MAC_RE = re.compile(r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$")
NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$")
DISK_TEMPLATES = ("file",)
DISK_FORMATS = ("raw", "qcow2")
NIC_MODES = ("user", "bridged")


class BadRequest(ValueError):
    """Input the operator must correct; the message says what is accepted."""


class NotFound(LookupError):
    pass


class Operations:
    """Binds the master role to the node client; one instance per agent."""

    def __init__(self, role: MasterRole, nodes: NodeClient) -> None:
        self.role = role
        self.nodes = nodes

    # ---- reads straight from etcd: the master must not act on a lagging replica
    async def _get(self, key: str) -> Any:
        kv = await self.role.client.get(key)
        return None if kv is None else model.loads(kv.value)

    async def _prefix(self, prefix: str) -> list[Any]:
        kvs, _ = await self.role.client.get_prefix(prefix)
        return [model.loads(kv.value) for kv in kvs]

    async def _instance(self, name: str) -> dict[str, Any]:
        inst = await self._get(model.instance_key(name))
        if inst is None:
            names = [i["name"] for i in await self._prefix(model.INSTANCES)]
            raise NotFound(f"no instance named '{name}'"
                           + (f" (instances: {', '.join(names)})" if names else " (the cluster has no instances)"))
        return inst

    async def _write(self, ops: list[Op]) -> None:
        token = self.role.token
        if token is None:
            raise JobFailed("this node lost the master role during the job")
        await self.role.lease.guarded_txn(token, ops)

    async def _order(self, node_name: str, op: str, args: dict[str, Any], timeout_s: float = 600.0) -> dict[str, Any]:
        node = await self._get(model.node_key(node_name))
        if node is None:
            raise JobFailed(f"node '{node_name}' is not in the cluster")
        token = self.role.token
        if token is None:
            raise JobFailed("this node lost the master role during the job")
        try:
            return await self.nodes.order(node_name, node["address"], node["api_port"], op, args, token, timeout_s)
        except OrderFailed as exc:
            raise JobFailed(str(exc)) from exc

    async def cluster_hv(self) -> dict[str, Any]:
        cluster = await self._get(model.CLUSTER_KEY) or {}
        return cluster.get("hvparams", {})

    def merged_hv(self, cluster_hv: dict[str, Any], inst: dict[str, Any]) -> dict[str, Any]:
        return hvparams_to_dict(parse_hvparams(inst.get("hvparams", {}), parse_hvparams(cluster_hv)))

    # ---- submit-time checks -------------------------------------------------
    async def submit_cluster_init(self, name: str, node: dict[str, Any], hvparams: dict[str, Any]) -> int:
        try:
            hv = hvparams_to_dict(parse_hvparams(hvparams))
        except HvParamError as exc:
            raise BadRequest(str(exc)) from None
        return await self.role.require().submit(
            "cluster.init", {"name": name, "node": node, "hvparams": hv},
            f"initialize cluster '{name}'", must_not_exist=[model.CLUSTER_KEY])

    async def submit_add(self, req: dict[str, Any]) -> int:
        args = await self._check_add(req)
        return await self.role.require().submit(
            "instance.add", args, f"add instance '{args['instance']['name']}'",
            reservations=[model.reservation_key("instance", args["instance"]["name"])],
            must_not_exist=[model.instance_key(args["instance"]["name"])])

    async def _check_add(self, req: dict[str, Any]) -> dict[str, Any]:
        problems: list[str] = []
        name = str(req.get("name", ""))
        if not NAME_RE.match(name):
            problems.append(f"instance name {name!r} is not valid: use lower-case letters, digits, '-' and '.'")
        elif await self._get(model.instance_key(name)) is not None:
            raise Conflict(f"an instance named '{name}' already exists")
        template = req.get("disk_template", "file")
        if template not in DISK_TEMPLATES:
            problems.append(f"disk template {template!r} is not available; use one of: {', '.join(DISK_TEMPLATES)}")
        try:
            memory = parse_mib(req.get("memory", "512M"), "memory")
        except SizeError as exc:
            problems.append(str(exc))
            memory = 0
        vcpus = req.get("vcpus", 1)
        if not isinstance(vcpus, int) or isinstance(vcpus, bool) or not 1 <= vcpus <= 255:
            problems.append(f"vcpus: {vcpus!r} is not a number of virtual CPUs (1-255)")
        disks: list[model.Disk] = []
        for i, disk in enumerate(req.get("disks") or [{"size": "1G"}]):
            fmt = disk.get("format", "raw")
            if fmt not in DISK_FORMATS:
                problems.append(f"disk {i}: format {fmt!r} is not one of {', '.join(DISK_FORMATS)}")
            try:
                disks.append(model.Disk(i, parse_mib(disk.get("size", ""), f"disk {i} size"), fmt, str(uuid.uuid4())))
            except SizeError as exc:
                problems.append(str(exc))
        nics: list[model.Nic] = []
        for i, nic in enumerate(req.get("nics") or [{"mode": "user"}]):
            mode = nic.get("mode", "user")
            if mode not in NIC_MODES:
                problems.append(f"nic {i}: mode {mode!r} is not one of {', '.join(NIC_MODES)}")
            if mode == "bridged" and not nic.get("bridge"):
                problems.append(f"nic {i}: mode bridged needs a bridge, e.g. --net mode=bridged,bridge=br0")
            mac = str(nic.get("mac", "")).lower()
            if mac and not (MAC_RE.match(mac) and int(mac[:2], 16) % 2 == 0):
                problems.append(f"nic {i}: {mac!r} is not a unicast MAC address (e.g. 52:54:00:12:34:56)")
            nics.append(model.Nic(mac=mac, mode=mode, bridge=nic.get("bridge", "")))
        cluster_hv = await self.cluster_hv()
        try:
            parse_hvparams(req.get("hvparams", {}), parse_hvparams(cluster_hv))
        except HvParamError as exc:
            problems.extend(exc.problems)
        nodes = {n["name"]: n for n in await self._prefix(model.NODES)}
        reports = {r["node"]: r for r in await self._prefix(model.REPORTS)}
        node_name = req.get("node") or self._choose_node(nodes, reports, memory)
        if node_name not in nodes:
            problems.append(f"node {node_name!r} is not in the cluster (nodes: {', '.join(sorted(nodes))})")
        else:
            report = reports.get(node_name, {})
            total = report.get("memory_total_mib")
            if total is not None and memory > total:
                problems.append(f"memory {format_mib(memory)} is more than node '{node_name}' has "
                                f"({format_mib(total)} in total)")
            os_name = str(req.get("os", ""))
            known = report.get("os", {})
            if not os_name:
                problems.append("an OS is required (--os NAME; see `corral os list`)")
            elif os_name.split("+", 1)[0] not in known:
                problems.append(f"OS {os_name!r} is not available on node '{node_name}' "
                                f"(available: {', '.join(sorted(known)) or 'none'}; see `corral os list`)")
        if problems:
            raise BadRequest("; ".join(problems))
        macs = await self._used_macs()
        for nic in nics:
            if not nic.mac:
                nic.mac = self._new_mac(macs)
            elif nic.mac in macs:
                raise Conflict(f"MAC address {nic.mac} is already used by another instance")
            macs.add(nic.mac)
        now = time.time()
        inst = model.Instance(name=name, uuid=str(uuid.uuid4()), os=str(req["os"]), disk_template=template,
                              memory_mib=memory, vcpus=vcpus, primary_node=node_name, disks=disks, nics=nics,
                              hvparams=dict(req.get("hvparams", {})), osparams=dict(req.get("osparams", {})),
                              admin_state="down", ctime=now, mtime=now)
        return {"instance": inst.to_dict(), "start": bool(req.get("start", True))}

    @staticmethod
    def _choose_node(nodes: dict[str, Any], reports: dict[str, Any], memory: int) -> str:
        """Most free memory among usable nodes; the full allocator comes with replicated disks."""
        usable = [n for n in nodes if not nodes[n].get("drained") and not nodes[n].get("offline")]
        if not usable:
            return ""
        return max(usable, key=lambda n: reports.get(n, {}).get("memory_free_mib", 0))

    async def _used_macs(self) -> set[str]:
        return {nic["mac"].lower() for inst in await self._prefix(model.INSTANCES) for nic in inst["nics"]}

    @staticmethod
    def _new_mac(used: set[str]) -> str:
        rng = random.SystemRandom()
        for _ in range(1000):
            mac = "52:54:00:%02x:%02x:%02x" % (rng.randrange(256), rng.randrange(256), rng.randrange(256))
            if mac not in used:
                return mac
        raise Conflict("could not find a free MAC address in 52:54:00:00:00:00/24")

    async def submit_simple(self, op: str, name: str, params: dict[str, Any]) -> int:
        inst = await self._instance(name)
        report = await self._get(model.report_key(inst["primary_node"]))
        observed = instance_status(inst, report, time.time())
        where = f"on node '{inst['primary_node']}'"
        if op == "instance.start" and observed.pid is not None:
            raise Conflict(f"instance '{name}' is already running {where} (pid {observed.pid}); "
                           "use `corral instance reboot` to restart it")
        if op == "instance.reboot" and observed.pid is None:
            raise Conflict(f"instance '{name}' is not running {where}; use `corral instance start`")
        if op == "instance.reboot" and params.get("type", "soft") not in ("soft", "hard"):
            raise BadRequest(f"reboot type {params.get('type')!r} is not one of soft, hard")
        verb = op.split(".", 1)[1]
        return await self.role.require().submit(
            op, {"name": name, **params}, f"{verb} instance '{name}'",
            must_exist=[model.instance_key(name)])

    # ---- job handlers -------------------------------------------------------
    def handlers(self) -> dict[str, Handler]:
        return {"cluster.init": self._job_cluster_init, "instance.add": self._job_add,
                "instance.start": self._job_start, "instance.stop": self._job_stop,
                "instance.reboot": self._job_reboot, "instance.remove": self._job_remove}

    async def _job_cluster_init(self, ctx: JobContext, args: dict[str, Any]) -> dict[str, Any]:
        cluster = {"name": args["name"], "created": time.time(), "hvparams": args["hvparams"],
                   "init_node": args["node"]["name"]}
        await self._write([Op.put(model.CLUSTER_KEY, model.dumps(cluster)),
                           Op.put(model.node_key(args["node"]["name"]), model.dumps(args["node"]))])
        await ctx.log(f"cluster '{args['name']}' created with node '{args['node']['name']}' as master")
        return {"name": args["name"]}

    async def _job_add(self, ctx: JobContext, args: dict[str, Any]) -> dict[str, Any]:
        inst = args["instance"]
        name, node = inst["name"], inst["primary_node"]
        hv = self.merged_hv(await self.cluster_hv(), inst)
        disks = ", ".join(f"disk {d['index']} {format_mib(d['size_mib'])} {d['format']}" for d in inst["disks"])
        await ctx.log(f"creating instance '{name}' on node '{node}': {disks}, OS '{inst['os']}'")
        started = time.monotonic()
        steps = 2 if args["start"] else 1
        await ctx.progress(0, steps, "creating disks and installing the OS", started)
        try:
            result = await self._order(node, "instance.create", {"instance": inst, "hvparams": hv})
            await ctx.log(f"disks of '{name}' created and OS installed in {time.monotonic() - started:.1f} s")
            await ctx.progress(1, steps, "disks ready", started)
            inst["admin_state"] = "up" if args["start"] else "down"
            await self._write([Op.put(model.instance_key(name), model.dumps(inst))])
        except JobFailed:
            await ctx.log(f"removing what was created for '{name}' on node '{node}'")
            await self._order(node, "instance.remove", {"name": name, "disks": inst["disks"],
                                                        "nic_count": len(inst["nics"])})
            raise
        if not args["start"]:
            return {"name": name, "node": node, "created": result.get("created")}
        return await self._start(ctx, inst, hv)

    async def _start(self, ctx: JobContext, inst: dict[str, Any], hv: dict[str, Any]) -> dict[str, Any]:
        await ctx.log(f"starting instance '{inst['name']}' on node '{inst['primary_node']}'")
        result = await self._order(inst["primary_node"], "instance.start", {"instance": inst, "hvparams": hv})
        await ctx.log(f"instance '{inst['name']}' is running on node '{inst['primary_node']}' (pid {result['pid']})")
        return {"name": inst["name"], "node": inst["primary_node"], "pid": result["pid"]}

    async def _set_admin(self, inst: dict[str, Any], state: str) -> None:
        if inst["admin_state"] != state:
            inst["admin_state"] = state
            inst["mtime"] = time.time()
            await self._write([Op.put(model.instance_key(inst["name"]), model.dumps(inst))])

    async def _job_start(self, ctx: JobContext, args: dict[str, Any]) -> dict[str, Any]:
        inst = await self._instance(args["name"])
        await self._set_admin(inst, "up")
        return await self._start(ctx, inst, self.merged_hv(await self.cluster_hv(), inst))

    async def _stop(self, ctx: JobContext, inst: dict[str, Any], force: bool, timeout_s: float | None) -> str:
        hv = self.merged_hv(await self.cluster_hv(), inst)
        timeout = float(timeout_s if timeout_s is not None else hv["shutdown_timeout_s"])
        how_asked = "stopping it now (--force)" if force else f"ACPI power-down, hard stop after {timeout:.0f} s"
        await ctx.log(f"stopping instance '{inst['name']}' on node '{inst['primary_node']}': {how_asked}")
        result = await self._order(inst["primary_node"], "instance.stop",
                                   {"name": inst["name"], "timeout_s": timeout, "force": force,
                                    "nic_count": len(inst["nics"])}, timeout_s=timeout + 60)
        words = {"acpi": "shut down cleanly (ACPI)", "hard": "hard-stopped",
                 "not-running": "was not running"}
        await ctx.log(f"instance '{inst['name']}' {words.get(result['how'], result['how'])}")
        return str(result["how"])

    async def _job_stop(self, ctx: JobContext, args: dict[str, Any]) -> dict[str, Any]:
        inst = await self._instance(args["name"])
        await self._set_admin(inst, "down")
        how = await self._stop(ctx, inst, bool(args.get("force")), args.get("timeout_s"))
        return {"name": inst["name"], "how": how}

    async def _job_reboot(self, ctx: JobContext, args: dict[str, Any]) -> dict[str, Any]:
        inst = await self._instance(args["name"])
        await self._set_admin(inst, "up")
        if args.get("type", "soft") == "hard":
            await ctx.log(f"hard-resetting instance '{inst['name']}' on node '{inst['primary_node']}'")
            await self._order(inst["primary_node"], "instance.reset", {"name": inst["name"]})
            return {"name": inst["name"], "type": "hard"}
        await self._stop(ctx, inst, False, None)
        result = await self._start(ctx, inst, self.merged_hv(await self.cluster_hv(), inst))
        return {**result, "type": "soft"}

    async def _job_remove(self, ctx: JobContext, args: dict[str, Any]) -> dict[str, Any]:
        inst = await self._instance(args["name"])
        await ctx.log(f"removing instance '{inst['name']}' from node '{inst['primary_node']}': "
                      "stopping it and deleting its disks")
        await self._order(inst["primary_node"], "instance.remove",
                          {"name": inst["name"], "disks": inst["disks"], "nic_count": len(inst["nics"])})
        await self._write([Op.delete(model.instance_key(inst["name"]))])
        await ctx.log(f"instance '{inst['name']}' removed")
        return {"name": inst["name"]}


def lock_keys(job: dict[str, Any]) -> list[str]:
    """Jobs on the same instance run one at a time."""
    args = job["args"]
    name = args.get("name") or args.get("instance", {}).get("name")
    return [f"instance/{name}"] if name else ["cluster"]

