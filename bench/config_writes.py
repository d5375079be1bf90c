"""Benchmark: a config write through Corral until every node's replica has it, against raw etcd puts.

Forms a 3-node cluster (3 etcd members) and, in the same run, measures:

  Corral CLI     `corral user add NAME --role read` (a lease-guarded master txn)
                 on a non-master node (forwarded to the master) and on the
                 master. "return" = the CLI exits 0; "all replicas" = the key
                 /corral/users/NAME is in every node's SQLite replica
                 (<root>/state/config.db, polled read-only every 2 ms while the
                 CLI runs, so a replica may see it before the CLI returns).
  Corral API     the same request as the CLI sends (POST /v1/users on the
                 non-master node's unix socket) from one aiohttp session, so no
                 process start: sequentially, then --concurrency at a time.
  etcdctl        `etcdctl put /bench/...` (one process per put, like the CLI),
                 with a node's client certificate, all members as endpoints.
  etcd gateway   POST /v3/kv/put on the master's local etcd member (what
                 Corral's own etcd client speaks), sequentially and concurrently.

Keys under /bench/ are outside /corral/, so no agent mirrors or acts on them.
Values are the size of a user record. Prints p50/p95/max, ops/s and ratios.

Usage: .venv/bin/python bench/config_writes.py [--writes 200] [--concurrency 16] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp

from benchcluster import AgentNode, Cluster, EtcdGateway, LogMark, etcd_endpoints, etcdctl, print_problems, \
    running_cluster, summary

BIN = os.path.join(os.path.dirname(sys.executable), "corral")
VISIBLE_DEADLINE_S = 30
REPLICA_POLL_S = 0.002
RAW_VALUE = "x" * 120  # about the size of a user record's JSON


class Failure(Exception):
    """Corral refused or lost a write the benchmark made; the message has the command and its output."""


class Replicas:
    """Read-only connections to every node's SQLite replica."""

    def __init__(self, cluster: Cluster) -> None:
        self.dbs = {n.name: sqlite3.connect(f"file:{n.root / 'state' / 'config.db'}?mode=ro", uri=True, timeout=5)
                    for n in cluster.nodes}

    def has(self, node: str, key: str) -> bool:
        return self.dbs[node].execute("SELECT 1 FROM kv WHERE key = ?", (key,)).fetchone() is not None

    def count(self, node: str, prefix: str) -> int:
        end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        return int(self.dbs[node].execute("SELECT count(*) FROM kv WHERE key >= ? AND key < ?",
                                          (prefix, end)).fetchone()[0])

    def close(self) -> None:
        for db in self.dbs.values():
            db.close()


@dataclass
class Sample:
    returned: float
    seen: dict[str, float]
    local_at_return: bool

    @property
    def all_replicas(self) -> float:
        return max(self.seen.values())


@dataclass
class Series:
    label: str
    samples: list[Sample] = field(default_factory=list)
    wall_s: float = 0.0


async def timed_write(submit: Callable[[], Awaitable[None]], replicas: Replicas, key: str, local: str) -> Sample:
    """Run `submit` while polling every replica for `key`; times from the submit."""
    t0 = time.monotonic()
    returned: list[float] = []
    local_at_return: list[bool] = []

    async def run() -> None:
        await submit()
        returned.append(time.monotonic() - t0)
        local_at_return.append(replicas.has(local, key))
    task = asyncio.create_task(run())
    seen: dict[str, float] = {}
    for _ in range(int(VISIBLE_DEADLINE_S / REPLICA_POLL_S)):
        now = time.monotonic() - t0
        for node in replicas.dbs:
            if node not in seen and replicas.has(node, key):
                seen[node] = now
        if task.done() and len(seen) == len(replicas.dbs):
            break
        if now > VISIBLE_DEADLINE_S:
            break
        await asyncio.sleep(REPLICA_POLL_S)
    await task
    missing = sorted(set(replicas.dbs) - set(seen))
    if missing:
        raise Failure(f"{key} written (returned after {returned[0]:.2f} s) but not in the replica of "
                      f"{', '.join(missing)} after {VISIBLE_DEADLINE_S} s")
    return Sample(returned[0], seen, local_at_return[0])


async def cli_user_add(node: AgentNode, name: str) -> None:
    proc = await asyncio.create_subprocess_exec(BIN, "user", "add", name, "--role", "read",
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                                                env={**os.environ, "CORRAL_SOCKET": node.socket})
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        raise Failure(f"corral user add {name} on {node.name} did not return within 60 s") from None
    if proc.returncode != 0:
        raise Failure(f"corral user add {name} --role read on {node.name} exited {proc.returncode}:\n"
                      f"{out.decode()}{err.decode()}")


async def api_user_add(session: aiohttp.ClientSession, node: AgentNode, name: str) -> None:
    async with session.post("http://localhost/v1/users", json={"name": name, "role": "read"}) as resp:
        body = await resp.text()
        if resp.status != 200:
            raise Failure(f"POST /v1/users {name} on {node.name}'s socket: HTTP {resp.status} {body[:500]}")


async def etcdctl_put(node: AgentNode, endpoints: list[str], key: str) -> None:
    result = await asyncio.to_thread(etcdctl, node, endpoints, "put", key, RAW_VALUE)
    if result.returncode != 0:
        raise Failure(f"etcdctl put {key}: rc {result.returncode}: {result.stderr.strip()}")


async def sequential(label: str, n: int, write: Callable[[int], Awaitable[Sample | float]]) -> Series:
    series = Series(label)
    t0 = time.monotonic()
    for i in range(n):
        result = await write(i)
        series.samples.append(result if isinstance(result, Sample) else Sample(result, {"-": result}, True))
    series.wall_s = time.monotonic() - t0
    return series


async def raw_timed(put: Awaitable[object]) -> float:
    t0 = time.monotonic()
    await put
    return time.monotonic() - t0


async def concurrent(n: int, width: int, write: Callable[[int], Awaitable[object]]) -> float:
    """Seconds for `n` writes with `width` in flight."""
    gate = asyncio.Semaphore(width)

    async def one(i: int) -> None:
        async with gate:
            await write(i)
    t0 = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(n)))
    return time.monotonic() - t0


async def wait_count(replicas: Replicas, prefix: str, n: int) -> None:
    for _ in range(int(VISIBLE_DEADLINE_S / 0.01)):
        if all(replicas.count(node, prefix) >= n for node in replicas.dbs):
            return
        await asyncio.sleep(0.01)
    counts = {node: replicas.count(node, prefix) for node in replicas.dbs}
    raise Failure(f"after {VISIBLE_DEADLINE_S} s the replicas hold {counts} of {n} keys under {prefix}")


def line(label: str, values: list[float], wall_s: float | None = None) -> str:
    rate = f"  {len(values) / wall_s:7.1f} ops/s" if wall_s else ""
    return f"  {label:44s} {summary(values, 'ms', 1000)}{rate}"


async def run(cluster: Cluster, writes: int, width: int) -> None:
    master = cluster[cluster.master()]
    other = next(n for n in cluster.nodes if n is not master)
    endpoints = etcd_endpoints(cluster)
    gateway_endpoint = f"https://{master.address}:{master.ports['etcd_client']}"
    replicas = Replicas(cluster)
    mark = LogMark(cluster)
    key = "/corral/users/{}".format
    try:
        print(f"master {master.name}; non-master writer {other.name}; {writes} writes per series", flush=True)
        floor = await sequential("cli read", 20, lambda i: raw_timed(asyncio.to_thread(other.ok, "user", "list")))
        cli_other = await sequential(f"cli on {other.name}", writes, lambda i: timed_write(
            lambda: cli_user_add(other, f"clio{i}"), replicas, key(f"clio{i}"), other.name))
        cli_master = await sequential(f"cli on {master.name}", writes, lambda i: timed_write(
            lambda: cli_user_add(master, f"clim{i}"), replicas, key(f"clim{i}"), master.name))
        async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=other.socket),
                                         timeout=aiohttp.ClientTimeout(total=60)) as session:
            api_seq = await sequential(f"api on {other.name}", writes, lambda i: timed_write(
                lambda: api_user_add(session, other, f"apis{i}"), replicas, key(f"apis{i}"), other.name))
            t0 = time.monotonic()
            api_conc_return = await concurrent(writes, width, lambda i: api_user_add(session, other, f"apic{i}"))
            await wait_count(replicas, "/corral/users/apic", writes)
            api_conc_all = time.monotonic() - t0
        ctl = await sequential("etcdctl put", writes, lambda i: raw_timed(
            etcdctl_put(other, endpoints, f"/bench/ctl/{i:06d}")))
        async with EtcdGateway(master, gateway_endpoint) as gw:
            gw_seq = await sequential("gateway put", writes,
                                      lambda i: raw_timed(gw.put(f"/bench/gws/{i:06d}", RAW_VALUE)))
            gw_conc = await concurrent(writes, width, lambda i: gw.put(f"/bench/gwc/{i:06d}", RAW_VALUE))
            await gw.delete_prefix("/bench/")
        sums = cluster.wait_replicas_agree()
    finally:
        replicas.close()

    def ret(s: Series) -> list[float]:
        return [x.returned for x in s.samples]

    def vis(s: Series) -> list[float]:
        return [x.all_replicas for x in s.samples]

    def med(v: list[float]) -> float:
        return statistics.median(v)

    print(f"\n== config writes, 3 nodes, sequential ({writes} each; latency from submit) ==")
    print(line("corral user list (CLI read floor)", ret(floor)))
    for s in (cli_other, cli_master, api_seq):
        print(line(f"{s.label}: return", ret(s), s.wall_s))
        print(line(f"{s.label}: in every replica", vis(s)))
        print(line(f"{s.label}: return - in every replica", [x.returned - x.all_replicas for x in s.samples]))
        late = sum(1 for x in s.samples if not x.local_at_return)
        print(f"  {'':44s} writer's own replica lacked the key at return in {late}/{len(s.samples)}")
        for node in cluster.nodes:
            print(line(f"{s.label}: in {node.name}'s replica", [x.seen[node.name] for x in s.samples]))
    print(line("etcdctl put (process per put)", ret(ctl), ctl.wall_s))
    print(line("etcd gateway put (one session)", ret(gw_seq), gw_seq.wall_s))
    print(f"\n== concurrent, {width} in flight, {writes} writes ==")
    print(f"  corral API user add: all returned in {api_conc_return:.2f} s ({writes / api_conc_return:.1f} ops/s), "
          f"in every replica after {api_conc_all:.2f} s ({writes / api_conc_all:.1f} ops/s)")
    print(f"  etcd gateway put:    {gw_conc:.2f} s ({writes / gw_conc:.1f} ops/s)")
    print("\n== ratios (Corral / raw etcd, medians) ==")
    print(f"  CLI return on non-master / etcdctl put:       {med(ret(cli_other)) / med(ret(ctl)):.1f}x")
    print(f"  CLI in every replica / etcdctl put:          {med(vis(cli_other)) / med(ret(ctl)):.1f}x")
    print(f"  API return on non-master / gateway put:      {med(ret(api_seq)) / med(ret(gw_seq)):.1f}x")
    print(f"  API in every replica / gateway put:          {med(vis(api_seq)) / med(ret(gw_seq)):.1f}x")
    print(f"  concurrent throughput gateway / API:         "
          f"{(writes / gw_conc) / (writes / api_conc_all):.1f}x")
    print(f"replicas agree afterwards (checksum {sums[:12]})")
    print_problems(mark)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--writes", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--keep", action="store_true", help="keep the cluster's files (agent logs) afterwards")
    args = parser.parse_args()
    try:
        with running_cluster(3, 3, keep=args.keep) as (cluster, _):
            asyncio.run(run(cluster, args.writes, args.concurrency))
    except (Failure, AssertionError) as exc:  # AssertionError: from the harness's bounded waits
        print(f"\nFAILED: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
