"""`corral instance start|stop|reboot --all | --node N | --tag T | --owner O`: many instances, one job each.

The jobs run a few at a time (--parallel, default 4), most important first
(restart priority, then name), so a node's worth of guests does not all boot
at once; each instance gets one summary line, and the exit status is non-zero
if any failed.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any
from urllib.parse import quote, urlencode

from cli.client import AgentClient, ApiError

PRIORITY_ORDER = {"critical": 0, "high": 1, "normal": 2, "low": 3}
POLL_S = 0.5
DEFAULT_PARALLEL = 4


class NothingSelected(Exception):
    """The selectors match no instance."""


def add_selectors(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--all", action="store_true", help="every instance")
    parser.add_argument("--node", dest="on_node", metavar="NODE", help="every instance whose primary is NODE")
    parser.add_argument("--tag", metavar="TAG", help="every instance with TAG")
    parser.add_argument("--owner", metavar="OWNER", help="every instance of OWNER")
    parser.add_argument("--parallel", type=int, default=DEFAULT_PARALLEL, metavar="N",
                        help=f"jobs at once when several instances are chosen (default {DEFAULT_PARALLEL})")


def selected(args: argparse.Namespace) -> bool:
    return bool(args.all or args.on_node or args.tag or args.owner)


def choose(client: AgentClient, args: argparse.Namespace) -> list[str]:
    """The chosen instances, most important first."""
    query = {k: v for k, v in (("tag", args.tag), ("owner", args.owner)) if v}
    rows = client.get("/v1/instances" + ("?" + urlencode(query) if query else ""))["data"]
    if args.on_node:
        rows = [r for r in rows if r["primary_node"] == args.on_node]
    if not rows:
        raise NothingSelected("no instance matches " + ", ".join(
            f"--{k} {v}" for k, v in (("node", args.on_node), ("tag", args.tag), ("owner", args.owner)) if v)
            if not args.all else "no instance in the cluster")
    rows.sort(key=lambda r: (PRIORITY_ORDER.get(r.get("priority", "normal"), 2), r["name"]))
    return [r["name"] for r in rows]


def run(client: AgentClient, action: str, names: list[str], body: dict[str, Any], parallel: int,
        timeout_s: float, as_json: bool) -> int:
    """One job per instance, at most `parallel` at a time; one line each; 1 if any failed."""
    waiting = list(names)
    running: dict[str, int] = {}
    results: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout_s
    while waiting or running:
        while waiting and len(running) < max(1, parallel):
            name = waiting.pop(0)
            try:
                job_id = client.post(f"/v1/instances/{quote(name, safe='')}/{action}", body)["data"]["job_id"]
                running[name] = int(job_id)
            except ApiError as exc:
                results[name] = _refused(action, exc)
                _line(name, results[name], as_json)
        for name, job_id in list(running.items()):
            job = client.get(f"/v1/jobs/{job_id}")["data"]
            if job["status"] in ("success", "error", "canceled"):
                del running[name]
                results[name] = {"result": "done" if job["status"] == "success" else "failed",
                                 "job": job_id, "error": job.get("error")}
                _line(name, results[name], as_json)
        if time.monotonic() > deadline:
            for name, job_id in running.items():
                results[name] = {"result": "failed", "job": job_id, "error": "still running: `corral job watch`"}
                _line(name, results[name], as_json)
            break
        if running:
            time.sleep(POLL_S)
    failed = sorted(n for n, r in results.items() if r["result"] == "failed")
    if not as_json:
        print(f"{action}: {len(names) - len(failed)} of {len(names)} instance(s) done"
              + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def _refused(action: str, exc: ApiError) -> dict[str, Any]:
    """A refusal at submit: nothing to do (already in that state) is not a failure."""
    already = exc.status == 409 and ("already running" in exc.message if action == "start" else
                                     "is not running" in exc.message)
    return {"result": "nothing to do" if already else "failed", "error": exc.message}


def _line(name: str, result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps({"name": name, **result}, sort_keys=True), flush=True)
        return
    job = f" (job {result['job']})" if result.get("job") else ""
    why = f": {result['error']}" if result.get("error") else ""
    print(f"{name}: {result['result']}{job}{why}", flush=True)
