"""Jobs: every change to the cluster is one, recorded in the replicated config.

A job record is {id, op, summary, args, status, created, started, ended, log,
progress, result, error, master, caller}: caller is who asked (hostagent.callers;
None for the master's own jobs). Only the master writes job records, each
write guarded by its lease, so a deposed master cannot rewrite history. A job
holds reservation keys (e.g. an instance name being created) from submit to
end, which makes duplicate submits fail at once instead of half-way.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any

from election.etcd import Compare, EtcdClient, Op
import election.lease
from election.lease import FencingToken, MasterLease
from kvm.hvparams import HvParamError

from hostagent import model
from hostagent import callers
from hostagent.clock import SYSTEM, Clock
from hostagent.errors import BadRequest, Conflict, NotFound, Reserved
from hostagent.units import format_mib

log = logging.getLogger(__name__)

RATE_WINDOW_S = 30.0  # an ETA follows the rate of the last half minute
RATE_MIN_SPAN_S = 3.0  # below this span of samples, the rate since the start counts
RATE_SAMPLES = 64
STATUSES = ("queued", "running", "success", "error", "canceled")
FINAL = ("success", "error", "canceled")


class JobFailed(Exception):
    """Raised by a job handler: the message is what the operator reads."""


class JobContext:
    """What a running job handler may do: log lines and report progress."""

    def __init__(self, runner: "JobRunner", job: dict[str, Any]) -> None:
        self._runner = runner
        self.job = job
        self.clock = runner.clock
        self.started = self.clock.monotonic()
        self._samples: dict[float, collections.deque[tuple[float, float]]] = {}  # per `started`: (time, done)

    async def log(self, message: str) -> None:
        log.info("job %d: %s", self.job["id"], message)
        self.job["log"].append([self._runner.clock.time(), message])
        await self._runner.save(self.job)

    async def progress(self, done: float, total: float, text: str, started: float, mib: bool = False) -> None:
        """Record percent and an ETA from the recent rate (`started` names the piece of work and when it began:
        a copy that slows down, or speeds up once another ends, gets an ETA that follows). `mib`: done and
        total are MiB copied, and the text says what is left and the current rate."""
        text, eta = self.measure(done, total, text, started, mib, self.clock.monotonic())
        percent = 100.0 * done / total if total else 100.0
        self.job["progress"] = {"percent": round(percent, 1), "text": text,
                                "eta_s": None if eta is None else round(eta, 1)}
        await self._runner.save(self.job)

    def measure(self, done: float, total: float, text: str, started: float, mib: bool,
                now: float) -> tuple[str, float | None]:
        """The text (with what is left and the current rate, for MiB) and the ETA of one more sample."""
        samples = self._samples.setdefault(started, collections.deque(maxlen=RATE_SAMPLES))
        samples.append((now, done))
        if mib:
            rate = recent_rate(list(samples), now)
            text += f": {format_mib(int(max(total - done, 0)))} left" + (f" at {rate:.0f} MiB/s" if rate else "")
        return text, recent_eta(list(samples), total, started, now)

    async def waiting(self, text: str, eta_s: float | None) -> None:
        """While the job waits for work that measures its own ETA (a copy to be in sync): that text and ETA,
        the percent where it was."""
        progress = self.job.get("progress") or {"percent": 0.0}
        self.job["progress"] = {**progress, "text": text, "eta_s": None if eta_s is None else round(eta_s, 1)}
        await self._runner.save(self.job)


def recent_rate(samples: list[tuple[float, float]], now: float) -> float | None:
    """Units per second over the last RATE_WINDOW_S of (time, done) samples; None below RATE_MIN_SPAN_S."""
    window = [(st, sd) for st, sd in samples if now - st <= RATE_WINDOW_S]
    (t0, d0), (t, done) = window[0], window[-1]
    return (done - d0) / (t - t0) if t - t0 >= RATE_MIN_SPAN_S else None


def recent_eta(samples: list[tuple[float, float]], total: float, started: float, now: float) -> float | None:
    """Seconds left at the rate of the last RATE_WINDOW_S of (time, done) samples; the rate since `started`
    while the window is too short to say; None while nothing is done."""
    done = samples[-1][1]
    rate = recent_rate(samples, now)
    if rate:
        return (total - done) / rate
    if done <= 0:
        return None
    return (now - started) / done * (total - done)


Handler = Callable[[JobContext, dict[str, Any]], Awaitable[dict[str, Any] | None]]


@contextlib.contextmanager
def as_job_errors() -> Iterator[None]:
    """Inside a job, a missing or busy object is the operator's news, not a bug."""
    try:
        yield
    except (NotFound, Conflict, BadRequest, HvParamError) as exc:
        raise JobFailed(str(exc)) from exc
    except election.lease.NotMaster as exc:
        raise JobFailed(f"this node stopped being master during the job ({exc})") from exc


def operator_errors(handler: Callable[..., Awaitable[dict[str, Any]]]) -> Callable[..., Awaitable[dict[str, Any]]]:
    """`as_job_errors` around a handler method."""
    @functools.wraps(handler)
    async def wrapped(self: Any, ctx: JobContext, args: dict[str, Any]) -> dict[str, Any]:
        with as_job_errors():
            return await handler(self, ctx, args)
    return wrapped


def job_errors(handler: Handler) -> Handler:
    """`operator_errors` for a bound handler."""
    @functools.wraps(handler)
    async def wrapped(ctx: JobContext, args: dict[str, Any]) -> dict[str, Any]:
        with as_job_errors():
            return await handler(ctx, args) or {}
    return wrapped


class JobRunner:
    """Runs the master's jobs; exists only while this node holds the master lease."""

    def __init__(self, node: str, client: EtcdClient, lease: MasterLease, token: FencingToken,
                 handlers: dict[str, Handler], lock_keys: Callable[[dict[str, Any]], Sequence[str]],
                 clock: Clock = SYSTEM) -> None:
        self._node = node
        self.clock = clock
        self._client = client
        self._lease = lease
        self._token = token
        self._handlers = handlers
        self._lock_keys = lock_keys
        self._locks: dict[str, asyncio.Lock] = {}
        self._active: dict[int, tuple[asyncio.Task[None], dict[str, Any]]] = {}
        self._cancel_requested: set[int] = set()
        self._ended: dict[str, float] = {}  # lock key -> when (wall clock) the last job holding it ended
        self._next_id = 1

    async def start(self) -> None:
        """Take over jobs left by an earlier master: run queued ones, end running ones."""
        kvs, _ = await self._client.get_prefix(model.JOBS)
        archived = await self._client.last_key(model.JOBS_ARCHIVE)  # job ids are never used twice
        if archived is not None:
            self._next_id = max(self._next_id, int(archived.rsplit("/", 1)[-1]) + 1)
        for kv in kvs:
            job = model.loads(kv.value)
            self._next_id = max(self._next_id, job["id"] + 1)
            if job["status"] == "running":
                job["log"].append([self.clock.time(), f"the master running this job ({job.get('master')}) "
                                                "stopped before it finished; ended by the new master "
                                                f"'{self._node}'. Re-run the command: orders are idempotent."])
                await self._finish(job, "error", error="interrupted by a master change")
            elif job["status"] == "queued":
                self._spawn(job)

    async def stop(self) -> None:
        """Master role lost: abandon the jobs here; the next master ends or runs them."""
        tasks = [task for task, _ in self._active.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def running_jobs(self) -> list[int]:
        return sorted(i for i, (_, job) in self._active.items() if job["status"] == "running")

    def active(self, op: str) -> list[dict[str, Any]]:
        """The queued and running jobs of `op` (their records as this runner holds them; do not change them)."""
        return [job for _, job in self._active.values() if job["op"] == op and job["status"] in ("queued", "running")]

    def busy(self, lock_key: str) -> bool:
        """Whether a queued or running job holds or waits for `lock_key`."""
        return any(lock_key in self._lock_keys(job) for _, job in self._active.values())

    async def cancel(self, job_id: int) -> None:
        """Cancel a job that has not started; a running job is never interrupted half-way."""
        if job_id not in self._active:
            kv = await self._client.get(model.job_key(job_id))
            if kv is None:
                raise NotFound(f"no job {job_id}")
            raise Conflict(f"job {job_id} has already ended ({model.loads(kv.value)['status']})")
        task, job = self._active[job_id]
        if job["status"] in ("success", "error", "canceled"):  # ended; its task is being let go of
            raise Conflict(f"job {job_id} has already ended ({job['status']})")
        if job["status"] != "queued":
            raise Conflict(f"job {job_id} is already running and cannot be canceled safely; "
                           f"wait for it: `corral job watch {job_id}`")
        self._cancel_requested.add(job_id)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    async def submit(self, op: str, args: dict[str, Any], summary: str,
                     reservations: Sequence[str] = (),
                     must_not_exist: Sequence[str] = (),
                     must_exist: Sequence[str] = ()) -> int:
        """Create a queued job atomically with its reservations; raise Conflict on a collision."""
        if op not in self._handlers:
            raise ValueError(f"unknown job operation {op!r}")
        job_id = self._next_id
        self._next_id += 1
        job = {"id": job_id, "op": op, "summary": summary, "args": args, "status": "queued",
               "created": self.clock.time(), "started": None, "ended": None, "log": [],
               "progress": None, "result": None, "error": None, "master": self._node,
               "caller": callers.recorded(), "reservations": list(reservations)}
        compares = [Compare.create_revision(k, "=", 0)
                    for k in (model.job_key(job_id), *reservations, *must_not_exist)]
        compares += [Compare.create_revision(k, ">", 0) for k in must_exist]
        ops = [Op.put(model.job_key(job_id), model.dumps(job))]
        ops += [Op.put(k, model.dumps({"job": job_id})) for k in reservations]
        result = await self._lease.guarded_txn(self._token, ops, extra_compares=compares)
        if not result.succeeded:
            raise Conflict(await self._explain_conflict(reservations, must_not_exist, must_exist))
        self._spawn(job)
        return job_id

    async def _explain_conflict(self, reservations: Sequence[str], must_not_exist: Sequence[str],
                                must_exist: Sequence[str]) -> str:
        for key in reservations:
            kv = await self._client.get(key)
            if kv is not None:
                raise Reserved(f"job {model.loads(kv.value)['job']} is already working on "
                               f"'{key.rsplit('/', 1)[-1]}'", key)
        for key in must_not_exist:
            if await self._client.get(key) is not None:
                return f"'{key.rsplit('/', 1)[-1]}' already exists"
        for key in must_exist:
            if await self._client.get(key) is None:
                return f"'{key.rsplit('/', 1)[-1]}' does not exist"
        return "the config changed while submitting; try again"

    async def save(self, job: dict[str, Any]) -> None:
        await self._lease.guarded_txn(self._token, [Op.put(model.job_key(job["id"]), model.dumps(job))])

    def _spawn(self, job: dict[str, Any]) -> None:
        task = asyncio.create_task(self._run(job), name=f"job-{job['id']}")
        self._active[job["id"]] = (task, job)
        task.add_done_callback(lambda _: self._done(job))

    def _done(self, job: dict[str, Any]) -> None:
        self._active.pop(job["id"], None)
        now = self.clock.time()
        for key in self._lock_keys(job):
            self._ended[key] = now

    def ended_at(self, lock_key: str) -> float:
        """When the last job holding `lock_key` ended (0.0: none since this master began): what it did may
        not show in a node report made before."""
        return self._ended.get(lock_key, 0.0)

    async def _run(self, job: dict[str, Any]) -> None:
        # This task's own context: the events (and sub-jobs) of a job taken over from an earlier master
        # name its caller too, not only those of a job spawned in its submitter's context.
        callers.CURRENT.set(callers.from_record(job.get("caller")))
        keys = sorted(self._lock_keys(job))
        locks = [self._locks.setdefault(k, asyncio.Lock()) for k in keys]
        held: list[asyncio.Lock] = []
        try:
            for lock in locks:  # sorted order: no deadlock between jobs
                await lock.acquire()
                held.append(lock)
        except asyncio.CancelledError:
            for lock in held:
                lock.release()
            if job["id"] in self._cancel_requested:
                self._cancel_requested.discard(job["id"])
                job["log"].append([self.clock.time(), "canceled before it started"])
                await self._finish(job, "canceled", error="canceled by the operator")
                return
            raise
        try:
            job["status"] = "running"
            job["started"] = self.clock.time()
            await self.save(job)
            ctx = JobContext(self, job)
            try:
                result = await self._handlers[job["op"]](ctx, job["args"])
            except JobFailed as exc:
                job["log"].append([self.clock.time(), f"failed: {exc}"])
                await self._finish(job, "error", error=str(exc))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - one broad catch per job, reported
                log.exception("job %d (%s) crashed; please report this bug", job["id"], job["op"])
                job["log"].append([self.clock.time(), f"internal error: {exc!r} (please report this bug)"])
                await self._finish(job, "error", error=f"internal error: {exc!r}")
            else:
                await self._finish(job, "success", result=result)
        finally:
            for lock in locks:
                lock.release()

    async def _finish(self, job: dict[str, Any], status: str, *, error: str | None = None,
                      result: dict[str, Any] | None = None) -> None:
        job.update(status=status, ended=self.clock.time(), error=error, result=result)
        if job.get("progress") and status == "success":
            job["progress"] = {**job["progress"], "percent": 100.0, "eta_s": 0}
        ops = [Op.put(model.job_key(job["id"]), model.dumps(job))]
        ops += [Op.delete(k) for k in job.get("reservations", [])]
        await self._lease.guarded_txn(self._token, ops)
        level = logging.INFO if status == "success" else logging.WARNING
        log.log(level, "job %d (%s) ended: %s%s", job["id"], job["summary"], status,
                f" ({error})" if error else "")


def lock_keys(job: dict[str, Any]) -> list[str]:
    """Jobs on the same instance run one at a time; cluster-wide jobs take the cluster lock."""
    if job["op"] == "cluster.balance":  # every instance the balance moves, until it ends
        return ["cluster", *(f"instance/{name}" for name in job["args"]["instances"])]
    if job["op"] == "instance.moves":
        return [f"instance/{name}" for name in job["args"]["instances"]]
    if job["op"].startswith("cluster."):
        return ["cluster"]
    args = job["args"]
    if job["op"] == "backup.remove":
        return [f"backup/{args['node']}:{args['path']}"]  # the backup, not its instance (which may be gone)
    if job["op"] in ("node.modify", "node.migrate"):
        return [f"node/{args['node']}"]
    if job["op"] == "tags.change":
        return [f"tags/{args['kind']}/{args['target']}"]
    if job["op"] in ("instance.query-data", "node.query-storage"):  # reads: they wait for no change in progress
        return [f"query/{job['id']}"]
    if job["op"] == "node.evacuate":  # the node, and every instance the evacuation moves, until it ends
        return [f"node/{args['node']}", *(f"instance/{name}" for name in args["instances"])]
    return [f"instance/{args.get('name') or args['instance']['name']}"]
