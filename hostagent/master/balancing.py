"""`corral cluster balance`: the balancer's plan (hostagent.master.decide.balance) carried out as one job; and
the moves of one instance asked as one job (`instance.moves`: a job of hbal -X through LUXI, hostagent.luxi).

Each step is an instance job itself (migrate, failover, replace-secondary), checks included, run through the
same step context as an evacuation, so the job's log and progress cover them all and the first failure stops
the rest with what was done and what was not. A switchover needs the instance's copy in sync: after a step
that made a new copy (a replace-secondary, or a migration of a `mirror` instance, whose old primary gets a new
copy), the next switchover of that instance waits for it, bounded by the disk's size at a slow rate.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from hostagent import model
from hostagent.master.decide import replicas
from hostagent.master.decide.evacuation import Step
from hostagent.errors import BadRequest
from hostagent.master.jobs import Handler, JobContext, JobFailed
from hostagent.master.moves import Moves
from hostagent.master.store import Store
from hostagent.status import copy_eta_of, disk_copy_words, report_fresh

SYNC_WAIT_BASE_S = 600.0
SYNC_FLOOR_MIB_S = 10.0  # a copy slower than this over a LAN means something is wrong: stop waiting
SYNC_POLL_S = 2.0


class StepContext(JobContext):
    """An instance job run as one step of a larger job (evacuation, balance): same log, its progress a slice of
    the whole.

    It has no runner of its own: everything it records goes through the parent job's context.
    """

    def __init__(self, parent: JobContext, index: int, count: int) -> None:
        self.job = parent.job
        self.started = parent.started
        self._parent = parent
        self._index = index
        self._count = count
        self._samples = {}
        self.clock = parent.clock

    async def log(self, message: str) -> None:
        await self._parent.log(message)

    async def waiting(self, text: str, eta_s: float | None) -> None:
        await self._parent.waiting(f"step {self._index} of {self._count}: {text}", eta_s)

    async def progress(self, done: float, total: float, text: str, started: float, mib: bool = False) -> None:
        text, _ = self.measure(done, total, text, started, mib, self.clock.monotonic())
        fraction = min(1.0, done / total) if total else 1.0
        await self._parent.progress(self._index - 1 + fraction, self._count,
                                    f"step {self._index} of {self._count}: {text}", self._parent.started)


async def run_steps(ctx: JobContext, instance_jobs: Mapping[str, Handler], steps: list[Step],
                    so_far: Callable[[int], str],
                    before: Callable[[Step, str], Awaitable[None]] | None = None) -> None:
    """Each step is the instance job itself (its checks included); the first failure stops the rest, saying
    `so_far(index)`: what was done and what was not. `before` runs ahead of each step (a wait it needs)."""
    for index, step in enumerate(steps, 1):
        where = f"step {index} of {len(steps)}"
        await ctx.progress(index - 1, len(steps), f"{where}: {step.describe()}", ctx.started)
        if before is not None:
            await before(step, where)
        await ctx.log(f"{where}: {step.describe()}")
        try:
            await instance_jobs[step.op](StepContext(ctx, index, len(steps)), step.job_args())
        except JobFailed as exc:
            raise JobFailed(f"{where} failed ({step.describe()}): {exc}. {so_far(index)}") from exc
        except Exception:
            await ctx.log(f"{where} failed. {so_far(index)}")
            raise


class Balancing:
    def __init__(self, store: Store, moves: Moves, instance_jobs: Mapping[str, Handler]) -> None:
        self.store = store
        self.moves = moves
        self.instance_jobs = instance_jobs

    async def submit(self, steps: list[Step], plan: dict[str, Any]) -> int:
        """One job for the whole plan; `plan` (its scores and moves) is kept in the job for the record."""
        names = sorted({s.instance for s in steps})
        return await self.store.role.require().submit(
            "cluster.balance", {"steps": [s.to_dict() for s in steps], "instances": names,
                                "initial_score": plan["initial_score"], "final_score": plan["final_score"]},
            f"balance the cluster: {len(plan['moves'])} move(s), score {plan['initial_score']} -> "
            f"{plan['final_score']}", reservations=[model.reservation_key("balance", "cluster-balance")])

    async def submit_moves(self, name: str, asked: Any) -> int:
        """The moves of one instance (migrate, failover, replace-secondary to a node), one after the other as
        one job, each switchover once the copy it needs is in sync; checked as far as the first step can be."""
        inst = await self.store.instance(name)
        steps = planned_moves(inst, asked, {n["name"] for n in await self.store.prefix(model.NODES)})
        first = steps[0]
        if first.action in ("migrate", "failover"):
            await self.moves.check(name, "live-migrate" if first.action == "migrate" else "fail over")
        return await self.store.role.require().submit(
            "instance.moves", {"steps": [s.to_dict() for s in steps], "instances": [name]},
            f"move instance '{name}': " + ", then ".join(s.action for s in steps),
            must_exist=[model.instance_key(name)])

    def handlers(self) -> dict[str, Handler]:
        return {"cluster.balance": self._job, "instance.moves": self._job_moves}

    async def _job_moves(self, ctx: JobContext, args: dict[str, Any]) -> dict[str, Any]:
        steps = [Step.from_dict(s) for s in args["steps"]]

        async def before(step: Step, where: str) -> None:
            if step.action in ("migrate", "failover"):
                await self._wait_in_sync(ctx, step.instance, where)
        await run_steps(ctx, self.instance_jobs, steps, lambda index: _moved_so_far(steps, index), before)
        return {"name": steps[0].instance, "steps": len(steps)}

    async def _job(self, ctx: JobContext, args: dict[str, Any]) -> dict[str, Any]:
        steps = [Step.from_dict(s) for s in args["steps"]]
        await ctx.log(f"balancing the cluster in {len(steps)} step(s): hbal's score {args['initial_score']} "
                      f"should end at {args['final_score']}")
        async def before(step: Step, where: str) -> None:
            if step.action in ("migrate", "failover"):
                await self._wait_in_sync(ctx, step.instance, where)
        await run_steps(ctx, self.instance_jobs, steps, lambda index: _so_far(steps, index), before)
        await ctx.log(f"the cluster is balanced: {len(steps)} step(s) done (`corral cluster balance --dry-run` "
                      "plans what is left, if anything)")
        return {"steps": len(steps), "initial_score": args["initial_score"], "final_score": args["final_score"]}

    async def _wait_in_sync(self, ctx: JobContext, name: str, where: str) -> None:
        """Until the instance's copy is in sync (a switchover needs it), bounded by its size. The job holds the
        instance, so the mirror duty leaves it alone: this judges the primary's reports as that duty does."""
        inst = await self.store.instance(name)
        size = sum(int(d["size_mib"]) for d in inst["disks"])
        bound = SYNC_WAIT_BASE_S + size / SYNC_FLOOR_MIB_S
        clock, said = self.store.clock, False
        deadline = clock.monotonic() + bound
        while True:
            record, revision = await self.moves.replica(name)
            report = await self.store.get(model.report_key(inst["primary_node"])) or {}
            if report_fresh(report, clock.time()):
                states = report.get("mirrors", {}).get(name, [])
                judged = replicas.judge(record, states, float(report.get("time", 0)), clock.time())
                if judged is not None and await self.moves.put_if_unchanged(name, judged, revision):
                    record = judged
            if record.get("in_sync"):
                if said:
                    await ctx.log(f"{where}: the copy of '{name}' is in sync")
                return
            if report_fresh(report, clock.time()) and name not in report.get("instances", {}):
                raise JobFailed(f"{where}: instance '{name}' is stopped, and a stopped instance's new copy is made "
                                f"only once it runs: start it (`corral instance start {name}`) and run `corral "
                                "cluster balance` again")
            if clock.monotonic() >= deadline:
                raise JobFailed(f"{where}: the copy of '{name}' was still not in sync after {bound:.0f} s "
                                f"({record.get('why') or 'no reason recorded'}); nothing more was moved")
            if not said:
                await ctx.log(f"{where}: waiting for the copy of '{name}' to be in sync before it switches "
                              "nodes (`corral instance info` shows the progress)")
                said = True
            states = report.get("mirrors", {}).get(name, []) if report_fresh(report, clock.time()) else []
            if states:  # the copy's own figures: percent, what is left, its rate and ETA
                verdict, eta = copy_eta_of(states)
                words = "; ".join(f"disk {s.get('index', '?')} {disk_copy_words(s)}" for s in states)
                await ctx.waiting(f"{where}: copy of '{name}': {words}" + (f" ({verdict})" if eta is None else ""),
                                  eta)
            await asyncio.sleep(SYNC_POLL_S)


MAX_MOVES = 8
MOVE_ACTIONS = ("migrate", "failover", "replace-secondary")


def planned_moves(inst: Mapping[str, Any], asked: Any, nodes: set[str]) -> list[Step]:
    """Steps for asked moves [{action, node}] of one instance, each from where the previous one leaves it;
    BadRequest names what is wrong. A migrate or failover goes to the secondary (`node`, if given, must be it);
    a replace-secondary to `node`, a node other than both of the instance's."""
    if not isinstance(asked, list) or not 1 <= len(asked) <= MAX_MOVES:
        raise BadRequest(f"steps must be a list of 1 to {MAX_MOVES} moves, not {str(asked)[:100]}")
    name, primary, secondary = str(inst["name"]), str(inst["primary_node"]), inst.get("secondary_node")
    steps = []
    for n, move in enumerate(asked, 1):
        action, node = (move.get("action"), move.get("node")) if isinstance(move, dict) else (None, None)
        if action not in MOVE_ACTIONS:
            raise BadRequest(f"step {n}: action {action!r} is not one of {', '.join(MOVE_ACTIONS)}")
        if node is not None and (not isinstance(node, str) or node not in nodes):
            raise BadRequest(f"step {n}: node {node!r} is not a node of the cluster")
        if not secondary:
            raise BadRequest(f"instance '{name}' has no secondary node: it has no moves of this kind")
        if action == "replace-secondary":
            if node is None or node in (primary, secondary):
                raise BadRequest(f"step {n}: replace-secondary of '{name}' needs a node other than '{primary}' and "
                                 f"'{secondary}'")
            steps.append(Step(action, name, str(secondary), node))
            secondary = node
        else:
            if node is not None and node != secondary:
                raise BadRequest(f"step {n}: '{name}' can {action} to its secondary '{secondary}' only, not '{node}'")
            steps.append(Step(action, name, primary, str(secondary)))
            primary, secondary = str(secondary), primary
    return steps


def _moved_so_far(steps: list[Step], failed: int) -> str:
    done = ", ".join(s.describe() for s in steps[:failed - 1]) or "nothing"
    return f"Done: {done}. The instance is whole where it is; nothing after this step was done"


def _so_far(steps: list[Step], failed: int) -> str:
    """What a balance stopped at the step `failed` (1-based) did, and what it left."""
    done = ", ".join(f"{s.action} '{s.instance}'" for s in steps[:failed - 1]) or "nothing"
    left = ", ".join(f"{s.action} '{s.instance}'" for s in steps[failed - 1:])
    return (f"Done: {done}. Not done: {left}. Every instance is whole where it is; fix the cause and run "
            "`corral cluster balance` again (it plans from where the cluster is now)")
