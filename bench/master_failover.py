"""Benchmark: SIGKILL the master's agent, then time detection, election and resumed writes on a survivor.

Forms a cluster of --nodes nodes on 127.0.0.1..N, every node a master candidate
(etcd member), with report_interval_s = 1 from the harness but the production
defaults of the master lease TTL and etcd's Raft timing (hostagent.config): the
harness shortens the lease to 5 s for the tests, which is not what a cluster runs,
so its line is taken out of every node's agent.toml (the timing used is printed).
Then, --kills times: ask who the master is, SIGKILL its agent (its etcd and
Serf get SIGTERM through their parent-death signal), and watch from one
surviving node, the observer. All times count from the SIGKILL:

  detection  first `corral cluster info --json` on the observer whose "master"
             is no longer the killed node (null, or another node). The observer
             reads the master from its replica of /corral/master, which etcd
             deletes when the dead master's lease expires (its TTL less the
             time since its last renewal; etcd re-grants every lease a full TTL
             plus one election timeout when its own Raft leader changes, so
             killing the etcd leader's node too makes this longer).
  election   first such answer naming a surviving node as master.
  resume     first `corral user add benchK --role read` on the observer that
             exits 0. The first attempt starts as soon as detection is seen
             (what an operator retrying through the gap gets); each failure is
             retried at once. Includes that write's own round trip.

Each CLI answer is stamped when the command returns, so CLI figures are upper
bounds with a resolution of one `cluster info` call (printed as "poll").
"replica" columns give the same two events read directly from the observer's
SQLite replica every 10 ms, which separates etcd/mirror time from CLI time.

The summary splits each figure by whether the killed node also held the etcd
leader (asked with etcdctl just before the kill). A candidate on the etcd
leader's node leaves a free master lease to the others for a moment
(hostagent.master.role.DEFER_S), so left alone the two rarely share a node;
every --leader-on-master'th kill (default 2nd) therefore first moves the etcd
leader onto the master's node (`etcdctl move-leader`, then 1.5 s for the
master's renewals to end the lease extension etcd grants on a leader change),
so that both cases are measured. The overall figures mix them accordingly.

After each kill the node is restarted and the next kill waits until it is back
(fresh report, leases held, every candidate's etcd healthy, quorum).
A full run (20 kills, 3 nodes) takes about 20 x 15-25 s.

Usage: .venv/bin/python bench/master_failover.py [--kills 20] [--nodes 3] [--leader-on-master 2] [--keep]
"""

from __future__ import annotations

import argparse
import json
import re
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from benchcluster import AgentNode, Cluster, ChildLedger, etcd_endpoints, etcd_leader_endpoint, etcdctl, is_gone, \
    running_cluster, summary, wait_for, wait_settled
from hostagent.config import load_config

WATCH_DEADLINE_S = 60
REPLICA_POLL_S = 0.01
CHILD_EXIT_WAIT_S = 10
LEADER_MOVE_WAIT_S = 10
LEASE_SETTLE_S = 1.5  # a few renewals of the master lease after an etcd leader change
HARNESS_LEASE_LINE = re.compile(r"^master_lease_ttl_s = .*\n", re.MULTILINE)


class Failure(Exception):
    """Corral did not do what the benchmark waits for; the message says what, with log excerpts."""


@dataclass
class Attempt:
    start: float
    end: float
    rc: int
    error: str


@dataclass
class Kill:
    index: int
    killed: str
    was_etcd_leader: bool | None
    observer: str
    detection: float | None = None
    election: float | None = None
    resume: float | None = None
    new_master: str | None = None
    replica_detection: float | None = None
    replica_election: float | None = None
    polls: list[float] = field(default_factory=list)
    info_errors: list[str] = field(default_factory=list)
    attempts: list[Attempt] = field(default_factory=list)
    lingering_children: list[int] = field(default_factory=list)
    rejoin: float | None = None


class ReplicaWatch(threading.Thread):
    """Reads /corral/master from the observer's replica every 10 ms; stamps the two changes."""

    def __init__(self, node: AgentNode, old: str, t0: float, deadline: float) -> None:
        super().__init__(daemon=True)
        self.path = node.root / "state" / "config.db"
        self.old, self.t0, self.deadline = old, t0, deadline
        self.detection: float | None = None
        self.election: float | None = None
        self.stop_now = threading.Event()

    def run(self) -> None:
        db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=5)
        try:
            for _ in range(int((self.deadline - time.monotonic()) / REPLICA_POLL_S) + 1):
                if self.stop_now.is_set() or time.monotonic() > self.deadline:
                    return
                row = db.execute("SELECT value FROM kv WHERE key = '/corral/master'").fetchone()
                master = json.loads(row[0]).get("node") if row else None
                now = time.monotonic() - self.t0
                if self.detection is None and master != self.old:
                    self.detection = now
                if self.election is None and master not in (None, self.old):
                    self.election = now
                    return
                time.sleep(REPLICA_POLL_S)
        finally:
            db.close()


class Writer(threading.Thread):
    """Retries `corral user add` on the observer until it exits 0 or the deadline passes."""

    def __init__(self, node: AgentNode, user: str, t0: float, deadline: float) -> None:
        super().__init__(daemon=True)
        self.node, self.user, self.t0, self.deadline = node, user, t0, deadline
        self.attempts: list[Attempt] = []

    def run(self) -> None:
        for _ in range(1000):
            if time.monotonic() > self.deadline:
                return
            start = time.monotonic() - self.t0
            try:
                result = self.node.corral("user", "add", self.user, "--role", "read",
                                          timeout=max(1.0, self.deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.attempts.append(Attempt(start, time.monotonic() - self.t0, -1,
                                             "the CLI did not return by the deadline"))
                return
            err = (result.stderr.strip() or result.stdout.strip()).splitlines()
            self.attempts.append(Attempt(start, time.monotonic() - self.t0, result.returncode,
                                         "" if result.returncode == 0 else (err[-1] if err else "")))
            if result.returncode == 0:
                return
            time.sleep(0.05)


def production_timing(cluster: Cluster) -> None:
    """Drop the harness's short master lease from every node's config, so the defaults apply."""
    for node in cluster.nodes:
        text, found = HARNESS_LEASE_LINE.subn("", node.config.read_text())
        if not found:
            raise Failure(f"{node.config} has no master_lease_ttl_s line to drop: has the harness changed?")
        node.config.write_text(text)


def timing(node: AgentNode) -> str:
    cfg = load_config(str(node.config))
    return (f"master lease TTL {cfg.master_lease_ttl_s} s, etcd heartbeat {cfg.etcd_heartbeat_ms} ms, "
            f"election timeout {cfg.etcd_election_timeout_ms} ms")


def endpoint_of(node: AgentNode) -> str:
    return f"https://{node.address}:{node.ports['etcd_client']}"


def put_etcd_leader_on(cluster: Cluster, node: AgentNode) -> None:
    """Move etcd's Raft leadership to `node`'s member (no-op if it has it), and let the master lease settle."""
    endpoints = etcd_endpoints(cluster)
    target = endpoint_of(node)
    leader = etcd_leader_endpoint(node, endpoints)
    if leader == target:
        return
    status = etcdctl(node, endpoints, "endpoint", "status", "-w", "json")
    rows = json.loads(status.stdout) if status.returncode == 0 else []
    member = next((r["Status"]["header"]["member_id"] for r in rows if r["Endpoint"] == target), None)
    if leader is None or member is None:
        raise Failure(f"cannot move the etcd leader to {node.name}: leader {leader}, member {member}; "
                      f"{status.stderr.strip()[-300:]}")
    moved = etcdctl(node, [leader], "move-leader", f"{member:x}")
    if moved.returncode != 0:
        raise Failure(f"etcdctl move-leader to {node.name} failed: {moved.stderr.strip()[-300:]}")
    wait_for(lambda: etcd_leader_endpoint(node, endpoints) == target, LEADER_MOVE_WAIT_S,
             f"etcd leader on {node.name}", interval_s=0.2)
    time.sleep(LEASE_SETTLE_S)


def current_master(cluster: Cluster) -> AgentNode:
    name = cluster.master()
    if name is None:
        raise Failure("no master is named before the kill, although the cluster was settled")
    return cluster[name]


def measure_kill(cluster: Cluster, ledger: ChildLedger, index: int, colocate: bool) -> Kill:
    old = current_master(cluster)
    if colocate:
        put_etcd_leader_on(cluster, old)
        old = current_master(cluster)  # moving the leader must not have moved the master
    survivors = [n for n in cluster.alive() if n is not old]
    observer = survivors[index % len(survivors)]
    endpoints = etcd_endpoints(cluster)
    leader = etcd_leader_endpoint(observer, endpoints)
    kill = Kill(index, old.name, None if leader is None else leader == endpoint_of(old), observer.name)
    ledger.note(cluster)
    children = old.child_pids()

    t0 = time.monotonic()
    deadline = t0 + WATCH_DEADLINE_S
    old.kill9()
    watch = ReplicaWatch(observer, old.name, t0, deadline)
    watch.start()
    writer: Writer | None = None
    for _ in range(2000):
        if time.monotonic() > deadline:
            break
        started = time.monotonic()
        result = observer.corral("cluster", "info", "--json", timeout=max(1.0, deadline - started))
        now = time.monotonic() - t0
        kill.polls.append(time.monotonic() - started)
        if result.returncode != 0:
            kill.info_errors.append(f"t={now:.2f} rc={result.returncode}: {result.stderr.strip()[-200:]}")
            continue
        master = json.loads(result.stdout)["master"]
        if kill.detection is None and master != old.name:
            kill.detection = now
            writer = Writer(observer, f"bench{index}", t0, deadline)
            writer.start()
        if kill.election is None and master not in (None, old.name):
            kill.election, kill.new_master = now, master
            break
    if writer is not None:
        writer.join(max(0.0, deadline - time.monotonic()) + 5)
        kill.attempts = writer.attempts
        ok = [a for a in writer.attempts if a.rc == 0]
        kill.resume = ok[0].end if ok else None
    watch.stop_now.set()
    watch.join(5)
    kill.replica_detection, kill.replica_election = watch.detection, watch.election
    for _ in range(int(CHILD_EXIT_WAIT_S / 0.1)):
        if all(is_gone(pid) for pid in children):
            break
        time.sleep(0.1)
    kill.lingering_children = [pid for pid in children if not is_gone(pid)]
    return kill


def bring_back(cluster: Cluster, node: AgentNode, candidates: int) -> float:
    t0 = time.monotonic()
    try:
        node.start()
        node.wait_fresh_report(60)
        wait_settled(cluster, candidates, 120)
    except (AssertionError, subprocess.TimeoutExpired) as exc:
        raise Failure(f"node {node.name} did not come back after its restart: {exc}\n"
                      f"--- {node.name}/agent.log (tail) ---\n{node.log_tail(40)}") from None
    return time.monotonic() - t0


def describe(k: Kill) -> str:
    def f(v: float | None) -> str:
        return "  -  " if v is None else f"{v:5.2f}"
    failed = [a for a in k.attempts if a.rc != 0]
    line = (f"kill {k.index + 1:2d}: {k.killed} (etcd leader: {k.was_etcd_leader}) observer {k.observer}  "
            f"detect {f(k.detection)}  elect {f(k.election)} -> {k.new_master}  resume {f(k.resume)}  "
            f"| replica detect {f(k.replica_detection)} elect {f(k.replica_election)}  "
            f"| poll {statistics.median(k.polls) if k.polls else 0:.2f}  rejoin {f(k.rejoin)}")
    if failed:
        line += f"\n         {len(failed)} failed write(s) before success; first: " \
                f"t={failed[0].start:.2f}..{failed[0].end:.2f} rc={failed[0].rc}: {failed[0].error[:300]}"
    ok = [a for a in k.attempts if a.rc == 0]
    if ok and ok[0].end - ok[0].start > 2:
        line += (f"\n         the successful write took {ok[0].end - ok[0].start:.2f} s "
                 f"(submitted at t={ok[0].start:.2f})")
    for err in k.info_errors[:3]:
        line += f"\n         cluster info failed: {err}"
    if k.lingering_children:
        line += (f"\n         children of the killed agent still alive {CHILD_EXIT_WAIT_S} s later: "
                 f"{k.lingering_children}")
    return line


def report(kills: list[Kill]) -> None:
    print(f"\n== master failover over {len(kills)} kills (s from SIGKILL; CLI on a surviving node) ==")
    for label, attr in [("detection", "detection"), ("election", "election"), ("resume", "resume"),
                        ("replica detection", "replica_detection"), ("replica election", "replica_election"),
                        ("rejoin after restart", "rejoin")]:
        values = [getattr(k, attr) for k in kills if getattr(k, attr) is not None]
        missing = len(kills) - len(values)
        print(f"{label:22s} {summary(values)}" + (f"  MISSING in {missing}" if missing else ""))
    print(f"\nmaster failover over {len(kills)} kills, split by whether the etcd leader died too:")
    for label, group in [("etcd leader died too", [k for k in kills if k.was_etcd_leader]),
                         ("etcd leader survived", [k for k in kills if k.was_etcd_leader is False]),
                         ("etcd leader unknown", [k for k in kills if k.was_etcd_leader is None])]:
        if not group and label == "etcd leader unknown":
            continue
        print(f"  {label} ({len(group)} kills):")
        for attr in ("detection", "election", "resume"):
            values = [getattr(k, attr) for k in group if getattr(k, attr) is not None]
            print(f"    {attr:10s} {summary(values)}")
    polls = [p for k in kills for p in k.polls]
    print(f"`cluster info` call during the gap: {summary(polls)}")
    failed_writes = sum(1 for k in kills for a in k.attempts if a.rc != 0)
    print(f"failed writes before resume: {failed_writes} over {len(kills)} kills")


def run_kills(cluster: Cluster, ledger: ChildLedger, kills: list[Kill], count: int, candidates: int,
              leader_every: int) -> None:
    """Kill, measure, bring back, `count` times; raises Failure when Corral does not recover."""
    for i in range(count):
        try:
            kill = measure_kill(cluster, ledger, i, colocate=leader_every > 0 and (i + 1) % leader_every == 0)
        except (AssertionError, subprocess.TimeoutExpired) as exc:
            raise Failure(f"kill {i + 1}: {type(exc).__name__}: {exc}") from None
        kills.append(kill)
        if kill.election is None or kill.resume is None:
            print(describe(kill), flush=True)
            observer = cluster[kill.observer]
            raise Failure(f"kill {i + 1}: no {'new master' if kill.election is None else 'successful write'} "
                          f"within {WATCH_DEADLINE_S} s on {observer.name}\n"
                          f"--- {observer.name}/agent.log (tail) ---\n{observer.log_tail(40)}")
        try:
            kill.rejoin = bring_back(cluster, cluster[kill.killed], candidates)
        finally:
            print(describe(kill), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--nodes", type=int, default=3, choices=(3, 5))
    parser.add_argument("--leader-on-master", type=int, default=2, metavar="N",
                        help="every Nth kill, first move the etcd leader to the master's node (0: never)")
    parser.add_argument("--keep", action="store_true", help="keep the cluster's files (agent logs) afterwards")
    args = parser.parse_args()
    kills: list[Kill] = []
    failure: str | None = None
    try:
        with running_cluster(args.nodes, args.nodes, keep=args.keep, before_form=production_timing) as (cluster,
                                                                                                      ledger):
            print(f"timing: {timing(cluster.nodes[0])}", flush=True)
            run_kills(cluster, ledger, kills, args.kills, args.nodes, args.leader_on_master)
    except (Failure, AssertionError) as exc:  # AssertionError: the harness could not form the cluster
        failure = str(exc)
    if kills:
        report(kills)
    if failure:
        print(f"\nFAILED: {failure}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
