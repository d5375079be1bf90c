"""The master role: campaign for the lease, and while held, run the jobs.

Patroni-style: each pass of the loop decides one thing and says it in one
sentence, which is logged when it changes ("acquired the master lease ...").
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from election.etcd import EtcdClient, EtcdError
from election.lease import FencingToken, MasterLease, NotMaster

from hostagent.jobs import Handler, JobRunner

log = logging.getLogger(__name__)


class NoMaster(Exception):
    """This node is not the master, or cannot reach etcd to know."""

    def __init__(self, master_hint: str | None, reason: str) -> None:
        super().__init__(reason)
        self.master_hint = master_hint


class MasterRole:
    def __init__(self, node: str, client: EtcdClient, lease: MasterLease,
                 lock_keys: Callable[[dict[str, Any]], list[str]],
                 on_change: Callable[[str], None] = lambda s: None) -> None:
        self.node = node
        self.client = client
        self.lease = lease
        self.handlers: dict[str, Handler] = {}  # set by the wiring: operations need the role
        self._lock_keys = lock_keys
        self._on_change = on_change
        self.token: FencingToken | None = None
        self.runner: JobRunner | None = None
        self.became_master = asyncio.Event()
        self._last_sentence = ""
        self._took_over = False

    @property
    def is_master(self) -> bool:
        return self.token is not None and self.runner is not None

    def require(self) -> JobRunner:
        if self.runner is None:
            raise NoMaster(None, f"node '{self.node}' is not the master")
        return self.runner

    def _say(self, sentence: str) -> None:
        if sentence != self._last_sentence:
            log.info("%s", sentence)
            self._last_sentence = sentence
            self._on_change(sentence)

    async def run(self, stop: asyncio.Event) -> None:
        interval = max(0.5, self.lease.ttl_s / 3)
        while not stop.is_set():
            try:
                sentence = await self._step()
                self._say(sentence)
                if sentence.startswith("revoked"):
                    continue  # campaign again at once
            except (EtcdError, NotMaster) as exc:
                await self._demote(f"lost contact with etcd ({exc}); stopped master duties")
            except Exception:  # noqa: BLE001 - the loop must survive; reported
                log.exception("master loop iteration failed; please report this bug")
            try:
                await asyncio.wait_for(stop.wait(), interval if self.is_master else 1.0)
            except asyncio.TimeoutError:
                pass
        await self._demote("agent stopping")
        if self.token is None:
            return
        try:
            await self.lease.resign()
        except EtcdError:
            pass

    async def _step(self) -> str:
        if self.is_master:
            if await self.lease.keepalive():
                return f"node '{self.node}' is master (token {self.token.to_str()})"  # type: ignore[union-attr]
            await self._demote("master lease expired")
            return f"lost the master lease; node '{self.node}' is no longer master"
        token = await self.lease.campaign(self.node)
        if token is None:
            current = await self.lease.current()
            if current is not None and current[0] == self.node and not self._took_over:
                # Our own lease from before a restart: the agent lock guarantees that
                # incarnation is dead, so end its lease instead of waiting out the TTL.
                self._took_over = True
                await self.client.lease_revoke(current[1].lease_id)
                return (f"revoked the master lease left by this node's previous agent "
                        f"(token {current[1].to_str()})")
            holder = current[0] if current else "nobody"
            return f"node '{holder}' holds the master lease; following"
        runner = JobRunner(self.node, self.client, self.lease, token, self.handlers, self._lock_keys)
        self.token, self.runner = token, runner
        await runner.start()
        self.became_master.set()
        return f"acquired the master lease; node '{self.node}' is master (token {token.to_str()})"

    async def _demote(self, reason: str) -> None:
        runner, self.runner, self.token = self.runner, None, None
        self.became_master.clear()
        if runner is not None:
            self._say(reason)
            await runner.stop()
