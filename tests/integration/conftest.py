"""Fixtures that run real Corral agents (real etcd, Serf, QEMU) on 127.0.0.1.

Time limits. Every wait here and in the tests is bounded and says what it
waited for (`wait_for`, subprocess and CLI timeouts, boot and drill waits).
pytest-timeout times the test body only (`timeout_func_only` in
pyproject.toml): a fixture's setup, such as forming a module's cluster or
building the guest, is not counted against the first test that uses it, and
is bounded by its own waits. A test's limit (300 s, or its `timeout` mark)
covers the sum of its own bounded waits plus a margin for its quick calls
(a CLI command or HTTP request counted at what it takes, not at its hang
guard), so that a slow but healthy run fails on the wait that is slow, with
its message, and never on the pytest-timeout kill, which stays for hangs.

Order. A test passes when run alone: what it needs it makes, or gets from a
fixture that makes it, never from an earlier test of its file.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from election.etcd import EtcdClient
from election_support import EtcdMember, etcd_cluster
from netns_support import NODE_PORTS, Switch

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
GUEST_DIR = Path(os.environ.get("CORRAL_GUEST_DIR", "/var/cache/corral/guest"))


LVM_ARGS = ("--driverloaded", "n")  # no device-mapper here: LVM edits metadata, never activates
PV_MIB = 512
MIB = 2**20


def lvm(program: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [program, *LVM_ARGS, *args], check=check, capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def vg(tmp_path: Path) -> Iterator[str]:
    """A fresh volume group on a sparse file behind a loop device.

    Teardown runs even when setup or the test fails half-way: the VG is
    removed, then the loop device this fixture attached (by its name).
    """
    backing = tmp_path / "pv.img"
    with open(backing, "wb") as f:
        f.truncate(PV_MIB * MIB)
    device = subprocess.run(
        ["losetup", "--find", "--show", str(backing)],
        check=True, capture_output=True, text=True, timeout=30,
    ).stdout.strip()
    name = f"corraltest{secrets.token_hex(4)}"
    try:
        lvm("pvcreate", device)
        lvm("vgcreate", name, device)
        yield name
    finally:
        lvm("vgremove", "-f", name, check=False)
        lvm("pvremove", "-ff", "-y", device, check=False)
        subprocess.run(["losetup", "-d", device], check=True, timeout=30)
        os.unlink(backing)


_HANDED_OUT: set[int] = set()


def free_port(address: str = "127.0.0.1") -> int:
    """A port free now and not handed out before in this run (the kernel may offer one twice)."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind((address, 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
    raise RuntimeError("no free port that was not handed out already")


def wait_for(predicate, timeout_s: float, what: str, interval_s: float = 0.2):
    """Poll `predicate` until it returns something truthy; bounded in time."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(interval_s)


def wait_until(predicate, timeout_s: float = 10.0, interval_s: float = 0.1) -> bool:
    """Bounded polling helper: True once predicate() holds, False at the deadline."""
    deadline = time.monotonic() + timeout_s
    for _ in range(int(timeout_s / interval_s) + 1):
        if predicate():
            return True
        if time.monotonic() >= deadline:
            break
        time.sleep(interval_s)
    return bool(predicate())


def read_image_mib(image: str, fmt: str, offset_mib: int) -> bytes:
    """One MiB of a disk image as the guest sees it (qemu-img, -U: QEMU may hold the image open)."""
    raw = image + ".read"
    subprocess.run(["qemu-img", "convert", "-U", "-f", fmt, "-O", "raw", image, raw], check=True, timeout=60)
    try:
        with open(raw, "rb") as f:
            f.seek(offset_mib * 2**20)
            return f.read(2**20)
    finally:
        os.unlink(raw)


def is_gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@dataclass
class AgentNode:
    """One corral-agent process with its own dirs and ports.

    `netns`: run the agent (and so its etcd, Serf and QEMUs) in that network namespace
    (tests/integration/netns_support.py), where `address` lives and the ports are fixed.
    """

    root: Path
    name: str = "n1"
    address: str = "127.0.0.1"
    proc: subprocess.Popen | None = None
    ports: dict = field(default_factory=dict)
    netns: str | None = None

    def __post_init__(self) -> None:
        self.ports = dict(NODE_PORTS) if self.netns else \
            {k: free_port(self.address) for k in ("api", "rapi", "gossip", "serf_rpc", "etcd_client", "etcd_peer")}
        (self.root / "images").mkdir(parents=True, exist_ok=True)
        image = self.root / "images" / "busybox-guest.qcow2"
        if not image.exists():
            image.symlink_to(GUEST_DIR / "base.qcow2")
        ports = "\n".join(f"{k} = {v}" for k, v in self.ports.items())
        self.config.write_text(f"""[node]
name = "{self.name}"
address = "{self.address}"

[ports]
{ports}

[paths]
state_dir = "{self.root}/state"
run_dir = "{self.root}/run"
log_dir = "{self.root}/log"
os_search_paths = ["{REPO}/packaging/os"]
image_paths = ["{self.root}/images"]
kernel_dirs = ["{GUEST_DIR}", "{self.root}/kernels"]

[agent]
report_interval_s = 1.0
master_lease_ttl_s = 5
drills = true
access_log = {str(bool(self.netns)).lower()}

[fencing]
node_lease_ttl_s = 12
""")

    @property
    def config(self) -> Path:
        return self.root / "agent.toml"

    @property
    def socket(self) -> str:
        return str(self.root / "run" / "agent.sock")

    def start(self, supervised: bool = False, new_session: bool = False) -> None:
        """Start the agent; `supervised` runs it under packaging/supervise-agent.sh (restart on death);
        `new_session`: in a session of its own, as under systemd (then its session's scheduler group is its own,
        hostagent/node/priority.py), instead of the caller's."""
        log = open(self.root / "agent.log", "ab")
        argv = [str(BIN / "corral-agent"), "--config", str(self.config)]
        if supervised:
            argv = [str(REPO / "packaging" / "supervise-agent.sh"), *argv]
        if self.netns:
            argv = ["ip", "netns", "exec", self.netns, *argv]  # ip execs the agent: proc.pid is still its pid
        self.proc = subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                     start_new_session=new_session)
        wait_for(lambda: self._answers(), 30, f"agent {self.name} to answer on its socket")

    def agent_pid(self) -> int:
        """The agent's own pid (under supervision, proc is the supervisor)."""
        return int((self.root / "state" / "agent.lock").read_text().strip())

    def wait_fresh_report(self, timeout_s: float = 30) -> None:
        """Wait until the replica holds a node report made after this call began."""
        since = time.time()

        def fresh() -> bool:
            rows = [n for n in self.json("node", "list") if n["name"] == self.name]
            return bool(rows) and rows[0]["report_age_s"] is not None and \
                rows[0]["report_age_s"] < time.time() - since
        wait_for(fresh, timeout_s, f"a fresh report from node {self.name}")

    def _answers(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"agent exited with {self.proc.returncode}: {self.log_tail()}")
        return self.corral("cluster", "info").returncode == 0

    def log_tail(self, n: int = 30) -> str:
        return "\n".join((self.root / "agent.log").read_text(errors="replace").splitlines()[-n:])

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def child_pids(self) -> list[int]:
        """This agent's serf and etcd (its only children; QEMU is daemonized away)."""
        try:
            return [c.pid for c in psutil.Process(self.agent_pid()).children()]
        except psutil.NoSuchProcess:
            return []

    def freeze(self) -> list[int]:
        """SIGSTOP the agent and its serf and etcd, like a hung machine; returns the pids."""
        pids = [self.agent_pid(), *self.child_pids()]
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        return pids

    def thaw(self, pids: list[int]) -> None:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass

    @property
    def api(self) -> str:
        return f"{self.address}:{self.ports['api']}"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def corral(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        env = {**os.environ, "CORRAL_SOCKET": self.socket}
        return subprocess.run([str(BIN / "corral"), *args], capture_output=True, text=True, env=env,
                              timeout=timeout)

    def ok(self, *args: str) -> str:
        result = self.corral(*args)
        assert result.returncode == 0, f"corral {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
        return result.stdout

    def json(self, *args: str):
        return json.loads(self.ok(*args, "--json"))

    def instance(self, name: str) -> dict:
        return next(i for i in self.json("instance", "list") if i["name"] == name)

    def console_log(self, instance: str) -> str:
        logs = sorted({*(self.root / "log").rglob(f"*{instance}*console*"),  # one file may match both: once
                       *(self.root / "log").rglob(f"{instance}*.log")})
        return "".join(p.read_text(errors="replace") for p in logs if p.is_file())

    def qemu_pids(self) -> list[int]:
        """QEMUs, qemu-storage-daemon disk exports and the fence keeper of this node (by their pidfiles)."""
        pids = []
        run = self.root / "run"
        for pidfile in [*run.rglob("qemu.pid"), *(run / "replication").glob("*.pid"), *run.glob("fence-keeper.pid")]:
            try:
                pids.append(int(pidfile.read_text().strip()))
            except ValueError:
                pass
        return pids

    def kill_qemus(self) -> None:
        """Teardown, or a node's power loss: kill the QEMUs, disk exports and fence keeper of this node.

        Found by pidfile and checked by command line, so nothing else is touched."""
        for pid in self.qemu_pids():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if str(self.root).encode() in cmdline:
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
async def member(tmp_path: Path):
    """One real etcd member on 127.0.0.1, stopped by PID at teardown."""
    async with etcd_cluster(tmp_path) as members:
        yield members[0]


@pytest.fixture
async def client(member: EtcdMember):
    async with EtcdClient([member.client_url]) as c:
        yield c


@pytest.fixture
def root():
    """A short temp dir under /tmp: unix socket paths must stay under 108 bytes."""
    path = tempfile.mkdtemp(prefix="ct-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def started(root: str):
    """Pids of processes a test started (QEMU, storage daemon); teardown kills those still alive.

    Only processes whose command line names this test's `root` are touched; a
    frozen one is thawed first so that it can die.
    """
    pids: list[int] = []
    yield pids
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            if root not in " ".join(proc.cmdline()):
                continue
            proc.send_signal(signal.SIGCONT)
            proc.kill()
        except psutil.Error:
            continue
        wait_until(lambda: is_gone(pid), timeout_s=5)


def console_answer(node: AgentNode, name: str) -> bytes:
    """What `corral instance console` shows within 30 s of typing `echo hi-$((6*7))`, then Ctrl-]."""
    proc = subprocess.Popen([str(BIN / "corral"), "instance", "console", name], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "CORRAL_SOCKET": node.socket})
    seen = b""
    try:
        deadline = time.monotonic() + 30
        while b"hi-42" not in seen and time.monotonic() < deadline:
            proc.stdin.write(b"echo hi-$((6*7))\n")
            proc.stdin.flush()
            ready, _, _ = select.select([proc.stdout], [], [], 1.0)
            if ready:
                seen += os.read(proc.stdout.fileno(), 4096)
        proc.stdin.write(b"\x1d")
        proc.stdin.flush()
        assert proc.wait(timeout=10) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    return seen


@pytest.fixture(scope="module")
def guest_dir() -> Path:
    for name in ("vmlinuz", "initrd.img", "base.qcow2"):
        if not (GUEST_DIR / name).exists():
            raise AssertionError(f"test guest missing: {GUEST_DIR / name}; run `make guest`")
    return GUEST_DIR


def boots(node: AgentNode, name: str) -> list[int]:
    """The count the test guest printed at each boot (it keeps one on its disk)."""
    return [int(n) for n in re.findall(r"CORRAL-GUEST-BOOTED count=(\d+)", node.console_log(name))]


def wait_boot_count(node: AgentNode, name: str, count: int, timeout_s: float = 90) -> None:
    wait_for(lambda: count in boots(node, name), timeout_s,
             f"'{name}' to print CORRAL-GUEST-BOOTED count={count} (console so far: {boots(node, name)})")


@contextlib.contextmanager
def one_node_cluster(node: AgentNode, guest_dir: Path, name: str = "t1", kernel_args: str = "quiet",
                     *init_args: str) -> Iterator[AgentNode]:
    """`node` started and initialized as a one-node cluster with TCG guests and the test guest kernel as
    defaults (edit its config before); stopped, with its QEMUs, at the end."""
    node.start()
    try:
        node.ok("cluster", "init", "--name", name, "--hv",
                f"accel=tcg,kernel_path={guest_dir}/vmlinuz,initrd_path={guest_dir}/initrd.img,"
                f"kernel_args={kernel_args},shutdown_timeout_s=30", *init_args)
        yield node
    finally:
        node.stop()
        node.kill_qemus()


@pytest.fixture(scope="module")
def one_node(tmp_path_factory, guest_dir):
    """A one-node cluster initialized with TCG guests and the test guest kernel as defaults."""
    with one_node_cluster(AgentNode(tmp_path_factory.mktemp("cluster")), guest_dir, "t1", "quiet",
                          "--restart-backoff", "0.5") as node:
        yield node


class Cluster:
    """N agents on 127.0.0.1..N, formed by init on the first and join on the others."""

    def __init__(self, root: Path, size: int, supervised: bool = False, subnet: str = "127.0.0",
                 switch: Switch | None = None) -> None:
        """`subnet`: another 127.x.y lets a module's cluster keep its fixed ports (disk exports) to itself.
        `switch`: each node in a network namespace of its own on that switch instead (real partitions)."""
        self.nodes: list[AgentNode] = []
        for i in range(1, size + 1):
            netns, address = switch.add(f"n{i}", i) if switch else (None, f"{subnet}.{i}")
            self.nodes.append(AgentNode(root / f"n{i}", name=f"n{i}", address=address, netns=netns))
        self.supervised = supervised

    def __getitem__(self, name: str) -> AgentNode:
        return next(n for n in self.nodes if n.name == name)

    def form(self, hv: str = "accel=tcg", candidates: int = 3, *init_args: str) -> None:
        first = self.nodes[0]
        first.start(self.supervised)
        first.ok("cluster", "init", "--name", "multi", "--hv", hv, "--candidates", str(candidates), *init_args)
        for node in self.nodes[1:]:
            self.join(node)

    def join(self, node: AgentNode, via: AgentNode | None = None) -> None:
        via = via or self.alive()[0]
        token = via.json("node", "add", node.name, "--address", node.address)["token"]
        node.start(self.supervised)
        node.ok("cluster", "join", via.api, "--token", token)

    def alive(self) -> list[AgentNode]:
        return [n for n in self.nodes if n.proc is not None and n.proc.poll() is None]

    def master(self, asked: AgentNode | None = None) -> str | None:
        return (asked or self.alive()[0]).json("cluster", "info")["master"]

    def wait_candidates(self, count: int, timeout_s: float = 90) -> list[str]:
        def ready():
            info = self.alive()[0].json("cluster", "info")
            return info["candidates"] if len(info["candidates"]) == count and info["quorum"]["ok"] else None
        return wait_for(ready, timeout_s, f"{count} master candidates")

    def checksums(self) -> dict[str, str]:
        return {n.name: n.json("cluster", "replica")["checksum"] for n in self.alive()}

    def wait_replicas_agree(self, timeout_s: float = 30) -> str:
        def agree():
            sums = set(self.checksums().values())
            return sums.pop() if len(sums) == 1 else None
        return wait_for(agree, timeout_s, "every node's replica to have the same checksum")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
            node.kill_qemus()


@contextlib.contextmanager
def formed(root: Path, size: int, **options: Any) -> Iterator[Cluster]:
    """A cluster of `size` nodes, every one a candidate, stopped afterwards whatever happens."""
    cluster = Cluster(root, size, **options)
    try:
        cluster.form()
        cluster.wait_candidates(size)
        yield cluster
    finally:
        cluster.stop()


def in_sync(node: AgentNode, names: list[str]) -> bool:
    """Every named instance runs and its copy is in sync."""
    rows = {r["name"]: r for r in node.json("instance", "list")}
    return all(rows[n]["status"] == "running" and node.json("instance", "info", n)["replication"]["in_sync"]
               for n in names)


def pile_up(node: AgentNode, names: list[str], *guest: str) -> None:
    """`mirror` instances all on n1:n2 (n3 holds nothing), running with their copies in sync: a cluster for a
    balancer to even out."""
    for job in [node.ok("instance", "add", name, *guest, "--disk-template", "mirror", "--node", "n1:n2",
                        "--submit").strip() for name in names]:
        node.ok("job", "watch", job)
    wait_for(lambda: in_sync(node, names), 120, "the copies to be in sync")


@contextlib.contextmanager
def guest_cluster(root: Path, size: int, guest_dir: Path, kernel_args: str = "quiet") -> Iterator[Cluster]:
    """`size` agents (one candidate) whose instances boot the test guest under TCG, stopped afterwards whatever
    happens."""
    cluster = Cluster(root, size)
    try:
        cluster.form(f"accel=tcg,kernel_path={guest_dir}/vmlinuz,initrd_path={guest_dir}/initrd.img,"
                     f"kernel_args={kernel_args},shutdown_timeout_s=5", 1)
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def cluster3(tmp_path_factory):
    with formed(tmp_path_factory.mktemp("c3"), 3) as cluster:
        yield cluster
