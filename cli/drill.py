"""`corral drill ...`, and its `master-failover`: kill or freeze the master and check that nothing else moved.

This node's agent is the observer; if it is the master, it first hands the role
to another candidate (a planned failover, not measured). Each
round measures, from the crash order on:
  detect_s  until this node's replica no longer shows the old master's lease,
  elect_s   until a master with a newer fencing token is recorded,
  resume_s  until that master has run a probe job to success;
then checks that no instance was restarted, that every replica has the same
config checksum, that no job is stuck "running", that the old master came back
as a member, and that an order carrying the old master's token is refused by
every node.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from cli import drill_nodeloss
from cli.client import AgentClient, ApiError
from cli.common import Context, Subparsers, command, group, watch
from cli.drillkit import DrillAborted, replicas_agree, wait_for
from cli.render import table


def register(top: Subparsers) -> None:
    d = group(top, "drill", "failure drills on a live cluster")
    s = command(d, "master-failover", from_args, "kill or freeze the master and check that nothing else moved")
    s.add_argument("--rounds", type=int, default=1)
    s.add_argument("--mode", choices=("kill", "freeze"), default="kill",
                   help="kill: SIGKILL the master's agent (its supervisor restarts it); "
                        "freeze: SIGSTOP it past its lease, then SIGCONT")
    s.add_argument("--freeze-seconds", type=float, default=20.0, help="how long a freeze lasts")
    drill_nodeloss.add_commands(d)


def from_args(ctx: Context) -> int:
    return master_failover(ctx.client, ctx.args.rounds, ctx.args.mode, ctx.args.freeze_seconds, ctx.args.json)


def _instances(client: AgentClient) -> dict[str, tuple[Any, str]]:
    return {i["name"]: (i["pid"], i["status"]) for i in client.get("/v1/instances")["data"]}


def _one_round(client: AgentClient, mode: str, freeze_s: float, timeout_s: float) -> dict[str, Any]:
    def healthy() -> dict[str, Any] | None:
        info = client.get("/v1/cluster")["data"]
        return info if info["quorum"]["ok"] and info["master"] and info["token"] else None

    try:  # a previous round's old master may still be settling back in
        info = wait_for("a healthy cluster (quorum, a master and its token)", 30, healthy)
    except DrillAborted:
        info = client.get("/v1/cluster")["data"]
        raise DrillAborted(f"the cluster is not healthy enough for a drill (master {info['master']}, quorum "
                           f"{info['quorum']}); fix that first (`corral cluster verify`)") from None
    if info["master"] == info["this_node"]:
        # This node's agent observes the drill, so it must not be the one that dies:
        # hand the role over first (a planned failover, not part of the figures).
        print(f"  this node ('{info['master']}') is the master: handing over to another candidate first",
              file=sys.stderr, flush=True)
        client.post("/v1/cluster/master-failover", {})
        info = wait_for("another node to become master", timeout_s,
                        lambda: (c := healthy()) and c["master"] != c["this_node"] and c)
    old, old_token = info["master"], info["token"]
    before = _instances(client)
    crash_wall = time.time()
    t0 = time.monotonic()
    client.post("/v1/drill/crash", {"node": old, "mode": mode, "freeze_s": freeze_s})

    def cluster() -> dict[str, Any]:
        return client.get("/v1/cluster")["data"]

    wait_for("the old master's lease to end", timeout_s,
             lambda: (c := cluster())["master"] != old or c["token"] not in (None, old_token))
    detect_s = time.monotonic() - t0
    new = wait_for("a new master", timeout_s,
                   lambda: (c := cluster())["master"] and c["token"] not in (None, old_token) and c)
    elect_s = time.monotonic() - t0
    probe = wait_for("the new master to take a job", timeout_s, lambda: _try_probe(client))
    job = watch(client, probe, timeout_s, quiet=True)
    resume_s = time.monotonic() - t0
    rejoined = _rejoined(client, old, crash_wall, timeout_s)
    after = _instances(client)
    disturbed = sorted(n for n, (pid, status) in before.items() if after.get(n) != (pid, status))
    agree, sums = replicas_agree(client, 30)
    stuck = _stuck_jobs(client, crash_wall, 30)
    stale = client.post("/v1/drill/stale-order", {"token": old_token})["data"]
    accepted = [s["node"] for s in stale if s["accepted"]]
    unanswered = [f"{s['node']} ({s['message']})" for s in stale if not s["accepted"] and not s["refused"]]
    return {"old_master": old, "new_master": new["master"], "old_token": old_token, "new_token": new["token"],
            "detect_s": round(detect_s, 2), "elect_s": round(elect_s, 2), "resume_s": round(resume_s, 2),
            "probe_job": job["id"], "probe_ok": job["status"] == "success",
            "instances_disturbed": len(disturbed), "disturbed": disturbed, "replicas_agree": agree,
            "replica_checksums": sums, "stuck_jobs": stuck, "old_master_rejoined": rejoined,
            "stale_orders_accepted_by": accepted, "stale_orders_unanswered": unanswered}


def _try_probe(client: AgentClient) -> int | None:
    try:
        return int(client.post("/v1/cluster/probe")["data"]["job_id"])
    except ApiError:
        return None  # the new master is still settling in


def _rejoined(client: AgentClient, node: str, since_wall: float, timeout_s: float) -> bool:
    def back() -> bool:
        rows = {r["name"]: r for r in client.get("/v1/nodes")["data"]}
        row = rows.get(node)
        return bool(row and row["status"] == "online" and row["lease"] == "held"
                    and row["report_age_s"] is not None and row["report_age_s"] < time.time() - since_wall)
    try:
        return bool(wait_for(f"node '{node}' to rejoin", timeout_s, back))
    except DrillAborted:
        return False


def _stuck_jobs(client: AgentClient, before_wall: float, timeout_s: float) -> list[int]:
    deadline = time.monotonic() + timeout_s
    stuck: list[int] = []
    while time.monotonic() < deadline:
        jobs = client.get("/v1/jobs")["data"]
        stuck = [j["id"] for j in jobs if j["status"] in ("running", "queued") and j["created"] < before_wall]
        if not stuck:
            return []
        time.sleep(0.5)
    return stuck


def _failures(r: dict[str, Any]) -> list[str]:
    problems = []
    if not r["probe_ok"]:
        problems.append(f"the probe job {r['probe_job']} did not succeed")
    if r["instances_disturbed"]:
        problems.append(f"instances restarted or changed: {', '.join(r['disturbed'])}")
    if not r["replicas_agree"]:
        problems.append(f"replicas differ: {r['replica_checksums']}")
    if r["stuck_jobs"]:
        problems.append(f"jobs still running from before the crash: {r['stuck_jobs']}")
    if not r["old_master_rejoined"]:
        problems.append(f"the old master '{r['old_master']}' did not come back (is its agent supervised?)")
    if r["stale_orders_accepted_by"]:
        problems.append(f"an order with the old token was accepted by: {', '.join(r['stale_orders_accepted_by'])}")
    if r["stale_orders_unanswered"]:
        problems.append("the order with the old token was neither accepted nor refused for its token by: "
                        + ", ".join(r["stale_orders_unanswered"]))
    return problems


def master_failover(client: AgentClient, rounds: int, mode: str, freeze_s: float, as_json: bool,
                    timeout_s: float = 120.0) -> int:
    results: list[dict[str, Any]] = []
    try:
        for n in range(1, rounds + 1):
            if not as_json:
                print(f"round {n}/{rounds}: {mode} the master ...", flush=True)
            r = _one_round(client, mode, freeze_s, timeout_s)
            r["round"], r["failures"] = n, _failures(r)
            results.append(r)
            if not as_json:
                print(f"  '{r['old_master']}' -> '{r['new_master']}': detected {r['detect_s']} s, "
                      f"elected {r['elect_s']} s, duties resumed {r['resume_s']} s; "
                      + ("all checks passed" if not r["failures"] else "FAILED: " + "; ".join(r["failures"])),
                      flush=True)
    except DrillAborted as exc:
        print(f"error: drill stopped: {exc}", file=sys.stderr)
        if as_json:
            print(json.dumps({"rounds": results, "aborted": str(exc)}, indent=2))
        return 1
    ok = all(not r["failures"] for r in results)
    if as_json:
        print(json.dumps({"mode": mode, "rounds": results, "passed": ok}, indent=2, sort_keys=True))
    else:
        print(table(["ROUND", "FROM", "TO", "DETECT", "ELECT", "RESUME", "DISTURBED", "REPLICAS", "RESULT"],
                    [[r["round"], r["old_master"], r["new_master"], f"{r['detect_s']}s", f"{r['elect_s']}s",
                      f"{r['resume_s']}s", r["instances_disturbed"], "agree" if r["replicas_agree"] else "DIFFER",
                      "ok" if not r["failures"] else "FAILED"] for r in results]))
    return 0 if ok else 1
