"""This node's gossip: its Serf agent, the member events logged for the operator, its tags, the members view.

Serf coalesces member events and may drop a short flap entirely (MEASURED.md),
so decisions never rest on these events: `node list` polls members, and the
master acts on leases. The events are the story in the log, as they happen.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

from membership.agent import serf_argv, write_serf_secrets
from membership.rpc import MemberEvent, SerfError, SerfRpc
from membership.view import gossip_status, note_alive

from hostagent import pki
from hostagent.clock import SYSTEM, Clock
from hostagent.config import AgentConfig
from hostagent.node.clusterfile import ClusterFile
from hostagent.node.reporter import AGENT_VERSION
from hostagent.node.supervisor import ChildSupervisor

log = logging.getLogger(__name__)

_WORDS = {"member-join": "joined the gossip", "member-leave": "left the gossip",
          "member-failed": "stopped answering gossip (failed)", "member-update": "changed its tags",
          "member-reap": "was forgotten by gossip (reaped)"}


def describe(event: MemberEvent) -> list[str]:
    """One log line per member of a Serf member event."""
    words = _WORDS.get(event.type, event.type)
    return [f"gossip: node '{m.name}' ({m.addr}) {words}"
            + (f"; role {m.tags.get('role')}" if event.type == "member-update" and m.tags.get("role") else "")
            for m in event.members]


async def follow_events(connect: Callable[[], Awaitable[SerfRpc]], stop: asyncio.Event) -> None:
    """Log member events until `stop`; reconnect (bounded backoff) when Serf restarts."""
    backoff = 0.5
    while not stop.is_set():
        try:
            rpc = await connect()
            try:
                async with rpc.stream("member-join,member-leave,member-failed,member-update,member-reap") as events:
                    backoff = 0.5
                    async for event in events:
                        if isinstance(event, MemberEvent):
                            for line in describe(event):
                                log.info("%s", line)
            finally:
                await rpc.close()
        except (SerfError, OSError) as exc:
            log.debug("gossip event stream interrupted: %s", exc)
        try:
            await asyncio.wait_for(stop.wait(), backoff)
        except asyncio.TimeoutError:
            pass
        backoff = min(backoff * 2, 10.0)


async def publish_role(connect: Callable[[], Awaitable[SerfRpc]], role: str) -> None:
    """Set this node's `role` tag (master, candidate, regular) so every member sees it."""
    rpc = await connect()
    try:
        await rpc.update_tags(set={"role": role})
    finally:
        await rpc.close()


class Gossip:
    """The `serf` child (started with the cluster side, stopped with it) and the RPC to it."""

    def __init__(self, cfg: AgentConfig, paths: pki.PkiPaths, local: ClusterFile, clock: Clock = SYSTEM) -> None:
        self._cfg = cfg
        self._clock = clock
        self._pki = paths
        self._local = local
        self._child: ChildSupervisor | None = None
        self._seen: dict[str, float] = {}

    @property
    def pid(self) -> int | None:
        return self._child.pid if self._child is not None else None

    def start(self) -> None:
        cfg = self._cfg
        config = os.path.join(cfg.pki_dir, "serf.json")
        keyring = os.path.join(cfg.pki_dir, "serf.keyring")  # serf keeps rotated keys here

        def command() -> list[str]:
            key, rpc_auth = pki.read_secret(self._pki, "gossip.key"), pki.read_secret(self._pki, "serf-rpc.key")
            write_serf_secrets(config, key, rpc_auth=rpc_auth, keyring_file=keyring)
            return serf_argv(cfg.node_name, f"{cfg.address}:{cfg.gossip_port}",
                             f"{cfg.address}:{cfg.serf_rpc_port}", key, self._tags(),
                             rpc_auth=rpc_auth, config_file=config, keyring_file=keyring,
                             join=(self._local.read() or {}).get("serf_join", []),
                             snapshot_path=os.path.join(cfg.state_dir, "serf.snapshot"),
                             serf_binary=cfg.serf_binary)

        self._child = ChildSupervisor("serf", command, os.path.join(cfg.log_dir, "serf.log"), clock=self._clock)
        self._child.start()

    async def stop(self) -> None:
        if self._child is not None:
            await self._child.stop()
        self._child = None

    def _tags(self) -> dict[str, str]:
        return {"api": f"{self._cfg.address}:{self._cfg.api_port}", "version": AGENT_VERSION,
                "role": "candidate" if self._local.is_candidate else "regular"}

    async def connect(self) -> SerfRpc:
        return await SerfRpc.connect(self._cfg.address, self._cfg.serf_rpc_port,
                                     auth_key=pki.read_secret(self._pki, "serf-rpc.key"), timeout_s=5)

    async def follow(self, stop: asyncio.Event) -> None:
        await follow_events(self.connect, stop)

    async def view(self) -> dict[str, dict[str, Any]]:
        """Gossip view for `node list`: status and why, by node name; empty when Serf is not answering."""
        if self._local.read() is None:
            return {}
        try:
            rpc = await self.connect()
        except (SerfError, OSError):
            return {}
        try:
            members = await rpc.members()
        except SerfError:
            return {}
        finally:
            await rpc.close()
        now = self._clock.time()
        self._seen = note_alive(members, now, self._seen)
        return {name: {"status": g.status, "reason": g.reason}
                for name, g in gossip_status(members, now, self._seen).items()}
