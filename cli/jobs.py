"""Waiting for a job: stream its log lines and progress until it ends."""

from __future__ import annotations

import sys
import time
from typing import Any

from cli.client import AgentClient, ApiError
from cli.render import clock, duration

POLL_S = 0.2
APPEAR_S = 5.0
EXIT_JOB_FAILED = 1


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
                    text = (f"  {progress['percent']:5.1f}% {progress['text']} "
                            f"ETA {duration(progress.get('eta_s'))}")
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


def finish(job: dict[str, Any]) -> int:
    if job["status"] == "success":
        return 0
    print(f"error: job {job['id']} ({job['summary']}) {job['status']}: {job.get('error')}", file=sys.stderr)
    return EXIT_JOB_FAILED
