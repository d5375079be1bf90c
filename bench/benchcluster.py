"""What the multi-node benchmarks share: a harness cluster that never outlives the run, etcd access, percentiles.

The cluster comes from the integration tests' harness (tests/integration/conftest.py),
so a benchmark runs the same agents, etcd and Serf as the tests do. Everything a
benchmark starts is stopped by PID in `running_cluster`'s cleanup, including an
etcd or Serf child that failed to die with its agent, and a QEMU, disk export or
fence keeper whose pidfile was gone by then (both are reported, because they
would be Corral bugs: children follow the agent via a parent-death signal, and
the harness finds a node's QEMUs by their pidfiles). SIGTERM and SIGHUP end a
benchmark like Ctrl-C does, through that cleanup.
"""

from __future__ import annotations

import base64
import json
import math
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))
from conftest import GUEST_DIR, AgentNode, Cluster, is_gone, wait_for, wait_until  # noqa: E402,F401  (the harness)
from netns_support import Switch  # noqa: E402

from cli.client import AgentClient, AgentUnreachable, ApiError  # noqa: E402

ETCDCTL_TIMEOUT_S = 30
ASK_TIMEOUT_S = 30


class ChildLedger:
    """PIDs of every serf/etcd child under the cluster's agents and of every QEMU, disk export and fence
    keeper seen by pidfile, to reap leftovers at the end."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.pids: set[int] = set()

    def note(self, cluster: Cluster) -> None:
        for node in cluster.alive():
            self.pids.update(node.child_pids())
        for node in cluster.nodes:
            self.pids.update(pidfile_pids(node))

    def leftovers(self) -> list[int]:
        """Recorded children still running (and still ours: their command line names our root)."""
        alive = []
        for pid in sorted(self.pids):
            if is_gone(pid):
                continue
            try:
                cmdline = " ".join(psutil.Process(pid).cmdline())
            except psutil.Error:
                continue
            if str(self.root) in cmdline:
                alive.append(pid)
        return alive

    def reap(self, grace_s: float = 5.0) -> list[str]:
        """SIGKILL the leftovers; returns one line per process killed, for the report.

        Waits up to `grace_s` first: a process SIGKILLed just before, or a child whose parent-death
        signal is on its way, is not yet gone but is no leftover."""
        wait_until(lambda: not self.leftovers(), timeout_s=grace_s, interval_s=0.05)
        killed = []
        for pid in self.leftovers():
            try:
                name = psutil.Process(pid).name()
                os.kill(pid, signal.SIGKILL)
                killed.append(f"pid {pid} ({name})")
            except (psutil.Error, ProcessLookupError):
                continue
        return killed


def form(cluster: Cluster, candidates: int) -> None:
    """Like Cluster.form(), but with the candidate pool size given (Cluster.form() keeps the default 3)."""
    first = cluster.nodes[0]
    first.start()
    first.ok("cluster", "init", "--name", "bench", "--hv", "accel=tcg", "--candidates", str(candidates))
    for node in cluster.nodes[1:]:
        cluster.join(node)


def wait_settled(cluster: Cluster, candidates: int, timeout_s: float = 120) -> None:
    """Every node online with its lease held, `candidates` candidates, all their etcd members healthy.

    Stricter than Cluster.wait_candidates(), which returns while a new member's
    report may still call its etcd unhealthy.
    """
    cluster.wait_candidates(candidates, timeout_s)

    def settled() -> bool:
        asked = cluster.alive()[0]
        rows = asked.json("node", "list")
        return len(rows) == len(cluster.nodes) and all(
            r["status"] == "online" and r["lease"] == "held" and r["etcd"] in ("healthy", "-") for r in rows) \
            and asked.json("cluster", "info")["quorum"]["ok"]
    wait_for(settled, timeout_s, "every node online, leases held and every etcd member healthy", interval_s=0.5)


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP: ends a benchmark like Ctrl-C, so that its cleanup runs."""


def _terminate(signum: int, _frame: object) -> None:
    raise Terminated(f"signal {signal.Signals(signum).name}")


@contextmanager
def _cleanup_shielded() -> Iterator[None]:
    """Ctrl-C, SIGTERM and SIGHUP ignored while the cleanup kills what the benchmark started (bounded)."""
    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    before = {s: signal.signal(s, signal.SIG_IGN) for s in signals}
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)  # None: not set from Python


def stop_every_node(cluster: Cluster) -> list[str]:
    """Cluster.stop(), but one node's failure (an agent that will not stop, a QEMU that exits while it is
    being killed) does not leave the next nodes running; returns what went wrong, one line per node."""
    problems = []
    for node in cluster.nodes:
        try:
            node.stop()
        except (OSError, subprocess.SubprocessError) as exc:
            problems.append(f"stopping agent {node.name}: {exc}")
        kill_by_pidfile(node)
    return problems


@contextmanager
def running_cluster(size: int, candidates: int, keep: bool = False, subnet: str = "127.0.0",
                    prefix: str = "corral-bench-", switch: Switch | None = None,
                    before_form: Callable[[Cluster], None] | None = None) -> Iterator[tuple[Cluster, ChildLedger]]:
    """A formed, settled cluster of `size` nodes; stops every process it started when the block ends.

    The temp directory (/tmp/`prefix`XXXX) is removed afterwards unless `keep` or the block raised
    (then its path is printed, for the agent logs). `subnet`: the nodes' 127.x.y,
    so that the fixed ports of mirror disk exports cannot meet a test cluster's. `switch`: each node in a
    network namespace of its own on it instead (tests/integration/netns_support.py; close it after this block).
    `before_form`: called with the cluster before any agent starts (e.g. to mount a node's directories).
    """
    root = Path(tempfile.mkdtemp(prefix=prefix))
    cluster = Cluster(root, size, subnet=subnet, switch=switch)
    ledger = ChildLedger(root)
    failed = True
    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, _terminate)
    try:
        t0 = time.monotonic()
        if before_form is not None:
            before_form(cluster)
        form(cluster, candidates)
        ledger.note(cluster)
        wait_settled(cluster, candidates)
        ledger.note(cluster)
        print(f"cluster of {size} ({candidates} candidates) formed and settled in "
              f"{time.monotonic() - t0:.1f} s under {root}", flush=True)
        yield cluster, ledger
        failed = False
    finally:
        with _cleanup_shielded():
            ledger.note(cluster)
            try:
                for problem in stop_every_node(cluster):
                    print(f"CLEANUP: {problem}", flush=True)
            finally:
                killed = ledger.reap()
        if killed:
            print(f"CLEANUP: killed processes that outlived their agent or lost their pidfile: "
                  f"{', '.join(killed)}", flush=True)
        if keep or failed:
            print(f"cluster files (agent.log per node) kept under {root}", flush=True)
        else:
            shutil.rmtree(root, ignore_errors=True)


# ---- nodes and guests ------------------------------------------------------------

def guest_hv(kernel_args: str = "quiet") -> str:
    """Hypervisor parameters that boot the test guest (kernel and busybox initramfs) under TCG."""
    return f"accel=tcg,kernel_path={GUEST_DIR}/vmlinuz,initrd_path={GUEST_DIR}/initrd.img,kernel_args={kernel_args}"


def ask(node: AgentNode, *args: str, timeout_s: float = ASK_TIMEOUT_S) -> Any:
    """`corral ARGS --json` parsed, or None if it failed or timed out: during an outage a failed
    question is an answer to wait through, not an error."""
    try:
        result = node.corral(*args, "--json", timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return None
    if result.returncode != 0:
        return None
    try:
        return json.loads(result.stdout)
    except json.JSONDecodeError:
        return None


def api(node: AgentNode, url: str, timeout_s: float = ASK_TIMEOUT_S) -> Any:
    """GET `url` on the node's local socket from this process: the data `corral ... --json` prints, or None if
    the agent did not answer. A poll once a second through the CLI would start a Python process each time,
    and on a machine short of CPU that is taken from what is measured."""
    try:
        return AgentClient(node.socket, timeout_s).get(url)["data"]
    except (AgentUnreachable, ApiError, KeyError, TypeError):
        return None


def pidfile_pids(node: AgentNode) -> list[int]:
    """AgentNode.qemu_pids() (QEMUs, disk exports, fence keeper by their pidfiles), but a pidfile removed
    between the listing and the read (an instance stopping or moving) is skipped, not an error."""
    return [pid for _, pid in _pidfiles(node)]


def _pidfiles(node: AgentNode) -> list[tuple[Path, int]]:
    run = node.root / "run"
    found = []
    for pidfile in [*run.rglob("qemu.pid"), *(run / "replication").glob("*.pid"), *run.glob("fence-keeper.pid")]:
        try:
            found.append((pidfile, int(pidfile.read_text().strip())))
        except (OSError, ValueError):
            continue
    return found


def power_off(node: AgentNode) -> list[int]:
    """A node's power cut, as tests/integration/test_node_failure.py does it: SIGKILL of the agent (its etcd
    and Serf follow through their parent-death signal), then of its QEMUs, disk exports and fence keeper.
    Returns the pids killed after the agent."""
    if node.proc is not None and node.proc.poll() is None:
        node.kill9()
    return kill_by_pidfile(node)


def kill_by_pidfile(node: AgentNode) -> list[int]:
    """SIGKILL the node's QEMUs, disk exports and fence keeper; returns their pids.

    Each process must name its own pidfile on its command line (all three are started with one): pids
    recycle fast here (pid_max 32768), and a stale pidfile's pid may by now be anything, even this node's
    restarted agent, whose command line names the node's directory too. Unlike AgentNode.kill_qemus(), a
    process that exits meanwhile does not stop the rest."""
    killed = []
    for pidfile, pid in _pidfiles(node):
        try:
            if str(pidfile).encode() not in Path(f"/proc/{pid}/cmdline").read_bytes():
                continue
            os.kill(pid, signal.SIGKILL)
        except OSError:  # gone meanwhile (ProcessLookupError), or its /proc entry with it
            continue
        killed.append(pid)
    return killed


def wait_gone(pids: Sequence[int], timeout_s: float, what: str) -> None:
    """Every pid exited (or is a zombie); AssertionError naming the survivors otherwise."""
    try:
        wait_for(lambda: all(is_gone(pid) for pid in pids), timeout_s, what, interval_s=0.05)
    except AssertionError:
        alive = [pid for pid in pids if not is_gone(pid)]
        raise AssertionError(f"{what}: pids {alive} still alive after {timeout_s:.0f} s") from None


# ---- etcd, bypassing Corral ---------------------------------------------------

def etcd_endpoints(cluster: Cluster) -> list[str]:
    """Client URLs of the candidates' etcd members, as Corral's nodes reach them."""
    names = set(cluster.alive()[0].json("cluster", "info")["candidates"])
    return [f"https://{n.address}:{n.ports['etcd_client']}" for n in cluster.nodes if n.name in names]


def pki(node: AgentNode) -> tuple[str, str, str]:
    d = node.root / "state" / "pki"
    return str(d / "ca.crt"), str(d / "node.crt"), str(d / "node.key")


def etcdctl(node: AgentNode, endpoints: Sequence[str], *args: str,
            timeout_s: float = ETCDCTL_TIMEOUT_S) -> subprocess.CompletedProcess:
    """Run etcdctl (API v3) with `node`'s client certificate against `endpoints`."""
    ca, cert, key = pki(node)
    argv = ["etcdctl", f"--endpoints={','.join(endpoints)}", f"--cacert={ca}", f"--cert={cert}", f"--key={key}",
            "--command-timeout=10s", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s,
                          env={**os.environ, "ETCDCTL_API": "3"})


def etcd_leader_endpoint(node: AgentNode, endpoints: Sequence[str]) -> str | None:
    """The endpoint whose member is the Raft leader right now, or None if etcdctl cannot tell."""
    result = etcdctl(node, endpoints, "endpoint", "status", "-w", "json")
    if result.returncode != 0:
        return None
    for row in json.loads(result.stdout):
        status = row["Status"]
        if status["header"]["member_id"] == status["leader"]:
            return str(row["Endpoint"])
    return None


def _b64(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.b64encode(raw).decode()


class EtcdGateway:
    """Puts through etcd's v3 JSON gateway (what Corral's own client speaks), one aiohttp session."""

    def __init__(self, node: AgentNode, endpoint: str) -> None:
        ca, cert, key = pki(node)
        self._ssl = ssl.create_default_context(cafile=ca)
        self._ssl.load_cert_chain(cert, key)
        self.endpoint = endpoint
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> EtcdGateway:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10),
                                              connector=aiohttp.TCPConnector(ssl=self._ssl, limit=256))
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._session is not None
        await self._session.close()

    async def put(self, key: str, value: str | bytes) -> int:
        """Put one key; returns the revision etcd committed it at."""
        assert self._session is not None
        async with self._session.post(f"{self.endpoint}/v3/kv/put",
                                      json={"key": _b64(key), "value": _b64(value)}) as resp:
            body: dict[str, Any] = await resp.json(content_type=None)
            if resp.status != 200:
                raise RuntimeError(f"etcd gateway put {key} at {self.endpoint}: HTTP {resp.status} {body}")
            return int(body["header"]["revision"])

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every key under `prefix`; returns how many were deleted."""
        assert self._session is not None
        end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        async with self._session.post(f"{self.endpoint}/v3/kv/deleterange",
                                      json={"key": _b64(prefix), "range_end": _b64(end)}) as resp:
            body = await resp.json(content_type=None)
            if resp.status != 200:
                raise RuntimeError(f"etcd gateway deleterange {prefix} at {self.endpoint}: HTTP {resp.status} {body}")
            return int(body.get("deleted", 0))


# ---- figures ---------------------------------------------------------------------

def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (no interpolation: with 20 samples p95 is the 19th)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def summary(values: Sequence[float], unit: str = "s", scale: float = 1.0) -> str:
    if not values:
        return "no samples"
    v = [x * scale for x in values]
    return (f"p50 {percentile(v, 50):.3f} {unit}  p95 {percentile(v, 95):.3f} {unit}  "
            f"max {max(v):.3f} {unit}  (n={len(v)})")


class LogMark:
    """Where each node's agent.log ended at creation; `problems()` returns WARNING/ERROR lines written since."""

    def __init__(self, cluster: Cluster) -> None:
        self.nodes = list(cluster.nodes)
        self.offsets = {n.name: _size(n.root / "agent.log") for n in self.nodes}

    def problems(self) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for node in self.nodes:
            path = node.root / "agent.log"
            with open(path, "rb") as f:
                f.seek(self.offsets[node.name])
                text = f.read().decode(errors="replace")
            lines = [ln for ln in text.splitlines() if " WARNING " in ln or " ERROR " in ln or "Traceback" in ln]
            if lines:
                found[node.name] = lines
        return found


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def print_problems(mark: LogMark, limit: int = 5) -> None:
    problems = mark.problems()
    if not problems:
        print("agent logs: no WARNING/ERROR lines during the measurements")
    for node, lines in problems.items():
        print(f"agent log {node}: {len(lines)} WARNING/ERROR lines during the measurements; "
              f"first {min(limit, len(lines))}:")
        for ln in lines[:limit]:
            print(f"    {ln[:300]}")
