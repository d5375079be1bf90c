"""Node VMs: QEMU guests (TCG) running Debian's own kernel, for what this host's kernel cannot do (LVM, DRBD).

Each VM boots packaging/nodevm's kernel and initramfs (built by packaging/nodevm/build-nodevm.sh, cached in
CORRAL_NODEVM_DIR), sees this host's root file system read-only under a writable tmpfs overlay (so the checkout,
the venv and the Debian tools are all there), has its own empty disks for a volume group, and answers shell commands
over a virtio-serial control port. The VMs of a `NodeVMs` share one Ethernet segment through packaging/nodevm/hub.py
on 127.0.0.1 (their 10.99.0.x addresses exist only inside them); `cut`/`join` pull and put back a VM's cable, and
`power_off` kills its QEMU (a real node death). Every QEMU and the hub are started here and stopped by PID.
"""

from __future__ import annotations

import itertools
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
IMAGE_DIR = Path(os.environ.get("CORRAL_NODEVM_DIR", "/var/cache/corral/nodevm"))
SUBNET = "10.99.0"
BOOT_S = 90.0  # a node VM is usually ready in 5-12 s; three booting at once on 2 cores take longer


class NodeVMError(Exception):
    """A node VM did not boot, did not answer, or a command in it failed (the message says which and why)."""


@dataclass
class Result:
    rc: int
    out: str
    err: str


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build_image() -> Path:
    """The kernel and initramfs, built once and then reused while their STAMP matches."""
    subprocess.run([str(REPO / "packaging/nodevm/build-nodevm.sh"), str(IMAGE_DIR)], check=True,
                   capture_output=True, text=True, timeout=600)
    return IMAGE_DIR


@dataclass
class NodeVM:
    """One node VM: its QEMU, its console log, its control port."""

    name: str
    index: int
    root: Path
    hub_port: int
    disks: list[int] = field(default_factory=lambda: [2048])  # MiB each, sparse
    memory_mib: int = 384
    proc: subprocess.Popen[bytes] | None = None
    _sock: socket.socket | None = None
    _answers: dict[int, Result] = field(default_factory=dict)
    _arrived: threading.Condition = field(default_factory=threading.Condition)
    _ids: Any = field(default_factory=lambda: itertools.count(1))
    port: int = field(default_factory=free_udp_port)

    @property
    def address(self) -> str:
        return f"{SUBNET}.{self.index + 1}"

    @property
    def console(self) -> Path:
        return self.root / "console.log"

    def argv(self, image: Path) -> list[str]:
        append = (f"console=ttyS0 panic=-1 quiet corral.init={REPO}/packaging/nodevm/node-init "
                  f"corral.name={self.name} corral.ip={self.address}/24")
        argv = ["qemu-system-x86_64", "-name", f"nodevm-{self.name}", "-M", "q35", "-accel", "tcg,tb-size=64",
                "-smp", "1", "-m", str(self.memory_mib), "-nodefaults", "-no-user-config", "-display", "none",
                "-no-reboot", "-kernel", str(image / "vmlinux"), "-initrd", str(image / "initrd.img"),
                "-append", append, "-serial", f"file:{self.console}",
                "-fsdev", "local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap",
                "-device", "virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot",
                "-chardev", f"socket,id=ctl,path={self.root / 'ctl.sock'},server=on,wait=off",
                "-device", "virtio-serial-pci", "-device", "virtserialport,chardev=ctl,name=corral.ctl",
                "-netdev", f"dgram,id=net0,local.type=inet,local.host=127.0.0.1,local.port={self.port},"
                           f"remote.type=inet,remote.host=127.0.0.1,remote.port={self.hub_port}",
                "-device", f"virtio-net-pci,netdev=net0,mac=52:54:00:99:00:{self.index + 1:02x}"]
        for i, _ in enumerate(self.disks):
            argv += ["-drive", f"file={self.root / f'disk{i}.qcow2'},if=virtio,format=qcow2,cache=unsafe"]
        return argv

    def start(self, image: Path) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for i, size in enumerate(self.disks):
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(self.root / f"disk{i}.qcow2"),
                            f"{size}M"], check=True, timeout=30)
        self.console.write_bytes(b"")
        self.proc = subprocess.Popen(self.argv(image), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=open(self.root / "qemu.err", "wb"))

    def connect(self, deadline: float) -> None:
        """Wait for the control server's READY, then read its answers in a thread."""
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise NodeVMError(f"node VM {self.name} exited while booting: {self.tail()}")
            try:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.connect(str(self.root / "ctl.sock"))
                break
            except OSError:
                sock.close()
                time.sleep(0.2)
        else:
            raise NodeVMError(f"node VM {self.name}: no control socket within the boot time: {self.tail()}")
        sock.settimeout(max(1.0, deadline - time.monotonic()))
        pending = b""
        try:
            while b"READY\n" not in pending:
                chunk = sock.recv(4096)
                if not chunk:
                    raise NodeVMError(f"node VM {self.name} closed its control port: {self.tail()}")
                pending += chunk
        except TimeoutError:
            raise NodeVMError(f"node VM {self.name} did not get ready within {BOOT_S:.0f} s: {self.tail()}") from None
        sock.settimeout(None)
        self._sock = sock
        threading.Thread(target=self._read, args=(pending.split(b"READY\n", 1)[1],), daemon=True).start()

    def _read(self, pending: bytes) -> None:
        assert self._sock is not None
        while True:
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                if line.startswith(b"{"):
                    reply = json.loads(line)
                    with self._arrived:
                        self._answers[reply["id"]] = Result(reply["rc"], reply["out"], reply["err"])
                        self._arrived.notify_all()
            try:
                chunk = self._sock.recv(65536)
            except OSError:
                chunk = b""
            if not chunk:
                with self._arrived:
                    self._answers[0] = Result(-1, "", "control port closed")
                    self._arrived.notify_all()
                return
            pending += chunk

    def run(self, command: str, timeout: float = 60.0) -> Result:
        """Run a shell command in the VM; a daemon it starts must redirect its output (see control.py)."""
        if self._sock is None:
            raise NodeVMError(f"node VM {self.name} is not running")
        ident = next(self._ids)
        self._sock.sendall((json.dumps({"id": ident, "sh": command, "timeout": timeout}) + "\n").encode())
        deadline = time.monotonic() + timeout + 10
        with self._arrived:
            while ident not in self._answers:
                if 0 in self._answers:
                    raise NodeVMError(f"node VM {self.name} went away while running {command!r}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise NodeVMError(f"node VM {self.name} gave no answer to {command!r} within {timeout + 10:.0f} s")
                self._arrived.wait(left)
            return self._answers.pop(ident)

    def ok(self, command: str, timeout: float = 60.0) -> str:
        """Run a command that must succeed; its output."""
        result = self.run(command, timeout)
        if result.rc != 0:
            raise NodeVMError(f"in node VM {self.name}, {command!r} failed ({result.rc}): {result.err.strip()}")
        return result.out

    def tail(self, lines: int = 15) -> str:
        text = self.console.read_text(errors="replace") if self.console.exists() else ""
        return " | ".join(text.strip().splitlines()[-lines:])

    def power_off(self) -> None:
        """The node dies at once (its QEMU killed): no shutdown, nothing flushed beyond what its disks hold."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._answers.clear()


class NodeVMs:
    """N node VMs on one private Ethernet segment (packaging/nodevm/hub.py)."""

    def __init__(self, root: Path, names: list[str], disks: list[int] | None = None, memory_mib: int = 384) -> None:
        """`memory_mib`: 384 is enough for LVM and DRBD; an agent with its etcd needs about 1024."""
        self.root = root
        self.image = build_image()
        self.hub_port = free_udp_port()
        self.vms = {name: NodeVM(name, i, root / name, self.hub_port, disks=list(disks or [2048]),
                                 memory_mib=memory_mib) for i, name in enumerate(names)}
        self.hub: subprocess.Popen[str] | None = None

    def __getitem__(self, name: str) -> NodeVM:
        return self.vms[name]

    def start(self) -> None:
        ports = [str(vm.port) for vm in self.vms.values()]
        self.hub = subprocess.Popen(["python3", str(REPO / "packaging/nodevm/hub.py"), str(self.hub_port), *ports],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.hub.stdout is not None
        if self.hub.stdout.readline().strip() != "HUB-READY":
            raise NodeVMError("the node VMs' network hub did not start")
        for vm in self.vms.values():
            vm.start(self.image)
        deadline = time.monotonic() + BOOT_S
        for vm in self.vms.values():
            vm.connect(deadline)

    def _hub(self, verb: str, name: str) -> None:
        assert self.hub is not None and self.hub.stdin is not None and self.hub.stdout is not None
        self.hub.stdin.write(f"{verb} {self.vms[name].index}\n")
        self.hub.stdin.flush()
        self.hub.stdout.readline()

    def cut(self, name: str) -> None:
        """Pull the VM's network cable: it runs on, reaching no other VM."""
        self._hub("cut", name)

    def join(self, name: str) -> None:
        self._hub("join", name)

    def stop(self) -> None:
        for vm in self.vms.values():
            vm.power_off()
        if self.hub is not None and self.hub.poll() is None:
            self.hub.kill()
            self.hub.wait(timeout=30)


def quoted(*words: str) -> str:
    return " ".join(shlex.quote(w) for w in words)


NODE_PORTS = {"api": 7947, "gossip": 7946, "serf_rpc": 7373, "etcd_client": 2379, "etcd_peer": 2380}
JOIN_TRIES = 4
STATE = "/var/lib/corral-node"  # in the VM's overlay: gone when the VM stops
PYTHON = Path(os.environ.get("CORRAL_NODEVM_PYTHON", sys.executable))
GUEST = Path(os.environ.get("CORRAL_GUEST_DIR", "/var/cache/corral/guest"))  # the test guest, seen through the host root
IMAGE_OS = "busybox-guest"  # the test guest's disk as an image OS, named as `make demo` names it


def agent_config(vm: NodeVM, volume_group: str = "") -> str:
    """The agent's configuration inside a node VM: fixed ports (the VM is its own machine); leases twice the
    integration tests' (an agent under TCG stalls its event loop for a second at times), and 5 s for a TLS
    handshake with etcd (about 1 s, emulated). `volume_group`: for plain and drbd disks (the test makes it)."""
    ports = "\n".join(f"{k} = {v}" for k, v in NODE_PORTS.items())
    storage = f'\n[storage]\nvolume_group = "{volume_group}"\n' if volume_group else ""
    return f"""[node]
name = "{vm.name}"
address = "{vm.address}"

[ports]
{ports}

[paths]
state_dir = "{STATE}/state"
run_dir = "{STATE}/run"
log_dir = "{STATE}/log"
os_search_paths = ["{REPO}/packaging/os"]
image_paths = ["{STATE}/images"]

[agent]
report_interval_s = 2.0
master_lease_ttl_s = 10
etcd_connect_timeout_s = 5.0

[fencing]
node_lease_ttl_s = 20
{storage}"""


def start_agent(vm: NodeVM, volume_group: str = "") -> None:
    """Start a real corral-agent from this checkout in the VM (`wait_agent` waits until it answers), with the
    test guest's disk (`make guest`) as image OS IMAGE_OS."""
    vm.ok(f"mkdir -p {STATE}/images && cat > {STATE}/agent.toml <<'EOF_CONFIG'\n{agent_config(vm, volume_group)}"
          "EOF_CONFIG")
    vm.ok(f"ln -sf {GUEST}/base.qcow2 {STATE}/images/{IMAGE_OS}.qcow2")
    vm.ok(f"cd / && PYTHONPATH={REPO} setsid {PYTHON} -m hostagent.main --config {STATE}/agent.toml "
          f">{STATE}/agent.log 2>&1 </dev/null &")


def wait_agent(vm: NodeVM, within_s: float = 180) -> None:
    """Until the agent's CLI answers (an agent takes 20-40 s to start in an emulated VM)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if corral(vm, "cluster", "info").rc == 0:
            return
        time.sleep(1)
    raise NodeVMError(f"the agent in node VM {vm.name} did not answer within {within_s:.0f} s: "
                      + vm.run(f"tail -n 20 {STATE}/agent.log").out)


def corral(vm: NodeVM, *args: str, timeout: float = 300) -> Result:
    """The `corral` command line, run in the VM against its own agent."""
    return vm.run(f"CORRAL_SOCKET={STATE}/run/agent.sock PYTHONPATH={REPO} {PYTHON} -m cli.main {quoted(*args)}",
                  timeout)


def form_cluster(vms: NodeVMs, name: str = "vmc", volume_groups: dict[str, str] | None = None) -> None:
    """Agents on every VM, the first initializing the cluster and the others joining it with a token.
    `volume_groups`: VM name -> the volume group its agent uses (made beforehand)."""
    first, *others = vms.vms.values()
    for vm in vms.vms.values():
        start_agent(vm, (volume_groups or {}).get(vm.name, ""))
    for vm in vms.vms.values():
        wait_agent(vm)
    ok(first, "cluster", "init", "--name", name, "--hv", "accel=tcg")
    for vm in others:
        token = json.loads(ok(first, "node", "add", vm.name, "--address", vm.address, "--json"))["token"]
        join = ("cluster", "join", f"{first.address}:{NODE_PORTS['api']}", "--token", token)
        for attempt in range(JOIN_TRIES):  # a new etcd member catching up under emulation can cost the quorum a while
            result = corral(vm, *join)
            if result.rc == 0:
                break
            if "no quorum" not in result.err + result.out or attempt == JOIN_TRIES - 1:
                raise NodeVMError(f"node VM {vm.name} did not join: {result.err.strip() or result.out.strip()}")
            time.sleep(10)


def ok(vm: NodeVM, *args: str, timeout: float = 300) -> str:
    """`corral ARGS` in the VM, which must succeed; its output."""
    result = corral(vm, *args, timeout=timeout)
    if result.rc != 0:
        raise NodeVMError(f"in node VM {vm.name}, corral {' '.join(args)} failed ({result.rc}): "
                          f"{result.err.strip() or result.out.strip()}")
    return result.out
