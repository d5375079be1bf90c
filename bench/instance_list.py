"""Benchmark: `corral instance list` on a non-master node with --instances records in the config.

Forms a 3-node cluster, then writes instance records straight into etcd at
/corral/instances/<name> (built with hostagent.model.Instance, so they have the
real shape; admin_state "down", so no master restarts them and no VM is
created), through etcd's JSON gateway with 16 puts in flight. Waits until a
non-master node's SQLite replica holds them all, then times on that node
(median/p95 of --runs): `corral instance list`, `corral instance list --json`,
GET /v1/instances on the agent's socket (the agent's share, without the CLI
process), and `corral cluster info` (which also counts the instances) before
and after the records exist, as the baseline; and each agent's idle CPU
before and after, since every agent holds (and may rescan) the whole config.

Usage: .venv/bin/python bench/instance_list.py [--instances 1000] [--runs 20] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import socket
import sqlite3
import sys
import time
import uuid

import psutil

from benchcluster import AgentNode, Cluster, EtcdGateway, LogMark, print_problems, running_cluster, summary
from hostagent import model

WIDTH = 16
IDLE_S = 10.0
REPLICA_DEADLINE_S = 120


class Failure(Exception):
    """Corral did not show what was written; the message says what was missing."""


def record(i: int, nodes: list[str], now: float) -> model.Instance:
    primary = nodes[i % len(nodes)]
    return model.Instance(
        name=f"vm{i:05d}", uuid=str(uuid.uuid4()), os="busybox-guest", disk_template="file",
        memory_mib=128 + 128 * (i % 4), vcpus=1 + i % 2, primary_node=primary,
        disks=[model.Disk(0, 1024, "qcow2", str(uuid.uuid4()))],
        nics=[model.Nic(mac=f"52:54:00:{i >> 16 & 0xff:02x}:{i >> 8 & 0xff:02x}:{i & 0xff:02x}", mode="user")],
        hvparams={}, osparams={}, secondary_node=None, admin_state="down", ctime=now, mtime=now)


async def write_records(master: AgentNode, n: int, nodes: list[str]) -> float:
    endpoint = f"https://{master.address}:{master.ports['etcd_client']}"
    gate = asyncio.Semaphore(WIDTH)
    now = time.time()

    async def one(gw: EtcdGateway, i: int) -> None:
        inst = record(i, nodes, now)
        async with gate:
            await gw.put(model.instance_key(inst.name), model.dumps(inst.to_dict()))
    t0 = time.monotonic()
    async with EtcdGateway(master, endpoint) as gw:
        await asyncio.gather(*(one(gw, i) for i in range(n)))
    return time.monotonic() - t0


def wait_replica(node: AgentNode, n: int) -> float:
    """Seconds until `node`'s replica holds `n` instance records."""
    db = sqlite3.connect(f"file:{node.root / 'state' / 'config.db'}?mode=ro", uri=True, timeout=5)
    t0 = time.monotonic()
    count = 0
    try:
        for _ in range(int(REPLICA_DEADLINE_S / 0.05)):
            count = db.execute("SELECT count(*) FROM kv WHERE key >= ? AND key < ?",
                               (model.INSTANCES, model.INSTANCES[:-1] + "0")).fetchone()[0]
            if count >= n:
                return time.monotonic() - t0
            time.sleep(0.05)
    finally:
        db.close()
    raise Failure(f"node {node.name}'s replica holds {count} of {n} instance records after {REPLICA_DEADLINE_S} s")


def time_cli(node: AgentNode, runs: int, *args: str) -> tuple[list[float], int, int]:
    """Durations of `runs` calls, and the size in bytes and lines of the last output."""
    durations, out = [], ""
    for _ in range(runs):
        t0 = time.monotonic()
        result = node.corral(*args, timeout=120)
        durations.append(time.monotonic() - t0)
        if result.returncode != 0:
            raise Failure(f"corral {' '.join(args)} on {node.name} exited {result.returncode}:\n"
                          f"{result.stdout[-500:]}{result.stderr[-500:]}")
        out = result.stdout
    return durations, len(out.encode()), out.count("\n")


def time_api(node: AgentNode, runs: int) -> tuple[list[float], int]:
    """GET /v1/instances on the unix socket, without the CLI process."""
    durations, size = [], 0
    for _ in range(runs):
        conn = http.client.HTTPConnection("localhost", timeout=120)
        conn.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.sock.settimeout(120)
        t0 = time.monotonic()
        conn.sock.connect(node.socket)
        conn.request("GET", "/v1/instances")
        resp = conn.getresponse()
        body = resp.read()
        durations.append(time.monotonic() - t0)
        conn.close()
        if resp.status != 200:
            raise Failure(f"GET /v1/instances on {node.name}: HTTP {resp.status} {body[:300]!r}")
        size = len(body)
    return durations, size


def idle_cpu(cluster: Cluster, seconds: float) -> str:
    """Each agent's CPU use (percent of one core) over `seconds` of no requests."""
    procs = {node.name: psutil.Process(node.proc.pid) for node in cluster.alive() if node.proc is not None}
    before = {name: p.cpu_times() for name, p in procs.items()}
    t0 = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - t0
    after = {name: p.cpu_times() for name, p in procs.items()}
    used = {name: after[name].user + after[name].system - before[name].user - before[name].system for name in procs}
    return ", ".join(f"{name} {used[name] / elapsed * 100:.1f}%" for name in procs)


def run(cluster: Cluster, n: int, runs: int) -> None:
    master = cluster[cluster.master()]
    reader = next(node for node in cluster.nodes if node is not master)
    idle_before = idle_cpu(cluster, IDLE_S)
    info_before, _, _ = time_cli(reader, runs, "cluster", "info")
    list_empty, _, _ = time_cli(reader, runs, "instance", "list")
    mark = LogMark(cluster)
    write_s = asyncio.run(write_records(master, n, [node.name for node in cluster.nodes]))
    lag_s = wait_replica(reader, n)
    listed = len(reader.json("instance", "list"))
    if listed != n:
        raise Failure(f"`corral instance list --json` on {reader.name} shows {listed} instances, the replica has {n}")
    time.sleep(2)  # let the agents settle after the burst of puts
    idle_after = idle_cpu(cluster, IDLE_S)
    info_after, _, _ = time_cli(reader, runs, "cluster", "info")
    table, table_bytes, table_lines = time_cli(reader, runs, "instance", "list")
    as_json, json_bytes, _ = time_cli(reader, runs, "instance", "list", "--json")
    api, api_bytes = time_api(reader, runs)
    print(f"\n== {n} instance records, read on non-master {reader.name} (master {master.name}), {runs} runs each ==")
    print(f"  written to etcd in {write_s:.2f} s ({n / write_s:.0f} puts/s, {WIDTH} in flight); "
          f"in {reader.name}'s replica {lag_s:.2f} s after the last put returned")
    print(f"  corral cluster info, 0 instances       {summary(info_before, 'ms', 1000)}")
    print(f"  corral instance list, 0 instances      {summary(list_empty, 'ms', 1000)}")
    print(f"  corral cluster info, {n} instances    {summary(info_after, 'ms', 1000)}")
    print(f"  corral instance list                   {summary(table, 'ms', 1000)}  "
          f"output {table_bytes / 1024:.0f} KiB, {table_lines} lines")
    print(f"  corral instance list --json            {summary(as_json, 'ms', 1000)}  "
          f"output {json_bytes / 1024:.0f} KiB")
    print(f"  GET /v1/instances (socket, no CLI)     {summary(api, 'ms', 1000)}  body {api_bytes / 1024:.0f} KiB")
    print(f"  agent CPU over {IDLE_S:.0f} s idle, 0 instances: {idle_before}")
    print(f"  agent CPU over {IDLE_S:.0f} s idle, {n} instances: {idle_after}")
    print_problems(mark)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--keep", action="store_true", help="keep the cluster's files (agent logs) afterwards")
    args = parser.parse_args()
    try:
        with running_cluster(3, 3, keep=args.keep) as (cluster, _):
            run(cluster, args.instances, args.runs)
    except (Failure, AssertionError) as exc:  # AssertionError: from the harness's bounded waits
        print(f"\nFAILED: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
