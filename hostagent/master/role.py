"""The master role: campaign for the lease, and while held, run the jobs and duties.

Patroni-style: each pass of the loop decides one thing and says it in one
sentence, which is logged when it changes ("acquired the master lease ...").
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from election.etcd import EtcdClient, EtcdError, EtcdUnavailable
import election.lease
from election.lease import FencingToken, MasterLease

from hostagent import model
from hostagent.clock import SYSTEM, Clock
from hostagent.errors import NotMaster
from hostagent.master.jobs import Handler, JobRunner

log = logging.getLogger(__name__)

Duty = Callable[[], Awaitable[Any]]
TAKEOVER_HOLD_S = 3.0
# How often a follower looks at the master key itself; the mirror's watch wakes it at once
# when the key is deleted (Candidacy), so this only covers a watch that is behind.
FOLLOW_POLL_S = 0.3
# A candidate on the etcd leader's node leaves a free master lease this long to the others:
# were the master on that node, its death would cost an etcd election and a full lease TTL more.
DEFER_S = 0.5
RETRY_S = 0.2  # after a failed renewal, while the lease surely still holds
LEASE_MARGIN_S = 2.0  # at most this long before its lease could expire in etcd, the master stops acting


def renew_interval_s(ttl_s: float) -> float:
    """How often the master renews its lease (and runs its duties): three times a TTL."""
    return max(0.5, ttl_s / 3)


def lease_margin_s(ttl_s: float) -> float:
    """How long before its lease could expire in etcd the master stops acting, so that orders in flight land
    first: LEASE_MARGIN_S, or a quarter of a lease too short for that (a 2 s lease still survives one late
    renewal)."""
    return min(LEASE_MARGIN_S, ttl_s / 4)


class MasterRole:
    def __init__(self, node: str, client: EtcdClient, lease: MasterLease,
                 lock_keys: Callable[[dict[str, Any]], list[str]],
                 on_change: Callable[[str], None] = lambda s: None,
                 catch_up: Callable[[int, float], Awaitable[bool]] | None = None, clock: Clock = SYSTEM,
                 defer: Callable[[], Awaitable[bool]] | None = None) -> None:
        """`defer`: whether a free master lease is better left a moment to the other candidates (DEFER_S)."""
        self.node = node
        self.clock = clock  # the master's jobs, store and duties read the time here
        self.client = client
        self.lease = lease
        self.handlers: dict[str, Handler] = {}  # set by the wiring: operations need the role
        self.on_elected: list[Duty] = []   # once, after winning and catching up
        self.duties: list[Duty] = []       # every pass while master
        self.tick = 0  # counts the passes that launched duties: what they read once per pass is keyed by it
        self._lock_keys = lock_keys
        self._on_change = on_change
        self._catch_up = catch_up
        self._defer = defer
        self._free_since: float | None = None  # when this node last found the master lease free
        self.token: FencingToken | None = None
        self.runner: JobRunner | None = None
        self.became_master = asyncio.Event()
        self._lease_deadline = 0.0
        self.master_since = 0.0  # wall clock when this node last became master
        self._last_sentence = ""
        self._took_over = False
        self._hold_until = 0.0
        self._wake = asyncio.Event()
        # One task per duty, so a slow one (an etcd member joining) never holds up the
        # others (restarting instances); the election hooks run before any of them.
        self._hooks_task: asyncio.Task[None] | None = None
        self._duty_tasks: dict[int, asyncio.Task[None]] = {}

    @property
    def is_master(self) -> bool:
        return self.token is not None and self.runner is not None

    def lease_ok(self) -> bool:
        """Master, and certainly still holding the lease: checked before every order and write.

        The deadline is measured on our own monotonic clock from the last renewal
        that succeeded, minus a margin, so a master that was frozen or cut off
        stops acting before etcd can have given the role to another node.
        """
        return self.is_master and self.clock.monotonic() < self._lease_deadline

    def require(self) -> JobRunner:
        if self.runner is None:
            raise NotMaster(None, f"node '{self.node}' is not the master")
        return self.runner

    def _say(self, sentence: str) -> None:
        if sentence != self._last_sentence:
            log.info("%s", sentence)
            self._last_sentence = sentence
            self._on_change(sentence)

    async def run(self, stop: asyncio.Event) -> None:
        interval = renew_interval_s(self.lease.ttl_s)
        while not stop.is_set():
            retry = False
            try:
                sentence = await self._step()
                self._say(sentence)
                if sentence.startswith("revoked"):
                    continue  # campaign again at once
            except EtcdUnavailable as exc:
                if self.lease_ok():
                    # etcd between leaders, or one member gone: the lease outlives that; try again soon.
                    self._say(f"node '{self.node}' could not renew the master lease ({exc}); "
                              f"retrying while it surely holds")
                    retry = True
                else:
                    await self._demote(f"lost contact with etcd ({exc}); stopped master duties")
            except (EtcdError, election.lease.NotMaster) as exc:
                await self._demote(f"lost contact with etcd ({exc}); stopped master duties")
            except Exception:  # noqa: BLE001 - the loop must survive; reported
                log.exception("master loop iteration failed; please report this bug")
            self._wake.clear()
            try:
                pause = RETRY_S if retry else interval if self.is_master else FOLLOW_POLL_S
                await asyncio.wait_for(self._wait_either(stop), pause)
            except asyncio.TimeoutError:
                pass
        await self._demote("agent stopping")

    async def _wait_either(self, stop: asyncio.Event) -> None:
        waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wake.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    async def _step(self) -> str:
        if self.is_master:
            if not self.lease_ok():
                await self._demote("could not renew the master lease in time")
                return f"node '{self.node}' stopped acting as master: its lease may have expired"
            sent = self.clock.monotonic()
            if not await self.lease.keepalive():
                await self._demote("master lease expired")
                return f"lost the master lease; node '{self.node}' is no longer master"
            self._lease_deadline = self._deadline(sent)
            # In the background: a long duty (adding an etcd member) must never delay
            # the keepalive that keeps this node master.
            self._launch_duties()
            return f"node '{self.node}' is master (token {self.token.to_str()})"  # type: ignore[union-attr]
        if self.clock.monotonic() < self._hold_until:
            return f"node '{self.node}' stepped down; not campaigning for a moment"
        handover = await self.client.get(model.HANDOVER_KEY)
        if handover is not None:
            plan = model.loads(handover.value)
            someone_else = plan["to"] is not None and plan["to"] != self.node
            if plan["until"] > self.clock.time() and (plan["from"] == self.node or someone_else):
                return f"master hand-over to {plan['to'] or 'another candidate'} in progress; not campaigning"
        held = await self.lease.current()
        if held is not None and held[0] != self.node:
            self._free_since = None
            return f"node '{held[0]}' holds the master lease; following"  # a cheap read, no campaign
        if held is None and await self._deferring():
            return f"the master lease is free; node '{self.node}' holds the etcd leader, so it lets another " \
                   f"candidate try first"
        self._free_since = None
        sent = self.clock.monotonic()
        token = await self.lease.campaign(self.node)
        if token is None:
            current = await self.lease.current()
            if current is not None and current[0] == self.node and not self._took_over:
                # Our own lease from before a restart: the agent lock guarantees that
                # incarnation is dead, so end its lease instead of waiting out the TTL.
                self._took_over = True
                await self.client.lease_revoke(current[1].lease_id)
                if len(await self.client.member_list()) > 1:
                    # Let a candidate that stayed up take over: this agent has only just started.
                    self._hold_until = self.clock.monotonic() + TAKEOVER_HOLD_S
                return (f"revoked the master lease left by this node's previous agent "
                        f"(token {current[1].to_str()})")
            holder = current[0] if current else "nobody"
            return f"node '{holder}' holds the master lease; following"
        self._lease_deadline = self._deadline(sent)
        if self._catch_up is not None:
            revision = (await self.client.status())["revision"]
            if not await self._catch_up(revision, self.lease.ttl_s / 3):
                await self.lease.resign()
                return f"won the election but this node's replica is behind revision {revision}; stepped back"
            sent = self.clock.monotonic()
            if not await self.lease.keepalive():  # a short lease must not run out while the old jobs are read
                return "lost the master lease while catching up; following"
            self._lease_deadline = self._deadline(sent)
        self._say(f"acquired the master lease; node '{self.node}' is master (token {token.to_str()})")
        runner = JobRunner(self.node, self.client, self.lease, token, self.handlers, self._lock_keys, self.clock)
        self.token = token
        await runner.start()  # ends or re-queues the old master's jobs before anything new is submitted
        sent = self.clock.monotonic()
        if not await self.lease.keepalive():
            self.token = None
            await runner.stop()
            return "lost the master lease while taking over; following"
        self._lease_deadline = self._deadline(sent)
        self.master_since = self.clock.time()
        self.runner = runner
        self._hooks_task = asyncio.create_task(self._run_hooks_then_duties(), name="master-elected")
        self.became_master.set()
        return f"node '{self.node}' is master (token {token.to_str()})"

    def _deadline(self, sent: float) -> float:
        """Until when a renewal sent at `sent` (our monotonic clock) lets this node act as master."""
        return sent + self.lease.ttl_s - lease_margin_s(self.lease.ttl_s)

    async def _deferring(self) -> bool:
        """Whether to leave the free master lease to the other candidates for now (at most DEFER_S)."""
        now = self.clock.monotonic()
        if self._free_since is None:
            self._free_since = now
        if self._defer is None or now >= self._free_since + DEFER_S:
            return False
        return await self._defer()

    async def _run_hooks_then_duties(self) -> None:
        for hook in self.on_elected:
            try:
                await hook()
            except Exception:  # noqa: BLE001 - a failed announcement is retried by the duties
                log.exception("master election hook %s failed", getattr(hook, "__name__", hook))
        self._hooks_task = None
        self._launch_duties()

    def _launch_duties(self) -> None:
        """Start each duty whose previous run has ended (none while the election hooks run)."""
        if self._hooks_task is not None:
            return
        self.tick += 1
        for i, duty in enumerate(self.duties):
            task = self._duty_tasks.get(i)
            if task is None or task.done():
                self._duty_tasks[i] = asyncio.create_task(_run_duty(duty), name=f"duty-{_name(duty)}")

    def wake(self) -> None:
        """Run a pass now (renew, launch the duties) rather than at the next interval: something to act on."""
        self._wake.set()

    async def step_down(self, hold_s: float) -> None:
        """Planned hand-over: stop duties, end the lease, and stay out of the next election."""
        self._hold_until = self.clock.monotonic() + hold_s
        await self._demote("stepped down for a planned master hand-over")
        await self.lease.resign()
        self._wake.set()

    async def _demote(self, reason: str) -> None:
        tasks = [t for t in (self._hooks_task, *self._duty_tasks.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._hooks_task, self._duty_tasks = None, {}
        runner, self.runner, self.token = self.runner, None, None
        self.became_master.clear()
        if runner is not None:
            self._say(reason)
            await runner.stop()
        if reason == "agent stopping" and runner is not None:
            try:
                await self.lease.resign()
            except EtcdError:
                pass


async def _run_duty(duty: Duty) -> None:
    try:
        await duty()
    except EtcdError as exc:  # etcd busy or between leaders: the duty runs again on the next pass
        log.warning("master duty %s could not reach etcd this time: %s", _name(duty), exc)
    except Exception:  # noqa: BLE001 - one failing duty must not stop the others
        log.exception("master duty %s failed; please report this bug", _name(duty))


def _name(duty: Duty) -> str:
    return str(getattr(duty, "__name__", duty))
