"""A simulated cluster that runs the master as the agent does: its election, job runner, store and duties.

Real: hostagent.master.role.MasterRole (election over election.lease), the Operations and their Store, the
job runner and the handlers its jobs run, the duties (restart, automatic failover, mirrors); on each node
its lease (hostagent.node.nodelease.NodeLease), its config replica (election.replica.Replica, SQLite in
memory), its self-fencing and start guard (hostagent.node.selffence.SelfFence), its fence keeper's pass
(hostagent.node.fencekeeper.fence_pass) and its check of the orders' tokens (hostagent.node.fencing.TokenGuard).
Simulated: etcd (tests/fakes/etcd.py, held to a real etcd by a contract test), time (virtual,
tests/fakes/loop.py), and each node's QEMUs, disk mirrors, live migrations and reports. The harness never
decides: it applies the commands and faults at their times, records the events the product writes, and
checks the invariants (tests/scenarios/README.md): no instance on two nodes, no QEMU started without its
node's lease, no order obeyed from a deposed master, nothing moved under the alert or disarm.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from election.etcd import Op
from election.lease import FencingToken, MasterLease
from election.replica import Replica
from fakes.clock import FakeClock
from fakes.etcd import FakeEtcd, FakeEtcdClient

from hostagent import model
from hostagent.errors import SenderNotMaster
from hostagent.master import cluster_settings
from hostagent.master.duties.autofailover import AutoFailover
from hostagent.master.jobs import lock_keys
from hostagent.master.operations import Operations
from hostagent.master.role import MasterRole
from hostagent.master.store import Store
from hostagent.model import DEFAULT_BOOT_TIMEOUT_S
from hostagent.node.fencekeeper import INTERVAL_S, Feed, fence_pass, read_feed
from hostagent.node.fencing import TokenGuard
from hostagent.node.nodelease import NodeLease
from hostagent.node.selffence import STEP_S, SelfFence
from hostagent.orders import OrderFailed

REPORT_EVERY_S = 2.0
MASTER_TTL_S = 10
NODE_TTL_S = 20


SYNC_S = 8.0  # a new copy of a mirror disk is in sync this long after its mirror started


# ---- guests: how long each boot takes, hangs, crashes (the scenario's `guest` lines) ----
CONSOLE = ["[    2.1] EXT4-fs (vda): mounted filesystem", "[    2.3] Run /sbin/init", "waiting for network..."]


@dataclass
class Guest:
    """What one instance's guest does after each start of its QEMU. `boots`, one per start in turn (the
    last one repeats): seconds until its console prints the boot line, "hang" (never), "dies" (the start
    order succeeds, the QEMU exits at once) or "fails" (the start order fails); `crashes_after_s`: the QEMU
    exits this long after every start."""

    boots: list[str] = field(default_factory=lambda: ["0"])
    crashes_after_s: float | None = None
    started: int = 0  # starts so far: which of `boots` the next one follows


@dataclass
class Boot:
    """One QEMU's boot as the node's watch judges it (hostagent.node.boothealth): its check comes from the
    instance record (`boot_pattern`, `boot_timeout_s`); state "" (not judged), waiting, up or timeout."""

    started_at: float
    plan: str  # seconds until the boot line, or "hang"
    pattern: str
    timeout_s: float
    state: str = ""
    up_at: float = 0.0


@dataclass
class SimNode:
    """One node's QEMUs, mirrors and reports. `broken` instances die as soon as they start (a guest that
    cannot boot); a node `cut_off` runs on but reaches neither etcd nor the master, nor they it."""

    name: str
    clock: FakeClock
    memory_mib: int = 16000
    powered: bool = False
    cut_off: bool = False
    qemus: dict[str, int] = field(default_factory=dict)  # instance -> pid
    mirrors: dict[str, tuple[int, float, int]] = field(default_factory=dict)  # instance -> (gen, since, disks)
    broken: set[str] = field(default_factory=set)
    pids: Any = field(default_factory=lambda: itertools.count(1000))
    fence: SelfFence | None = None
    load_1m: float = 0.1
    guests: dict[str, Guest] = field(default_factory=dict)  # shared by all nodes: a guest moves with its instance
    boots: dict[str, Boot] = field(default_factory=dict)  # instance -> its QEMU's boot
    starts: list[tuple[float, str]] = field(default_factory=list)  # (time, instance): every start that began
    most_booting: int = 0  # the most judged boots under way here at once
    # failover and fencing: freezes, live migrations, the orders' tokens, what the invariants are told
    frozen: bool = False  # the whole node stopped (agent, fence keeper, QEMUs), as by SIGSTOP to all
    awake: asyncio.Event = field(default_factory=lambda: _set(asyncio.Event()))  # clear while its agent is frozen
    incoming: dict[str, tuple[int, str]] = field(default_factory=dict)  # instance -> (pid, source): a migration
    never_in_sync: set[str] = field(default_factory=set)  # instances whose mirror here never completes
    peers: dict[str, SimNode] = field(default_factory=dict)  # the other nodes, for a migration's switchover
    tokens: Any = None  # hostagent.node.fencing.TokenGuard: which master this node obeys
    verify: Any = None  # the agent's verify_token: who holds the master key with a token, per etcd
    started: Callable[[str, str, str], None] = lambda node, name, how: None  # each QEMU start, for the invariants
    obeyed: Callable[[str, str, str, FencingToken], None] = lambda node, sender, op, token: None

    @property
    def reaches(self) -> bool:
        return self.powered and not self.cut_off

    def find(self, name: str) -> int | None:
        """QemuManager.find, as self-fencing asks it."""
        return self.qemus.get(name) if name in self.qemus else self.incoming.get(name, (None, ""))[0]

    def kill(self, feed: Feed, why: str) -> list[str]:
        """The fence's kill of the QEMUs in its feed."""
        killed = [name for name, pid, _ in feed.victims if self.find(name) == pid]
        for name in killed:
            self.qemus.pop(name, None)
            self.incoming.pop(name, None)
            self.mirrors.pop(name, None)
        return killed

    def report(self, now: float, instances: dict[str, dict[str, Any]]) -> dict[str, Any]:
        self.look(now)
        used = sum(int(instances.get(i, {}).get("memory_mib", 0)) for i in self.qemus)
        used += sum(int(instances.get(i, {}).get("memory_mib", 0)) for i in self.incoming)
        synced = {name: now - since >= SYNC_S and name not in self.never_in_sync
                  for name, (_, since, _) in self.mirrors.items()}
        mirrors = {name: [{"index": i, "gen": gen, "status": "in_sync" if synced[name] else "syncing",
                           "percent": 100.0 if synced[name] else min(99.0, 100.0 * (now - since) / SYNC_S)}
                          for i in range(disks)]
                   for name, (gen, since, disks) in self.mirrors.items() if name in self.qemus}
        report = {"node": self.name, "time": now, "cpus": 4, "load_1m": self.load_1m,
                  "memory_free_mib": self.memory_mib - used, "mirrors": mirrors,
                  "instances": {i: {"status": "running", "pid": pid, **self.boot_entry(i)} for i, pid in self.qemus.items()}
                  | {i: {"status": "inmigrate", "pid": pid} for i, (pid, _) in self.incoming.items()}}
        if self.fence is not None:
            report["fencing"] = self.fence.report()
        return report

    def order(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        if not self.reaches:
            raise OrderFailed(self.name, op, f"node '{self.name}' does not answer")
        if op == "instance.start":
            name = args["instance"]["name"]
            refusal = self.fence.start_refusal(name) if self.fence is not None else None
            if refusal:
                raise OrderFailed(self.name, op, refusal)  # the node's own start guard
            self.started(self.name, name, "incoming" if args.get("incoming") else "start")
            if args.get("incoming"):
                self.incoming[name] = (next(self.pids), args["incoming_from"])
                return {"pid": self.incoming[name][0]}
            plan = self.guest_starts(args["instance"])
            if plan == "fails":
                raise OrderFailed(self.name, op, f"QEMU of instance '{name}' exited at once: could not open disk image")
            if plan == "dies" or name in self.broken:
                return {"pid": next(self.pids)}  # it starts, then its guest dies before the next report
            self.qemus[name] = next(self.pids)
            return {"pid": self.qemus[name]}
        if op == "instance.stop":
            self.qemus.pop(args["name"], None)
            self.incoming.pop(args["name"], None)
            self.mirrors.pop(args["name"], None)
            return {"how": "powered off"}
        if op.startswith("instance.migrate") or op == "instance.placement":
            return self._migration(op, args["name"])
        if op == "instance.mirror-attach":
            self.mirrors[args["name"]] = (int(args["gen"]), self.clock.time(), len(args["disks"]))
            return {}
        if op == "instance.mirror-detach":
            self.mirrors.pop(args["name"], None)
            return {}
        if op in ("instance.replica-export", "instance.replica-unexport"):
            return {}
        if op == "instance.console-tail":
            return {"lines": ["Kernel panic - not syncing"] if args["name"] in self.broken else []}
        if op == "node.hello":
            return {"node": self.name}
        raise OrderFailed(self.name, op, f"the simulated node '{self.name}' has no answer for order {op!r}")

    def _migration(self, op: str, name: str) -> dict[str, Any]:
        """The source's side of a live migration (hostagent.node.replication): at the switchover the guest
        leaves this node's QEMU for the one waiting on the destination (which must still be there)."""
        if op == "instance.migrate-cancel":
            return {"status": "cancelled" if name in self.qemus else "not-running"}
        if name not in self.qemus:
            raise OrderFailed(self.name, op, f"instance '{name}' is not running on node '{self.name}'")
        if op == "instance.placement":
            return {"placement": {}}
        if op == "instance.migrate-status":
            return {"status": "active", "transferred_mib": 0.0, "remaining_mib": 0.0, "total_mib": 0.0,
                    "throughput_mib_s": 0.0, "eta_s": 0.0}
        target = next((p for p in self.peers.values() if p.incoming.get(name, (0, ""))[1] == self.name
                       and p.powered and not p.frozen), None)
        if target is None:
            raise OrderFailed(self.name, op, f"instance '{name}': the migration's destination does not answer")
        if op == "instance.migrate-to-switchover":
            return {"transferred_mib": 512.0, "elapsed_s": 1.0}
        assert op == "instance.migrate-complete", op
        self.mirrors.pop(name, None)
        del self.qemus[name]
        target.qemus[name] = target.incoming.pop(name)[0]
        target.started(target.name, name, "migrated")
        return {"downtime_ms": 40, "total_s": 1.0, "transferred_mib": 512.0, "throughput_mib_s": 512.0}

    async def receive(self, sender: str, op: str, args: dict[str, Any], token: FencingToken) -> dict[str, Any]:
        """An order as the agent's API takes it: not before a frozen agent thaws, and only from the master
        whose token it carries (hostagent.node.fencing.TokenGuard, the node's real check)."""
        await self.awake.wait()
        if not self.reaches:
            raise OrderFailed(self.name, op, f"node '{self.name}' does not answer")
        try:
            await self.tokens.admit(token, sender, self.verify)
        except SenderNotMaster as exc:
            raise OrderFailed(self.name, op, str(exc), "stale-token") from None
        self.obeyed(self.name, sender, op, token)
        return self.order(op, args)


    # ---- guests ----
    def guest_starts(self, inst: dict[str, Any]) -> str:
        """A start of the instance's QEMU: its boot begins, judged if the record has a boot pattern. The
        guest's plan for this boot ("dies", "fails": no QEMU stays)."""
        name, now = inst["name"], self.clock.time()
        guest = self.guests.setdefault(name, Guest())
        plan = guest.boots[min(guest.started, len(guest.boots) - 1)]
        guest.started += 1
        self.starts.append((now, name))
        pattern = str(inst.get("boot_pattern") or "")
        boot = self.boots[name] = Boot(now, plan, pattern, float(inst.get("boot_timeout_s") or DEFAULT_BOOT_TIMEOUT_S),
                                       "waiting" if pattern else "")
        if boot.state and plan not in ("dies", "fails"):
            under_way = [n for n in self.qemus if n != name and self.boots[n].state == "waiting"]
            self.most_booting = max(self.most_booting, len(under_way) + 1)
        return plan

    def look(self, now: float) -> None:
        """What the node sees before each of its reports: guests that crashed are gone, boots judged as
        boothealth judges them (the boot line first, then the timeout)."""
        for name in list(self.qemus):
            boot, guest = self.boots.get(name), self.guests.get(name, Guest())
            if boot is None:
                continue
            if guest.crashes_after_s is not None and now - boot.started_at >= guest.crashes_after_s:
                del self.qemus[name]
                self.mirrors.pop(name, None)
            elif boot.state == "waiting" and boot.plan != "hang" and now - boot.started_at >= float(boot.plan):
                boot.state, boot.up_at = "up", now
            elif boot.state == "waiting" and now - boot.started_at >= boot.timeout_s:
                boot.state = "timeout"

    def boot_entry(self, name: str) -> dict[str, Any]:
        """The fields hostagent.node.boothealth adds to the report's entry of an instance."""
        boot = self.boots.get(name)
        if boot is None or not boot.state:
            return {}
        return {"boot": boot.state, "boot_started_at": boot.started_at, "boot_pattern": boot.pattern,
                "boot_timeout_s": boot.timeout_s, **({"boot_up_at": boot.up_at} if boot.state == "up" else {}),
                **({"boot_console": CONSOLE} if boot.state == "timeout" else {})}


class SimNodeClient:
    """hostagent.orders.NodeClient's one call from the master candidate `sender`, delivered to the simulated
    node with its token: a frozen sender sends nothing until it thaws, a cut-off one reaches only itself."""

    def __init__(self, nodes: dict[str, SimNode], sender: str) -> None:
        self._nodes = nodes
        self._sender = sender

    async def order(self, node: str, address: str, port: int, op: str, args: dict[str, Any], token: FencingToken,
                    timeout_s: float = 600.0) -> dict[str, Any]:
        sender = self._nodes[self._sender]
        await sender.awake.wait()
        if node != self._sender and not sender.reaches:
            raise OrderFailed(node, op, f"unreachable from node '{self._sender}'")
        await asyncio.sleep(0.05)
        try:
            return await asyncio.wait_for(self._nodes[node].receive(self._sender, op, args, token), timeout_s)
        except TimeoutError:
            raise OrderFailed(node, op, f"no answer within {timeout_s:.0f} s") from None


class SimCluster:
    def __init__(self, clock: FakeClock, nodes: list[str], root: Path, candidates: int = 3) -> None:
        self.clock = clock
        self.etcd = FakeEtcd(clock)
        self.nodes = {n: SimNode(n, clock) for n in nodes}
        self.guests: dict[str, Guest] = {}  # how each instance's guest behaves, on whichever node it starts
        for sim_node in self.nodes.values():
            sim_node.guests = self.guests
        self._feeds: dict[str, str] = {}
        self.roles: dict[str, MasterRole] = {}
        self.leases: dict[str, NodeLease] = {}
        self.replicas: dict[str, Replica] = {}
        self.ops: dict[str, Operations] = {}
        for name in nodes:
            etcd = self._etcd_of(name)
            self.leases[name] = NodeLease(etcd, name, NODE_TTL_S, clock)  # type: ignore[arg-type]
            node_dir = root / name
            node_dir.mkdir(parents=True, exist_ok=True)
            self._wire(name, node_dir)
            self.replicas[name] = Replica(":memory:")  # the real replica code, its file in memory: fast
            self.nodes[name].fence = SelfFence(name, self.leases[name], self.nodes[name], self.replicas[name],  # type: ignore[arg-type]
                                               str(node_dir), str(node_dir), None, clock,
                                               started=lambda pid: pid, kill=self.nodes[name].kill)
            if len(self.roles) < candidates:
                role = MasterRole(name, etcd, MasterLease(etcd, key=model.MASTER_KEY, ttl_s=MASTER_TTL_S),  # type: ignore[arg-type]
                                  lock_keys=lock_keys, clock=clock)
                ops = Operations(role, SimNodeClient(self.nodes, name))  # type: ignore[arg-type]
                role.handlers = ops.handlers()
                role.duties += [ops.mirrors.keep_mirrors, ops.restarter.step, AutoFailover(ops.store, ops.views).step]
                self.roles[name] = role
                self.ops[name] = ops
        self._stops: dict[str, asyncio.Event] = {}
        self._tasks: list[asyncio.Task[Any]] = []
        self.violations: list[str] = []  # what the invariants found, checked every virtual tenth of a second
        self.last_ran: dict[str, str] = {}  # instance -> the node its guest last started on
        self.orders = 0  # orders the nodes obeyed
        self._t0 = clock.time()
        self._watching: asyncio.Task[None] | None = None

    def _etcd_of(self, name: str) -> FakeEtcdClient:
        return AgentEtcd(self.etcd, self.nodes[name])

    def seed(self, instances: list[dict[str, Any]], cluster: dict[str, Any] | None = None) -> None:
        """The config before the story starts: nodes, instances, the cluster record."""
        ops = [Op.put(model.CLUSTER_KEY, model.dumps({"name": "sim", **(cluster or {})}))]
        ops += [Op.put(model.node_key(n), model.dumps({"name": n, "address": "127.0.0.1", "api_port": 1}))
                for n in self.nodes]
        ops += [Op.put(model.instance_key(i["name"]), model.dumps(i)) for i in instances]
        self.etcd.txn([], ops, [])

    # ---- running -----------------------------------------------------------------
    async def _watch(self) -> None:
        """The invariant the product must keep whatever happens: an instance runs on at most one node."""
        while True:
            for name, where in self.running().items():
                if len(where) > 1:
                    self.violations.append(f"t={self.clock.time() - self._t0:.1f}: {name} runs on {', '.join(where)}")
            await asyncio.sleep(0.1)

    def _start_node(self, name: str) -> None:
        if self._watching is None:
            self._watching = asyncio.create_task(self._watch())
        stop = self._stops[name] = asyncio.Event()
        self.nodes[name].awake.set()
        self._tasks.append(asyncio.create_task(self._keeper(name, stop)))
        self._tasks.append(asyncio.create_task(self.leases[name].run(stop)))
        self._tasks.append(asyncio.create_task(self._node_loop(name, stop)))
        if name in self.roles:
            self._tasks.append(asyncio.create_task(self.roles[name].run(stop)))

    async def _node_loop(self, name: str, stop: asyncio.Event) -> None:
        """What the node's agent does beside its lease: mirror the config into its replica, fence itself, report."""
        node, etcd, fence = self.nodes[name], self._etcd_of(name), self.nodes[name].fence
        assert fence is not None
        last_report, mirrored, config_seen = -REPORT_EVERY_S, 0, (0, 0)
        while not stop.is_set():
            await node.awake.wait()
            if node.reaches and self.etcd.revision != mirrored:
                kvs, revision = self.etcd.snapshot()
                config = [kv for kv in kvs if not kv.key.startswith((model.REPORTS, model.LEASES, model.EVENTS))]
                if (changed := (len(config), max((kv.mod_revision for kv in config), default=0))) != config_seen:
                    self.replicas[name].reset(kvs, revision)  # what self-fencing reads: instances, the cluster
                    config_seen = changed
                mirrored = revision
            fence.step()
            if node.reaches and self.clock.monotonic() - last_report >= REPORT_EVERY_S:
                last_report = self.clock.monotonic()
                instances = {i["name"]: i for i in (await self._instances(etcd))}
                await etcd.put(model.report_key(name), model.dumps(node.report(self.clock.time(), instances)))
            try:
                await asyncio.wait_for(stop.wait(), STEP_S)
            except TimeoutError:
                pass

    @staticmethod
    async def _instances(etcd: FakeEtcdClient) -> list[dict[str, Any]]:
        kvs, _ = await etcd.get_prefix(model.INSTANCES)
        return [model.loads(kv.value) for kv in kvs]

    def power_off(self, name: str) -> None:
        """The node, its agent and its QEMUs are gone at once."""
        node = self.nodes[name]
        node.powered = False
        node.frozen = False
        node.qemus.clear()
        node.incoming.clear()
        node.mirrors.clear()
        self._stops[name].set()
        node.awake.set()  # what waited on the frozen agent finds the node gone

    def cut_off(self, name: str, cut: bool = True) -> None:
        """A network partition around the node: it runs on, reaching nobody, and nobody reaches it."""
        self.nodes[name].cut_off = cut

    def power_on(self, name: str) -> None:
        """The node boots: its agent starts with no QEMU running (they did not survive the power loss)."""
        self.nodes[name].powered = True
        self._start_node(name)

    async def stop(self) -> None:
        for stop in self._stops.values():
            stop.set()
        for node in self.nodes.values():
            node.awake.set()  # a frozen agent's loops end too
        if self._watching is not None:
            self._watching.cancel()
        await asyncio.gather(*self._tasks, *([self._watching] if self._watching else []), return_exceptions=True)

    # ---- what happened -------------------------------------------------------------
    def events(self, since: float = 0.0) -> list[str]:
        """The events the product wrote, as state changes: time from `since`, kind, instance or node."""
        kvs, _ = self.etcd.snapshot()
        rows = [model.loads(kv.value) for kv in kvs if kv.key.startswith(model.EVENTS)]
        return [f"t={e['time'] - since:.0f} {e['kind']} {e.get('instance') or e.get('node')}" for e in rows]

    async def clear_alert(self) -> bool:
        """`corral cluster alert clear`, as the API has the master do it; False while no master answers."""
        return await self.operator(cluster_settings.clear_alert)

    async def operator(self, command: Callable[[Store], Awaitable[Any]]) -> bool:
        """An operator's command as the API has the master run it (hostagent.master.cluster_settings);
        False while no master answers, or when it refused."""
        for name, role in self.roles.items():
            if self.nodes[name].reaches and self.nodes[name].awake.is_set() and role.lease_ok():
                try:
                    await command(self.ops[name].store)
                    return True
                except Exception:  # noqa: BLE001 - the operator's command failed (no master now): tried again later
                    return False
        return False

    def instances(self) -> list[dict[str, Any]]:
        """The instance records as etcd holds them now."""
        kvs, _ = self.etcd.snapshot()
        return [model.loads(kv.value) for kv in kvs if kv.key.startswith(model.INSTANCES)]

    def running(self) -> dict[str, list[str]]:
        """Instance -> the nodes its QEMU runs on (more than one is the outage Corral exists to prevent)."""
        where: dict[str, list[str]] = {}
        for n in self.nodes.values():
            for i in n.qemus if not n.frozen else ():  # a frozen QEMU runs no guest
                where.setdefault(i, []).append(n.name)
        return where

    # ---- the operator's start, guests, node memory and load ----
    async def start(self, name: str) -> str:
        """`corral instance start NAME`, as the API has the master do it; "" once the master took the job,
        else why it was refused (no master answers, the instance runs already)."""
        for node, role in self.roles.items():
            if self.nodes[node].reaches and role.lease_ok():
                try:
                    await self.ops[node].submit_simple("instance.start", name, {})
                    return ""
                except Exception as exc:  # noqa: BLE001 - the operator reads the refusal
                    return str(exc) or type(exc).__name__
        return "no master answers"

    def guest(self, name: str, flags: dict[str, str]) -> None:
        """How the instance's guest behaves from its next start: `boots=30,hang,dies`, `crashes-after=S`,
        `ok` (boots at once and stays up)."""
        guest = self.guests.setdefault(name, Guest())
        if "ok" in flags:
            guest.boots, guest.crashes_after_s, guest.started = ["0"], None, 0
        if "boots" in flags:
            guest.boots, guest.started = flags["boots"].split(","), 0
        if "crashes-after" in flags:
            guest.crashes_after_s = float(flags["crashes-after"])

    def node(self, name: str, flags: dict[str, str]) -> None:
        """The node's memory (MiB, what its QEMUs do not use is free) and load average."""
        if "memory" in flags:
            self.nodes[name].memory_mib = int(flags["memory"])
        if "load" in flags:
            self.nodes[name].load_1m = float(flags["load"])

    def said(self, name: str) -> list[str]:
        """The messages of the events the product wrote about the instance (the golden keeps only their kind)."""
        kvs, _ = self.etcd.snapshot()
        rows = [model.loads(kv.value) for kv in kvs if kv.key.startswith(model.EVENTS)]
        return [e.get("message", "") for e in rows if e.get("instance") == name]

    def track(self, name: str) -> dict[str, Any]:
        """The restart duty's record of the instance (attempts, failed, the console kept), {} if none."""
        kvs, _ = self.etcd.snapshot()
        return next((model.loads(kv.value) for kv in kvs if kv.key == model.restart_key(name)), {})


    # ---- failover and fencing: the fence keeper, freezes, and the invariants of each start and order --------
    def _wire(self, name: str, node_dir: Path) -> None:
        node = self.nodes[name]
        node.peers = self.nodes
        node.tokens = TokenGuard(str(node_dir / "fencing-token"))
        node.verify = functools.partial(self._verify, self._etcd_of(name))
        node.started = self._qemu_started
        node.obeyed = self._order_obeyed
        self._feeds[name] = str(node_dir / "fence-keeper.json")  # where SelfFence writes the keeper's feed

    @staticmethod
    async def _verify(etcd: FakeEtcdClient, token: FencingToken) -> str | None:
        """hostagent.agent.Agent.verify_token over the node's own etcd client."""
        kv = await etcd.get(model.MASTER_KEY)
        if kv is None or kv.create_revision != token.revision or kv.lease != token.lease_id:
            return None
        return str(model.loads(kv.value).get("node"))

    async def _keeper(self, name: str, stop: asyncio.Event) -> None:
        """The node's fence keeper (hostagent.node.fencekeeper): it runs on while the agent is frozen, not
        while the whole node is, and kills what the agent's last feed names once that feed's deadline passed.
        While the agent runs it looks at the agent's pace (the agent's own pass kills the same victims at the
        same deadline), to keep the simulation fast."""
        node, feed, fenced = self.nodes[name], Feed(None, (), None), set[tuple[str, int, int]]()
        while not stop.is_set():
            if not node.frozen:
                feed = read_feed(self._feeds[name]) or feed
                fence_pass(feed, self.clock.boot(), fenced, node.kill)
            await asyncio.sleep(1.0 if node.awake.is_set() else INTERVAL_S)

    def freeze_agent(self, name: str, frozen: bool = True) -> None:
        """The agent stops where it is (SIGSTOP): no lease renewal, report, master pass or order taken; its
        QEMUs and fence keeper run on. Thawed, it goes on from where it stopped."""
        (self.nodes[name].awake.clear if frozen else self.nodes[name].awake.set)()

    def freeze_node(self, name: str, frozen: bool = True) -> None:
        """Everything on the node stops, QEMUs too. On thawing, the fence keeper's first look comes before
        the guests run again (an assumption: the keeper runs every 0.25 s)."""
        node = self.nodes[name]
        if frozen:
            node.frozen = True
            node.awake.clear()
            return
        fence_pass(read_feed(self._feeds[name]) or Feed(None, (), None), self.clock.boot(), set(), node.kill)
        node.frozen = False
        node.awake.set()

    def _violation(self, what: str) -> None:
        self.violations.append(f"t={self.clock.time() - self._t0:.1f}: {what}")

    def _qemu_started(self, node: str, name: str, how: str) -> None:
        """Each QEMU started (`start`, `incoming`) or guest moved in (`migrated`): the node must hold its
        lease in etcd, and while the alert or disarm stands no guest may move to another node."""
        self.etcd.expire()
        if how != "migrated" and model.lease_key(node) not in self.etcd.kvs:
            self._violation(f"{name} started on {node}, which does not hold its node lease")
        if how == "incoming":
            return
        cluster = model.loads(self.etcd.kvs[model.CLUSTER_KEY].value)
        last = self.last_ran.get(name)
        if last not in (None, node) and (cluster.get("alert") or not model.armed(cluster)):
            self._violation(f"{name} moved from {last} to {node} while the cluster "
                            + ("alert stands" if cluster.get("alert") else "is disarmed"))
        self.last_ran[name] = node

    def _order_obeyed(self, node: str, sender: str, op: str, token: FencingToken) -> None:
        """An order a node obeyed must carry the token of the master etcd holds now."""
        self.etcd.expire()
        kv = self.etcd.kvs.get(model.MASTER_KEY)
        if kv is None or (kv.create_revision, kv.lease) != (token.revision, token.lease_id):
            self._violation(f"{node} obeyed {op} from {sender} with token {token.to_str()}, "
                            "which is not the current master's")
        self.orders += 1


def _set(event: asyncio.Event) -> asyncio.Event:
    event.set()
    return event


class AgentEtcd(FakeEtcdClient):
    """A node agent's etcd client: cut off with its node, and making no call while the agent is frozen."""

    def __init__(self, etcd: FakeEtcd, node: SimNode) -> None:
        super().__init__(etcd, lambda: node.reaches)
        self._node = node

    async def _check(self) -> FakeEtcd:
        await self._node.awake.wait()
        return await super()._check()



    def boot(self) -> float:
        return self._clock.boot()


def wait_until(clock: FakeClock, done: Callable[[], bool], within_s: float) -> Any:
    """A coroutine that returns (True) once `done()` holds, checked every virtual second, or False after
    `within_s`."""
    async def waiting() -> bool:
        for _ in range(int(within_s)):
            if done():
                return True
            await asyncio.sleep(1.0)
        return done()
    return waiting()
