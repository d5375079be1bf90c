"""What every command module shares: the parent options, the handler's context, waiting for jobs, input errors.

A command is a subparser whose `run` default is its handler (`command()`), so
a command's arguments, its call and its rendering sit together in its group's
module; cli.main only builds the parser from the groups and calls `run`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cli.client import AgentClient, ApiError
from cli.render import clock, duration, warn_if_stale

EXIT_BAD_INPUT = 2
EXIT_JOB_FAILED = 1
POLL_S = 0.2
APPEAR_S = 5.0

COMMON = argparse.ArgumentParser(add_help=False)
COMMON.add_argument("--socket", default=argparse.SUPPRESS,
                    help="agent socket (default $CORRAL_SOCKET or /run/corral/agent.sock)")
COMMON.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
JOBOPTS = argparse.ArgumentParser(add_help=False)
JOBOPTS.add_argument("--submit", action="store_true", help="print the job id and return at once")
JOBOPTS.add_argument("--timeout", type=float, default=3600, help="stop waiting for the job after S seconds")

Subparsers = argparse._SubParsersAction


class UsageError(Exception):
    """Bad input found before (or instead of) asking the agent: exit 2."""


@dataclass(frozen=True)
class Context:
    """What a handler works with: the parsed arguments and the agent."""

    args: argparse.Namespace
    client: AgentClient

    def out(self, answer: dict[str, Any], human: Callable[[Any], None]) -> int:
        """The answer's data as JSON with --json, else as `human` prints it (after a stale-replica warning)."""
        if self.args.json:
            print(json.dumps(answer["data"], indent=2, sort_keys=True))
        else:
            warn_if_stale(answer)
            human(answer["data"])
        return 0

    def job(self, answer: dict[str, Any]) -> int:
        """A submitted job: its id with --submit, else its log until it ends (its record with --json)."""
        job_id = answer["data"]["job_id"]
        if self.args.submit:
            print(json.dumps({"job_id": job_id}) if self.args.json else job_id)
            return 0
        return self.follow(job_id)

    def follow(self, job_id: int) -> int:
        job = watch(self.client, job_id, self.args.timeout, quiet=self.args.json)
        if self.args.json:
            print(json.dumps(job, indent=2, sort_keys=True))
        return finish(job)


Handler = Callable[[Context], int]


def group(top: Subparsers, name: str, help_: str) -> Subparsers:
    """A command group (`corral NAME CMD`); its commands are added with `command()`."""
    g = top.add_parser(name, help=help_, parents=[COMMON])
    return g.add_subparsers(dest="cmd", required=True)


def command(sub: Subparsers, name: str, run: Handler, help_: str, job: bool = False) -> argparse.ArgumentParser:
    """A command run by `run`; `job` adds --submit and --timeout (it waits for a job)."""
    s = sub.add_parser(name, help=help_, parents=[COMMON, JOBOPTS] if job else [COMMON])
    s.set_defaults(run=run)
    return s


def kv_list(values: list[str] | None, what: str) -> dict[str, str]:
    """Parse repeated 'k=v,k2=v2' options into one dict."""
    out: dict[str, str] = {}
    for value in values or []:
        for part in value.split(","):
            if "=" not in part or not part.split("=", 1)[0]:
                raise UsageError(f"{what}: {part!r} is not NAME=VALUE (e.g. accel=tcg)")
            key, val = part.split("=", 1)
            out[key.strip()] = val.strip()
    return out


def watch(client: AgentClient, job_id: int, timeout_s: float, quiet: bool = False) -> dict[str, Any]:
    """Print new log lines as they appear; return the final job record."""
    shown = 0
    progress_len = 0
    tty = sys.stderr.isatty()
    deadline = time.monotonic() + timeout_s
    appear_by = time.monotonic() + APPEAR_S
    try:
        while True:
            try:
                job = client.get(f"/v1/jobs/{job_id}")["data"]
            except ApiError as exc:
                if exc.status != 404 or time.monotonic() > appear_by:
                    raise
                job = None  # submitted on another node: give the replica a moment
            if job is not None:
                for t, line in job["log"][shown:]:
                    if progress_len:
                        sys.stderr.write("\r" + " " * progress_len + "\r")
                        progress_len = 0
                    if not quiet:
                        print(f"{clock(t)} {line}", flush=True)
                shown = len(job["log"])
                progress = job.get("progress")
                if tty and progress and job["status"] == "running":
                    text = progress_line(progress)
                    sys.stderr.write("\r" + text.ljust(progress_len))
                    sys.stderr.flush()
                    progress_len = len(text)
                if job["status"] in ("success", "error", "canceled"):
                    if progress_len:
                        sys.stderr.write("\n")
                    return job
            if time.monotonic() > deadline:
                print(f"stopped waiting after {timeout_s:.0f} s; job {job_id} goes on: "
                      f"`corral job watch {job_id}`", file=sys.stderr)
                raise SystemExit(EXIT_JOB_FAILED)
            time.sleep(POLL_S)
    except KeyboardInterrupt:
        print(f"\nstopped watching; job {job_id} goes on: `corral job watch {job_id}`", file=sys.stderr)
        raise SystemExit(130) from None


def progress_line(progress: dict[str, Any]) -> str:
    """A running job's progress as `watch` shows it; no ETA yet only while nothing is done (the master
    extrapolates one from the first progress on)."""
    eta = progress.get("eta_s")
    return (f"  {progress['percent']:5.1f}% {progress['text']} "
            + (f"ETA {duration(eta)}" if eta is not None else "ETA being measured"))


def finish(job: dict[str, Any]) -> int:
    if job["status"] == "success":
        return 0
    print(f"error: job {job['id']} ({job['summary']}) {job['status']}: {job.get('error')}", file=sys.stderr)
    return EXIT_JOB_FAILED
