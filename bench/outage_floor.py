"""The floor of bench/outage_recovery.py: the same guests' QEMU command lines, read from /proc while Corral
ran them, started again by a plain script with no agents and no etcd, all at once or paced as the restart
policy paces them, and timed until every console shows the boot marker; then the report of Corral's time
as a ratio to each floor.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchcluster import ChildLedger, Cluster, wait_gone

from hostagent.master.decide.restarts import Policy
from hostagent.node.loadgauge import LoadGauge

BOOTED = re.compile(r"CORRAL-GUEST-BOOTED count=(\d+)")
BOOT_STALL_S = 90.0
GONE_TIMEOUT_S = 60  # a SIGKILLed TCG QEMU has taken over 20 s to be gone at a host load of 14 on 2 CPUs
FLOOR_POLL_S = 0.1
FLOOR_LAUNCH_TIMEOUT_S = 30.0  # a floor QEMU's parent exits once it has daemonized (Corral's qemu_start_timeout_s)


class Failure(Exception):
    """Corral did not do what the benchmark waits for; the message says what."""


def fmt(v: float | None) -> str:
    return "not within the deadline" if v is None else f"{v:6.1f} s"


@dataclass
class Floor:
    """The same guests started by a plain script: no agents, no etcd, the same QEMU command lines."""

    label: str
    instances: int
    load_at_start: float
    booted: float | None = None
    first: float | None = None
    booted_count: int = 0
    launch_failures: list[str] = field(default_factory=list)
    max_under_way: int = 0  # most guests launched and not yet booted at one time (all nodes)
    last_marker: float | None = None  # the last marker seen, whether or not every guest booted
    panicked: int = 0  # guests whose console shows a kernel panic and no marker at the end
    relaunched: int = 0  # QEMUs killed and started again after a kernel panic
    peak_load: float = 0.0


# ---- the guests --------------------------------------------------------------------


def qemu_argvs(cluster: Cluster, placement: dict[str, str]) -> dict[str, list[str]]:
    """Each instance's QEMU command line as Corral launched it, from /proc (before the power cut)."""
    out = {}
    for name, node_name in placement.items():
        pidfile = cluster[node_name].root / "run" / "instances" / name / "qemu.pid"
        try:
            pid = int(pidfile.read_text().strip())
            argv = [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")]
        except (OSError, ValueError) as exc:
            raise Failure(f"cannot read the QEMU command line of {name}: {exc}") from None
        if not any(str(pidfile) in a for a in argv):
            raise Failure(f"pid {pid} in {pidfile} is not {name}'s QEMU: {' '.join(argv)[:200]}")
        out[name] = argv
    return out


@dataclass
class FloorGuest:
    name: str
    node: str
    argv: list[str]
    pidfile: Path
    console: Path
    launched: float | None = None
    booted: float | None = None
    parent: subprocess.Popen[bytes] | None = None
    console_from: int = 0  # where this launch's console output begins (after a relaunch)
    parent_at: float = 0.0  # monotonic time of the latest launch


def kill_floor_qemu(g: FloorGuest, ledger: ChildLedger) -> int | None:
    """SIGKILL the guest's floor QEMU (its pid from its pidfile, noted in the ledger); the pid if it was there."""
    pid = floor_pid(g)
    if pid is None:
        return None
    ledger.pids.add(pid)
    try:
        os.kill(pid, 9)
    except ProcessLookupError:
        return None
    return pid


def relaunch(g: FloorGuest, ledger: ChildLedger, console_size: int) -> None:
    """A guest whose kernel panicked (pvpanic pauses it) is killed and started again."""
    pid = kill_floor_qemu(g, ledger)
    if pid is not None:
        wait_gone([pid], GONE_TIMEOUT_S, f"floor QEMU of {g.name} after its kernel panic")
    g.console_from, g.parent_at = console_size, time.monotonic()
    g.parent = subprocess.Popen(g.argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)


def floor_guests(cluster: Cluster, placement: dict[str, str], argvs: dict[str, list[str]],
                 root: Path) -> list[FloorGuest]:
    """Corral's command lines with only the node's run and log directories moved under `root` (pidfile, QMP
    and console sockets, console log): same binary, accel, machine, memory, kernel, initrd and disk files."""
    guests = []
    for name, node_name in placement.items():
        node = cluster[node_name]
        moves = {str(node.root / "run"): str(root / node_name / "run"),
                 str(node.root / "log"): str(root / node_name / "log")}
        argv = []
        for arg in argvs[name]:
            for old, new in moves.items():
                arg = arg.replace(old + "/", new + "/")
            argv.append(arg)
        pidfile = root / node_name / "run" / "instances" / name / "qemu.pid"
        console = root / node_name / "log" / "console" / f"{name}.console.log"
        for path in (pidfile, console):
            if not any(str(path) in a for a in argv):
                raise Failure(f"{name}'s QEMU command line names no {path.name} under the node's run/log dirs: "
                              f"{' '.join(argvs[name])[:300]}")
        pidfile.parent.mkdir(parents=True, mode=0o700, exist_ok=True)
        console.parent.mkdir(parents=True, exist_ok=True)
        guests.append(FloorGuest(name, node_name, argv, pidfile, console))
    return guests


def floor_pid(guest: FloorGuest) -> int | None:
    """The floor guest's live QEMU, by its pidfile, checked against its command line (pids recycle)."""
    try:
        pid = int(guest.pidfile.read_text().strip())
        return pid if str(guest.pidfile).encode() in Path(f"/proc/{pid}/cmdline").read_bytes() else None
    except (OSError, ValueError):
        return None


def run_floor(label: str, guests: list[FloorGuest], ledger: ChildLedger, deadline_s: float,
              per_node: int | None, gate: float | None) -> Floor:
    """Start every guest and wait until each printed its boot marker (bounded: `deadline_s`, or BOOT_STALL_S
    without a new marker once all were launched); then SIGKILL them all and wait until they are gone.

    per_node=None: all at once. Otherwise the restart policy's pacing, per node: at most `per_node` boots
    under way (launched, marker not yet seen, for at most boot_slot_max_s), and only one while the host's
    load over 10 s (the agents' own gauge, hostagent.node.loadgauge) is past `gate`. Time runs from the
    first launch to each marker."""
    floor = Floor(label, len(guests), os.getloadavg()[0])
    slot_max_s = Policy().boot_slot_max_s
    queue = {node: [g for g in guests if g.node == node] for node in sorted({g.node for g in guests})}
    t0 = time.monotonic()
    last_marker = t0
    gauge = LoadGauge()
    try:
        while True:
            now = time.monotonic()
            for g in guests:
                if g.launched is not None and g.booted is None and g.console.exists():
                    text = g.console.read_text(errors="replace")
                    if BOOTED.search(text[g.console_from:]):
                        g.booted, last_marker = now - t0, now
                    elif "Kernel panic" in text[g.console_from:] and g.parent is None:
                        relaunch(g, ledger, len(text))  # what the plainest supervisor would do too
                        floor.relaunched += 1
                        last_marker = now
                if g.parent is not None and g.parent.poll() is not None:
                    if g.parent.returncode != 0 or floor_pid(g) is None:
                        floor.launch_failures.append(f"{g.name}: QEMU exited with {g.parent.returncode}")
                        g.booted = g.booted if g.booted is not None else float("nan")
                    pid = floor_pid(g)
                    if pid is not None:
                        ledger.pids.add(pid)
                    g.parent = None
                elif g.parent is not None and now - g.parent_at > FLOOR_LAUNCH_TIMEOUT_S:
                    floor.launch_failures.append(f"{g.name}: QEMU did not daemonize in {FLOOR_LAUNCH_TIMEOUT_S:.0f} s")
                    g.parent.kill()
                    g.parent.wait(timeout=10)
                    g.parent, g.booted = None, float("nan")
            gauge.sample()
            load = gauge.value() or 0.0
            floor.peak_load = max(floor.peak_load, load)
            for node, waiting in queue.items():
                while waiting:
                    under_way = sum(1 for g in guests if g.node == node and g.launched is not None
                                    and g.booted is None and now - t0 - g.launched < slot_max_s)
                    if per_node is not None and (under_way >= per_node or (gate is not None and load > gate
                                                                          and under_way)):
                        break
                    g = waiting.pop(0)
                    g.parent_at = time.monotonic()
                    g.launched = g.parent_at - t0
                    g.parent = subprocess.Popen(g.argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                                stderr=subprocess.DEVNULL)
            floor.max_under_way = max(floor.max_under_way, sum(1 for g in guests if g.launched is not None
                                                               and g.booted is None))
            done = [g.booted for g in guests if g.booted is not None]
            if len(done) == len(guests):
                break
            all_launched = not any(queue.values())
            if now - t0 > deadline_s or (all_launched and now - last_marker > BOOT_STALL_S):
                break
            time.sleep(FLOOR_POLL_S)
    finally:
        stop_floor(guests, ledger)
    times = [g.booted for g in guests if g.booted is not None and g.booted == g.booted]  # nan: failed
    floor.booted_count = len(times)
    floor.first = min(times, default=None)
    floor.booted = max(times) if len(times) == len(guests) else None
    floor.last_marker = max(times, default=None)
    floor.panicked = sum(1 for g in guests if g.booted is None and g.console.exists()
                         and "Kernel panic" in g.console.read_text(errors="replace")[g.console_from:])
    return floor


def stop_floor(guests: list[FloorGuest], ledger: ChildLedger) -> None:
    for g in guests:
        if g.parent is not None:
            g.parent.kill()
            g.parent.wait(timeout=10)
    pids = [pid for g in guests if (pid := kill_floor_qemu(g, ledger)) is not None]
    wait_gone(pids, GONE_TIMEOUT_S, "every floor QEMU after the floor run")



def floor_report(corral: float | None, master_changes: int | None, floors_: list[Floor]) -> None:
    """Corral's booted time (None: not within the deadline) against each floor, and the master changes."""
    if not floors_:
        return
    n = floors_[0].instances
    print(f"\n== Corral against its floor: the same {n} QEMU command lines started by a plain script (no agents, "
          "no etcd), same machine, same run; time until every guest printed its boot marker ==")
    print(f"  {'':46s} {'all booted':>10s} {'first':>7s} {'booted':>8s}  {'Corral / it':>11s}")
    print(f"  {'Corral (from the agents start, after the cut)':46s} {fmt(corral):>10s} "
          f"{'':>7s} {'':>8s}")
    for f in floors_:
        ratio = f"{corral / f.booted:10.2f}x" if corral is not None and f.booted else "-"
        first = f"{f.first:5.1f} s" if f.first is not None else "-"
        print(f"  {'floor, ' + f.label:46s} {fmt(f.booted):>10s} {first:>7s} {f.booted_count:4d}/{n:<3d}  {ratio:>11s}"
              f"   (load_1m {f.load_at_start:.1f} at its start, 10 s load peak {f.peak_load:.1f}; at most "
              f"{f.max_under_way} booting at once)")
        if f.booted is None and f.last_marker is not None:
            print(f"      not every guest booted: {f.booted_count} did, the last of them at {f.last_marker:.1f} s; "
                  f"{f.panicked} consoles end in a kernel panic")
        if f.relaunched:
            print(f"      {f.relaunched} QEMUs killed and started again after a kernel panic (IO-APIC timer check "
                  "under overload), as Corral restarts a guest whose boot failed")
        for problem in f.launch_failures[:5]:
            print(f"      launch failure: {problem}")
    done = [f.booted for f in floors_ if f.booted]
    if corral is not None and done:
        best = min(done)
        print(f"  Corral / the better floor: {corral / best:.2f}x (aim: at most 1.2x); Corral's overhead "
              f"{corral - best:.1f} s")
    if master_changes is not None:
        print(f"  master changes during Corral's recovery: {master_changes} (aim: 0)")
