"""The node side of the `drbd` template: orders that bring an instance's DRBD resources up, the states its
report carries, and the fence-peer handler's call.

The master's replica record (hostagent.master.decide.replicas) is the template's, not the mirror's: a primary
reports each disk as `in_sync`, `syncing` or `disconnected` under the generation of the copy the master
last asked for (`drbd.attach` carries it), exactly as a mirror primary does, so the same rules decide
whether a failover may start from the secondary's copy.

Fencing: each resource runs with `fencing resource-and-stonith` and this node's handler
(cli.drbdfence, through the local socket). When a primary loses its peer, DRBD freezes its I/O and runs
the handler; the handler has the master record the peer's copy out of date (the same endpoint a mirror
primary's guard uses), and only once that is committed does DRBD let the guest write alone. A primary cut
off from the master never gets that far: its I/O stays frozen until self-fencing stops its QEMU, and the
copy it could not reach still has every write the guest was told was done.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shlex
import sys
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from storage.base import StorageError
from storage.drbd import DrbdNode
from storage.lvm import PlainTemplate
from storage.drbdproc import MinorState

from hostagent.clock import SYSTEM, Clock
from hostagent.config import AgentConfig
from hostagent.node.disks import NodeDisks
from hostagent.views import drbd_owner
from hostagent.node.executor import Order, OrderError, read_small_file

log = logging.getLogger(__name__)

OUTDATED_PATH = "/v1/node/replica-outdated"
FENCE_RETRY_S = 1.0
FENCE_PATIENCE_S = 60.0  # a master failover takes ~10 s; longer than this, self-fencing decides instead
RESYNC_RATE_MIB_S = 60.0  # Ganeti's default: a fixed rate, as DRBD 8.4's own controller starts at 250 KiB/s
CODE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def drbd_node(cfg: AgentConfig, lvm: PlainTemplate | None,
              cluster: Callable[[], dict[str, Any] | None]) -> DrbdNode | None:
    """DRBD over the node's volume group, with this agent's fence-peer handler; None without a volume group.
    `cluster`: the cluster's settings in this node's copy of the config, whose `sync_rate_mib_s` (the cap on
    background copies) is also each DRBD resource's resync rate."""
    if lvm is None:
        return None
    handler = shlex.join(["env", f"PYTHONPATH={CODE_ROOT}", sys.executable, "-m", "cli.drbdfence",
                          "--socket", cfg.socket])

    def rate() -> float:
        return float((cluster() or {}).get("sync_rate_mib_s") or RESYNC_RATE_MIB_S)
    return DrbdNode(lvm, os.path.join(cfg.state_dir, "drbd"), fence_peer=handler, resync_rate_mib_s=rate)


class NodeDrbd:
    """This node's DRBD resources as orders, report states and fencing calls."""

    def __init__(self, node: str, disks: NodeDisks, instance: Callable[[str], dict[str, Any] | None],
                 run_dir: str, stop_guest: Callable[[str], Awaitable[Any]], clock: Clock = SYSTEM) -> None:
        """`instance`: an instance's record from this node's copy of the config; `stop_guest`: its QEMU here
        stopped at once (a leftover of a node that was fenced)."""
        self._node = node
        self._stop_guest = stop_guest
        self._disks = disks
        self._instance = instance
        self._gen_dir = os.path.join(run_dir, "replication")  # shared with the mirror template: renames move it
        self._clock = clock
        self.tell_master: Callable[[str, dict[str, Any]], Awaitable[bool]] | None = None
        self.drbd_version: str | None = None  # the module's, once probed; None: no module (or not yet)

    @property
    def drbd(self) -> DrbdNode | None:
        return self._disks.drbd

    def orders(self) -> dict[str, Order]:
        return {"drbd.prepare": self._prepare, "drbd.attach": self._attach, "drbd.release": self._release,
                "drbd.activate": self._activate, "drbd.dual-primary": self._dual_primary,
                "drbd.grow-copy": self._grow_copy, "drbd.forget": self._forget}

    def gen(self, name: str) -> int:
        raw = read_small_file(os.path.join(self._gen_dir, f"{name}.gen"))
        return int(raw) if raw and raw.isdigit() else 0

    async def _prepare(self, args: dict[str, Any]) -> dict[str, Any]:
        """Every disk of the instance up here (made if missing), Secondary: a new or returning secondary."""
        inst = args["instance"]
        drbd = self._need()
        states = await drbd.states()
        devices = []
        for disk in self._disks.drbd_disks(inst):
            state = states.get(disk.minor)
            if state is not None and state.role == "Primary" and inst.get("secondary_node") == self._node:
                await self._step_down(inst, disk.name, state.io_suspended)
            devices.append(await drbd.ensure(disk))
        return {"devices": devices}

    async def _step_down(self, inst: dict[str, Any], resource: str, frozen: bool) -> None:
        """This node is Primary of a resource whose instance the master moved away (it was fenced, or cut off
        and failed over): its QEMU, if any, goes, and its copy resyncs from the new primary, discarding what it
        has that the new primary lacks. Those writes were never acknowledged to the guest: fencing froze them
        until the failover (a frozen resource resumes first, so its killed QEMU can let go of the device), or
        the operator failed over with --ignore-consistency, accepting their loss."""
        name = inst["name"]
        log.warning("instance '%s': node '%s' is Primary of %s but no longer the instance's primary; what it "
                    "wrote since it was cut off (never acknowledged to the guest) is discarded and its copy "
                    "resyncs from node '%s'", name, self._node, resource, inst["primary_node"])
        if frozen:
            await self._need().resume_io(self._node, resource)
        await self._stop_guest(name)
        await self._need().step_down(self._node, resource)

    async def _attach(self, args: dict[str, Any]) -> dict[str, Any]:
        """On the primary: its resources up and connecting, under the master's copy generation `gen`."""
        inst, gen = args["instance"], int(args["gen"])
        drbd = self._need()
        for disk in self._disks.drbd_disks(inst):
            await drbd.ensure(disk)
        os.makedirs(self._gen_dir, mode=0o700, exist_ok=True)
        path = os.path.join(self._gen_dir, f"{inst['name']}.gen")
        with open(path + ".tmp", "w") as fh:
            fh.write(str(gen))
        os.replace(path + ".tmp", path)
        return {"gen": gen}

    async def _activate(self, args: dict[str, Any]) -> dict[str, Any]:
        """`instance activate-disks`: every disk up and Primary here; their devices."""
        inst = args["instance"]
        drbd = self._need()
        devices = []
        for disk in self._disks.drbd_disks(inst):
            devices.append(await drbd.ensure(disk))
            await drbd.promote(self._node, disk.name)
        return {"devices": devices}

    async def _dual_primary(self, args: dict[str, Any]) -> dict[str, Any]:
        """Allow (or forbid again) both nodes Primary: a live migration's target opens the disks while the
        source still runs (Ganeti does the same for the switchover only)."""
        inst, allow = args["instance"], bool(args["allow"])
        drbd = self._need()
        for disk in self._disks.drbd_disks(inst):
            await drbd.ensure(disk)
            await drbd.dual_primary(self._node, disk.name, allow)
        return {"allow": allow}

    async def _grow_copy(self, args: dict[str, Any]) -> dict[str, Any]:
        """On the secondary, before the primary grows: the data LV of disk `index` grown, so that DRBD's resize
        on the primary finds room on both nodes."""
        inst, index, size_mib = args["instance"], int(args["index"]), int(args["size_mib"])
        disk = next((d for d in self._disks.drbd_disks(inst) if d.index == index), None)
        if disk is None:
            raise OrderError(f"instance '{inst['name']}' has no disk {index}")
        await self._need().grow(disk, size_mib, resize=False)
        return {"size_mib": size_mib}

    async def _forget(self, args: dict[str, Any]) -> dict[str, Any]:
        """On the secondary, before its primary's disks are rewritten under DRBD (a snapshot's revert): its
        copy's metadata made anew and left down, so it takes every block when it is next up."""
        inst = args["instance"]
        if inst.get("secondary_node") != self._node:
            raise OrderError(f"node '{self._node}' is not the secondary of '{inst['name']}'")
        for disk in self._disks.drbd_disks(inst):
            await self._need().forget_copy(disk)
        log.warning("instance '%s': the copy on node '%s' is discarded; DRBD copies every block to it again",
                    inst["name"], self._node)
        return {}

    async def _release(self, args: dict[str, Any]) -> dict[str, Any]:
        """The instance's resources Secondary here (no QEMU may be using them)."""
        await self._need().demote_instance(self._node, args["name"])
        return {}

    def _need(self) -> DrbdNode:
        if self.drbd is None:
            raise OrderError(f"node '{self._node}' has no volume group, so no DRBD disks: set [storage] "
                             "volume_group in its agent.toml")
        return self.drbd

    def demote_commands(self, inst: Mapping[str, Any]) -> list[list[str]]:
        """For the fence keeper: the commands that make a drbd instance's devices Secondary here."""
        if self.drbd is None or inst.get("disk_template") != "drbd":
            return []
        return [self.drbd.demote_argv(self._node, inst["name"], int(d["index"])) for d in inst["disks"]]

    # ---- the report --------------------------------------------------------------------------------------
    async def report(self) -> dict[str, Any]:
        """What the node's report says of DRBD: the module's version (None: no module) and every resource this
        node has a file for, in `cluster verify`'s terms (hostagent.views)."""
        if self.drbd is None:
            return {}
        try:
            states = await self.drbd.states()
        except StorageError as exc:
            return {"version": self.drbd_version, "error": str(exc)}
        resources = []
        for name in self.drbd.configured():
            owner = drbd_owner(name)
            inst = self._instance(owner[0]) if owner else None
            slot = next((s for s in (inst or {}).get("drbd") or [] if owner and s.get("index") == owner[1]), None)
            resources.append({"name": name, **_words(states.get(int(slot["minor"])) if slot else None)})
        return {"version": self.drbd_version, "resources": resources}

    async def probe(self) -> None:
        """Load the module once and remember its version for the reports."""
        if self.drbd is not None:
            self.drbd_version = await self.drbd.version()

    async def mirror_states(self, inst: dict[str, Any]) -> list[dict[str, Any]]:
        """Each disk of a drbd instance whose primary is this node, as the report's `mirrors` shows a copy."""
        if self.drbd is None:
            return []
        try:
            states = await self.drbd.states()
        except StorageError as exc:
            log.warning("could not read the DRBD state of instance '%s': %s", inst["name"], exc)
            return []
        gen = self.gen(inst["name"])
        out = []
        for slot in inst.get("drbd") or []:
            state = states.get(int(slot["minor"]))
            if state is None:
                continue  # not up here: the master's mirror duty brings it up
            out.append(disk_state(int(slot["index"]), state, gen))
        return out

    # ---- fencing -----------------------------------------------------------------------------------------
    async def fence_peer(self, resource: str) -> str:
        """The handler's call: have the master record the peer's copy out of date; the peer's name once done.
        Raises OrderError when the master could not be told within FENCE_PATIENCE_S (DRBD keeps I/O frozen)."""
        name, index = drbd_owner(resource) or ("", -1)
        inst = self._instance(name) if name else None
        if inst is None:  # an instance being created: no guest has written to it, nothing to lose
            log.info("DRBD resource %s lost its peer before its instance was created: nothing to outdate", resource)
            return "none yet"
        if inst.get("primary_node") != self._node:  # the master would refuse it: only the primary outdates a copy
            log.warning("instance '%s': DRBD on node '%s' lost its peer while Primary of %s, but the instance's "
                        "primary is '%s': its I/O stays frozen until the master brings this node back as the "
                        "secondary", name, self._node, resource, inst.get("primary_node"))
            raise OrderError(f"instance '{name}': node '{self._node}' is not its primary; the I/O of {resource} "
                             "stays frozen")
        peer = inst.get("secondary_node")
        body = {"name": name, "gen": self.gen(name),
                "reason": f"node '{self._node}' lost its DRBD connection to node '{peer}' (disk {index})"}
        log.warning("instance '%s': DRBD lost node '%s' on disk %s; its writes wait until the master records "
                    "that copy out of date", name, peer, index)
        deadline = self._clock.monotonic() + FENCE_PATIENCE_S
        while self._clock.monotonic() < deadline:
            if self.tell_master is not None and await self.tell_master(OUTDATED_PATH, body):
                log.warning("instance '%s': the copy on node '%s' is recorded out of date; writing on alone",
                            name, peer)
                return str(peer)
            await asyncio.sleep(FENCE_RETRY_S)
        raise OrderError(f"instance '{name}': the master could not be told that the copy on node '{peer}' is out "
                         f"of date within {FENCE_PATIENCE_S:.0f} s; its DRBD I/O stays frozen (self-fencing "
                         "decides if this node is cut off)")


def _words(state: MinorState | None) -> dict[str, Any]:
    if state is None:
        return {"up": False, "up_to_date": False, "summary": "not up on this node"}
    summary = f"{state.connection}, {state.role}, this disk {state.disk}, the peer's {state.peer_disk}"
    if state.syncing and state.percent is not None:
        summary += f", resync {state.percent:.1f} %"
    return {"up": True, "minor": state.minor, "connection": state.connection, "role": state.role,
            "peer_role": state.peer_role, "disk": state.disk, "peer_disk": state.peer_disk,
            "out_of_sync_kib": state.out_of_sync_kib, "up_to_date": state.in_sync, "summary": summary}


def disk_state(index: int, state: MinorState, gen: int) -> dict[str, Any]:
    """One disk's copy in the words of the mirror template's states (hostagent.status reads both)."""
    remaining = state.out_of_sync_kib // 1024
    if state.in_sync:
        return {"index": index, "status": "in_sync", "percent": 100.0, "eta_s": 0.0, "remaining_mib": 0,
                "error": "", "gen": gen, "drbd": state.connection}
    if state.syncing:
        return {"index": index, "status": "syncing", "percent": state.percent or 0.0, "eta_s": state.eta_s,
                "remaining_mib": remaining, "error": "", "gen": gen, "drbd": state.connection,
                "rate_kib_s": state.speed_kib_s}
    why = (f"DRBD {state.connection}, this disk {state.disk}, the peer's {state.peer_disk}"
           + (" (split brain: `corral cluster verify` says how to resolve it)" if state.connection == "StandAlone"
              else ""))
    return {"index": index, "status": "disconnected", "percent": None, "eta_s": None, "remaining_mib": remaining,
            "error": why, "gen": gen, "drbd": state.connection}

