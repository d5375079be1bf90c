"""Node VMs: QEMU guests (TCG) running Debian's own kernel, for what this host's kernel cannot do (LVM, DRBD).

Each VM boots packaging/nodevm's kernel and initramfs (built by packaging/nodevm/build-nodevm.sh, cached in
CORRAL_NODEVM_DIR), sees this host's root file system read-only under a writable tmpfs overlay (so the checkout,
the venv and the Debian tools are all there), has its own empty disks for a volume group (/dev/vda, ...), and
answers shell commands and `corral` calls over a virtio-serial control port (packaging/nodevm/control.py). The VMs
of a `NodeVMs` share one Ethernet segment through packaging/nodevm/hub.py on 127.0.0.1 (their 10.99.0.x addresses
exist only inside them); `cut`/`join` pull and put back a VM's cable, and `power_off` kills its QEMU (a real node
death). Every QEMU and the hub are started here and stopped by PID.

A node that comes back: with `NodeVMs(..., state_disk=True)` each VM also has a small ext4 disk mounted at STATE
(the agent's config, identity, certificates and etcd data), and after `vm.power_off()`, `vm.boot_again()` boots
the same VM (name, address, disks) and waits until it answers. It comes back as a real node does after a power
cut: its disks as it last wrote them (volume groups activated again, LVs and DRBD metadata there; writes still
in the guest's page cache are lost, so `sync` what a test must find), STATE as it was, and everything else
(/etc, /tmp, /run, STATE/run, loaded DRBD resources) fresh. Start its agent again with `start_agent`:

    vms = NodeVMs(tmp_path, ["n1", "n2"], memory_mib=1024, state_disk=True)
    ...
    vms["n2"].power_off()          # the node dies
    vms["n2"].boot_again()         # and boots again
    start_agent(vms["n2"], "vg0")  # the same agent.toml; it rejoins with its own identity
"""
from __future__ import annotations

import atexit
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
STATE = "/var/lib/corral-node"  # the agent's files in a VM: in its tmpfs overlay, or on its state disk
STATE_SERIAL = "corral-state"  # how packaging/nodevm/node-init finds the state disk
STATE_DISK_MIB = 1024  # sparse; etcd alone preallocates 64 MiB write-ahead log files


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
    state_disk: bool = False  # STATE on a disk of its own, kept across power_off() and boot_again()
    image: Path | None = None  # the kernel and initramfs it booted
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
        append = (f"console=ttyS0 panic=-1 quiet no_timer_check corral.init={REPO}/packaging/nodevm/node-init "
                  f"corral.name={self.name} corral.ip={self.address}/24"
                  + (f" corral.state={STATE}" if self.state_disk else ""))
        argv = ["qemu-system-x86_64", "-name", f"nodevm-{self.name}", "-M", "q35", "-accel", "tcg,tb-size=64",
                "-smp", "1", "-m", str(self.memory_mib), "-nodefaults", "-no-user-config", "-display", "none",
                "-no-reboot", "-kernel", str(image / "vmlinux"), "-initrd", str(image / "initrd.img"),
                "-append", append, "-chardev", f"file,id=console,path={self.console},append=on",
                "-serial", "chardev:console",
                "-fsdev", "local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap",
                "-device", "virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot",
                "-chardev", f"socket,id=ctl,path={self.root / 'ctl.sock'},server=on,wait=off",
                "-device", "virtio-serial-pci", "-device", "virtserialport,chardev=ctl,name=corral.ctl",
                "-netdev", f"dgram,id=net0,local.type=inet,local.host=127.0.0.1,local.port={self.port},"
                           f"remote.type=inet,remote.host=127.0.0.1,remote.port={self.hub_port}",
                "-device", f"virtio-net-pci,netdev=net0,mac=52:54:00:99:00:{self.index + 1:02x}"]
        # Raw files: whatever the guest wrote is in the file the moment QEMU acknowledged it (cache=unsafe only
        # skips the host's fsync), so a VM killed by power_off() finds its disks as it left them.
        # Disks named in this order in the VM (PCI slots follow the command line): the data disks /dev/vda, ...,
        # then the state disk.
        for i, _ in enumerate(self.disks):
            argv += ["-drive", f"file={self.root / f'disk{i}.raw'},if=none,id=disk{i},format=raw,cache=unsafe",
                     "-device", f"virtio-blk-pci,drive=disk{i}"]
        if self.state_disk:
            argv += ["-drive", f"file={self.state_file},if=none,id=state,format=raw,cache=unsafe",
                     "-device", f"virtio-blk-pci,drive=state,serial={STATE_SERIAL}"]
        return argv

    @property
    def state_file(self) -> Path:
        return self.root / "state.ext4"

    def start(self, image: Path) -> None:
        """Make its empty disks (the state disk formatted, on this host) and boot it; `connect` waits for it."""
        self.root.mkdir(parents=True, exist_ok=True)
        for i, size in enumerate(self.disks):
            with open(self.root / f"disk{i}.raw", "wb") as disk:
                disk.truncate(size * 2**20)  # sparse
        if self.state_disk:
            subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "corral-state", "-E", "lazy_itable_init=0",
                            str(self.state_file), f"{STATE_DISK_MIB}M"], check=True, capture_output=True, timeout=60)
        self.console.write_bytes(b"")
        self.image = image
        self._launch()

    def _launch(self) -> None:
        assert self.image is not None
        with open(self.root / "qemu.err", "ab") as err:
            self.proc = subprocess.Popen(self.argv(self.image), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=err)

    def boot_again(self) -> None:
        """Boot the VM again after `power_off()`, with the same disks, name and address; returns once it answers.
        What it keeps is what a real node keeps over a power cut: its disks (volume groups, activated again
        at boot, with their LVs and DRBD metadata) and, with `state_disk`, STATE (the agent's identity and
        config; STATE/run is a fresh tmpfs, as /run is). Its agent is not started: `start_agent` as before."""
        if self.image is None:
            raise NodeVMError(f"node VM {self.name} was never started")
        if self.proc is not None and self.proc.poll() is None:
            raise NodeVMError(f"node VM {self.name} is still running: power_off() it first")
        self._launch()
        self.connect(time.monotonic() + BOOT_S)

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
        with self._arrived:
            self._answers.clear()
            self._sock = sock
        threading.Thread(target=self._read, args=(sock, pending.split(b"READY\n", 1)[1]), daemon=True).start()

    def _read(self, sock: socket.socket, pending: bytes) -> None:
        """The answers arriving on this boot's control connection, until it closes."""
        while True:
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                if line.startswith(b"{"):
                    reply = json.loads(line)
                    with self._arrived:
                        self._answers[reply["id"]] = Result(reply["rc"], reply["out"], reply["err"])
                        self._arrived.notify_all()
            try:
                chunk = sock.recv(65536)
            except OSError:
                chunk = b""
            if not chunk:
                with self._arrived:
                    if self._sock is sock:  # not a connection power_off() closed (a later boot may have a new one)
                        self._answers[0] = Result(-1, "", "control port closed")
                        self._arrived.notify_all()
                return
            pending += chunk

    def run(self, command: str, timeout: float = 60.0) -> Result:
        """Run a shell command in the VM; a daemon it starts must redirect its output (see control.py)."""
        return self.request({"sh": command}, timeout, repr(command))

    def request(self, request: dict[str, Any], timeout: float, what: str) -> Result:
        """One request to the VM's control server (packaging/nodevm/control.py) and its answer."""
        if self._sock is None:
            raise NodeVMError(f"node VM {self.name} is not running")
        ident = next(self._ids)
        self._sock.sendall((json.dumps({**request, "id": ident, "timeout": timeout}) + "\n").encode())
        deadline = time.monotonic() + timeout + 10
        with self._arrived:
            while ident not in self._answers:
                if 0 in self._answers:
                    raise NodeVMError(f"node VM {self.name} went away while running {what}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise NodeVMError(f"node VM {self.name} gave no answer to {what} within {timeout + 10:.0f} s")
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
        with self._arrived:
            sock, self._sock = self._sock, None
            self._answers.clear()
        if sock is not None:
            sock.close()


class NodeVMs:
    """N node VMs on one private Ethernet segment (packaging/nodevm/hub.py)."""

    def __init__(self, root: Path, names: list[str], disks: list[int] | None = None, memory_mib: int = 384,
                 state_disk: bool = False) -> None:
        """`memory_mib`: 384 is enough for LVM and DRBD; an agent with its etcd needs about 1024. `state_disk`:
        each VM keeps STATE on a disk of its own, for tests that power a node off and boot it again."""
        self.root = root
        self.image = build_image()
        self.hub_port = free_udp_port()
        self.vms = {name: NodeVM(name, i, root / name, self.hub_port, disks=list(disks or [2048]),
                                 memory_mib=memory_mib, state_disk=state_disk) for i, name in enumerate(names)}
        self.hub: subprocess.Popen[str] | None = None

    def __getitem__(self, name: str) -> NodeVM:
        return self.vms[name]

    def start(self) -> None:
        atexit.register(self.stop)  # a teardown that never ran must not leave VMs eating the CPU of later runs
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
PYTHON = Path(os.environ.get("CORRAL_NODEVM_PYTHON", sys.executable))
GUEST = Path(os.environ.get("CORRAL_GUEST_DIR", "/var/cache/corral/guest"))  # the test guest, seen through the host root
IMAGE_OS = "busybox-guest"  # the test guest's disk as an image OS, named as `make demo` names it


def agent_config(vm: NodeVM, volume_group: str = "") -> str:
    """The agent's configuration inside a node VM: fixed ports (the VM is its own machine). Everything an
    emulated CPU makes slow is given room: the master lease 15 s (a VM busy with a resync in its kernel can
    leave its agent without the CPU for seconds), a report every 3 s, 5 s for a TLS handshake with etcd (about
    1 s, emulated), etcd's Raft heartbeat 4 times slower than production's, and QMP 4 times more patient and
    a QEMU start 4 times (a QEMU nested in an emulated VM took over 10 s to load TLS credentials for a
    migration, and over 30 s to start while its VM resynced). `volume_group`: for plain and
    drbd disks (the test makes it)."""
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
report_interval_s = 3.0
master_lease_ttl_s = 15
etcd_connect_timeout_s = 5.0
etcd_heartbeat_ms = 400
etcd_election_timeout_ms = 4000
qmp_timeout_s = 20.0
qemu_start_timeout_s = 120.0

[fencing]
node_lease_ttl_s = 20
{storage}"""


def start_agent(vm: NodeVM, volume_group: str = "") -> None:
    """Start a real corral-agent from this checkout in the VM (`wait_agent` waits until it answers), with the
    test guest's disk (`make guest`) as image OS IMAGE_OS."""
    vm.ok(f"mkdir -p {STATE}/images && cat > {STATE}/agent.toml <<'EOF_CONFIG'\n{agent_config(vm, volume_group)}"
          "EOF_CONFIG")
    vm.ok(f"ln -sf {GUEST}/base.qcow2 {STATE}/images/{IMAGE_OS}.qcow2")
    # Started at nice 10: the agent raises itself (hostagent.node.priority) and starts its QEMUs at 10, so a nested
    # guest, which boots for minutes under TCG and never matters to a test, leaves the VM's one CPU to the agent
    # and the test's commands (3-10 times faster once an instance runs).
    vm.ok(f"cd / && PYTHONPATH={REPO} setsid nice -n 10 {PYTHON} -m hostagent.main --config {STATE}/agent.toml "
          f">>{STATE}/agent.log 2>&1 </dev/null &")


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
    """The `corral` command line, run in the VM against its own agent: forked from a CLI process that imported
    it once (packaging/nodevm/cli_server.py), as a fresh Python there takes about 5 s to start it."""
    return vm.request({"corral": list(args), "python": str(PYTHON), "env": {"CORRAL_SOCKET": f"{STATE}/run/agent.sock"}},
                      timeout, f"corral {' '.join(args)}")


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
    count = min(3, len(vms.vms))
    wait_settled(first, count if count % 2 else count - 1)  # the pool stays odd (hostagent.master.decide.pool)


def wait_settled(vm: NodeVM, candidates: int, within_s: float = 240) -> None:
    """Until the master has grown its candidate pool (each new etcd member a moment when the quorum hangs on a
    member still catching up: emulated, long enough to cost the master its lease) and etcd has a leader."""
    deadline, info = time.monotonic() + within_s, {}
    while time.monotonic() < deadline:
        result = corral(vm, "cluster", "info", "--json")
        if result.rc == 0:
            info = json.loads(result.out)
            if len(info.get("candidates") or []) >= candidates and (info.get("quorum") or {}).get("ok"):
                return
        time.sleep(2)
    raise NodeVMError(f"the cluster did not settle on {candidates} master candidates within {within_s:.0f} s: "
                      f"{info.get('candidates')}, quorum {info.get('quorum')}")


def ok(vm: NodeVM, *args: str, timeout: float = 300) -> str:
    """`corral ARGS` in the VM, which must succeed; its output."""
    result = corral(vm, *args, timeout=timeout)
    if result.rc != 0:
        raise NodeVMError(f"in node VM {vm.name}, corral {' '.join(args)} failed ({result.rc}): "
                          f"{result.err.strip() or result.out.strip()}")
    return result.out


def query_block(vm: NodeVM, name: str) -> dict[str, dict]:
    """QMP query-block of the instance's QEMU: image file -> its inserted medium (drv, image)."""
    # The standard library only, without site: importing the venv's asyncio and QMP client took 5-15 s a call
    # in a loaded VM. The reply to query-block is the first line holding a "return" (events may come first).
    script = ("import json, socket, sys\n"
              "s = socket.socket(socket.AF_UNIX)\ns.settimeout(120)\ns.connect(sys.argv[1])\nf = s.makefile('rwb')\n"
              "def ask(cmd):\n"
              "    f.write(json.dumps({'execute': cmd}).encode() + b'\\n')\n    f.flush()\n"
              "    while True:\n"
              "        line = json.loads(f.readline())\n"
              "        if 'return' in line or 'error' in line:\n            return line\n"
              "f.readline()\nask('qmp_capabilities')\nprint(json.dumps(ask('query-block')['return']))\n")
    out = vm.ok(quoted("/usr/bin/python3", "-I", "-S", "-c", script, f"{STATE}/run/instances/{name}/qmp.sock"),
                timeout=180)  # the agent's reports share QMP
    return {b["inserted"]["file"]: b["inserted"] for b in json.loads(out) if b.get("inserted")}
