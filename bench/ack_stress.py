"""Stress: lose a mirror instance's primary in many ways and at random moments; count lost acknowledged writes.

Forms a 3-node harness cluster on 127.0.5.1-3 (bench/benchcluster.py: node
lease TTL 12 s), sets `cluster modify --auto-failover yes` and adds one
`mirror` instance, `a1`, whose guest (corral.seq=1) writes an increasing
number to its disk every 100 ms and prints it once synced. Each round waits
until a1 runs in sync and is guarded by its primary, then does one of:

  kill          every process of the primary SIGKILLed (a power cut)
  freeze-agent  the primary's agent, etcd and Serf SIGSTOPped (its fence keeper
                stops the QEMU), thawed once the master decided
  freeze-node   every process of the primary SIGSTOPped, thawed once decided
  cut+LOSS      first the secondary's copy is cut while the guest writes (its
                disk export SIGKILLed, the primary's NBD connection yanked, or
                the secondary node frozen for 3 s), then after a random delay
                (0-15 s) the primary is lost (LOSS: kill or freeze-node)

and waits (up to 150 s) until either a1 runs on its secondary or the master
records that it refuses (its copy is out of date). After a failover, the
number the guest finds on its disk at boot must be at least the last number
its console showed on the old primary: anything less is a LOST acknowledged
write. Every 0.2 s the round also looks for a1's QEMU running (not stopped)
on two nodes at once: a DOUBLE run. Then the lost node comes back and the
round ends once a1 runs in sync again.

Printed: one line per round, then the counts per scenario, and the guest's
pause (median and max) while the master recorded the copy out of date, as
`instance info` shows it (replication.last_degraded). Usage:
.venv/bin/python bench/ack_stress.py [--rounds 100] [--seed N] [--keep] [--subnet 127.0.5]
"""

from __future__ import annotations

import argparse
import os
import random
import re
import signal
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from benchcluster import AgentNode, Cluster, ask, guest_hv, power_off, running_cluster, wait_for
from test_acknowledged_writes import export_pids, yank  # noqa: E402  (benchcluster puts the tests on the path)
from test_node_failure import freeze_all  # noqa: E402

SUBNET = "127.0.5"
NAME = "a1"
DECIDED_S = 150  # from the loss: lease TTL (12 s) + the failover job, with room for a loaded machine
READY_S = 240
SEQ = re.compile(r"CORRAL-GUEST-SEQ n=(\d+)")
SEQ_START = re.compile(r"CORRAL-GUEST-SEQ-START last=(\d+)")
DELAYS = (0.0, 0.0, 0.1, 0.3, 0.5, 1.0, 2.0, 3.0, 5.0, 8.0, 15.0)


@dataclass
class Round:
    index: int
    scenario: str
    primary: str
    secondary: str
    delay_s: float = 0.0
    outcome: str = ""  # failover | refused | stuck
    last_printed: int = 0
    found: int | None = None
    lost: bool = False
    double: bool = False
    pause_ms: int | None = None
    took_s: float = 0.0
    notes: list[str] = field(default_factory=list)


def console(node: AgentNode) -> str:
    path = node.root / "log" / "console" / f"{NAME}.console.log"
    return path.read_text(errors="replace") if path.exists() else ""


def printed(node: AgentNode) -> list[int]:
    return [int(n) for n in SEQ.findall(console(node))]


def boots(node: AgentNode) -> list[int]:
    return [int(n) for n in SEQ_START.findall(console(node))]


def qemu_running(node: AgentNode) -> bool:
    """a1's QEMU exists on the node and is not stopped (SIGSTOP: state T)."""
    try:
        pid = int((node.root / "run" / "instances" / NAME / "qemu.pid").read_text().strip())
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, ValueError, IndexError):
        return False
    return state not in ("T", "t", "Z", "X")


def ready(observer: AgentNode) -> tuple[str, str] | None:
    info = ask(observer, "instance", "info", NAME)
    if not info or info["status"] != "running" or not info.get("replication"):
        return None
    rep = info["replication"]
    if rep["summary"] != "in sync" or not rep["in_sync"]:
        return None
    fencing = (ask(observer, "node", "info", info["primary_node"]) or {}).get("fencing") or {}
    if not fencing.get("armed") or NAME not in fencing.get("guarded", []):
        return None
    return info["primary_node"], info["secondary_node"]


def refused_since(observer: AgentNode, since: float) -> bool:
    events = ask(observer, "events", "--instance", NAME, "--limit", "0") or []
    return any(e["kind"] == "refuse" and e["time"] >= since - 1 for e in events)


def run_round(cluster: Cluster, index: int, rng: random.Random) -> Round:
    observer = cluster["n1"]
    placed = wait_for(lambda: ready(observer), READY_S, f"{NAME} to run in sync and guarded", interval_s=0.5)
    primary, secondary = cluster[placed[0]], cluster[placed[1]]
    if primary.name == observer.name:
        observer = secondary if secondary.name != "n1" else cluster["n3"]
    scenario = rng.choice(["kill", "freeze-agent", "freeze-node", "cut+kill", "cut+freeze", "cut+kill",
                           "cut+freeze"])
    cut = rng.choice(["export-killed", "yanked", "secondary-frozen"]) if scenario.startswith("cut") else ""
    r = Round(index, scenario + (f"({cut})" if cut else ""), primary.name, secondary.name)
    wait_for(lambda: printed(primary), 60, "the guest to write", interval_s=0.2)
    booted_before = len(boots(secondary))
    began = time.time()
    frozen: dict[str, list[int]] = {}
    if cut == "export-killed":
        for pid in export_pids(secondary):
            os.kill(pid, signal.SIGKILL)
    elif cut == "yanked":
        yank(primary, NAME)
    elif cut == "secondary-frozen":
        frozen[secondary.name] = freeze_all(secondary)
    if cut:
        r.delay_s = rng.choice(DELAYS) + rng.random() * 0.2
        time.sleep(r.delay_s)
    r.last_printed = max(printed(primary) or [0])
    loss = "kill" if scenario in ("kill", "cut+kill") else scenario.replace("cut+freeze", "freeze-node")
    if loss == "kill":
        power_off(primary)
    elif loss == "freeze-agent":
        frozen[primary.name] = primary.freeze()
    else:
        frozen[primary.name] = freeze_all(primary)
    r.last_printed = max([r.last_printed] + printed(primary))
    lost_at = time.monotonic()
    thaw_secondary_at = lost_at + 3.0
    deadline = lost_at + DECIDED_S
    while time.monotonic() < deadline:
        if secondary.name in frozen and time.monotonic() >= thaw_secondary_at:
            secondary.thaw(frozen.pop(secondary.name))  # two of three nodes gone: etcd would have no quorum
        if qemu_running(primary) and qemu_running(secondary):
            r.double = True
        row = ask(observer, "instance", "info", NAME, timeout_s=10) or {}
        if row.get("status") == "running" and row.get("primary_node") == secondary.name:
            r.outcome = "failover"
            break
        if refused_since(observer, began):
            r.outcome = "refused"
            break
        time.sleep(0.2)
    else:
        r.outcome = "stuck"
    if secondary.name in frozen:
        secondary.thaw(frozen.pop(secondary.name))
    if r.outcome == "failover":
        new = wait_for(lambda: boots(secondary)[booted_before:], 90, f"{NAME} to boot on {secondary.name}")
        r.found = new[0]
        r.lost = r.found < r.last_printed
    for _ in range(10):  # the double-run watch goes on while the lost node comes back
        if qemu_running(primary) and qemu_running(secondary):
            r.double = True
        time.sleep(0.2)
    if primary.name in frozen:
        primary.thaw(frozen.pop(primary.name))
    if loss == "kill":
        primary.start()
    primary.wait_fresh_report(90)
    end = time.monotonic() + 20
    while time.monotonic() < end:
        if qemu_running(primary) and qemu_running(secondary):
            r.double = True
        time.sleep(0.2)
    info = ask(cluster["n1"], "instance", "info", NAME) or {}
    last = ((info.get("replication") or {}).get("last_degraded") or {})
    if cut and last.get("at", 0) >= began - 1:
        r.pause_ms = int(last["pause_ms"])
    r.took_s = time.time() - began
    return r


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--subnet", default=SUBNET, help="127.x.y of the nodes (two runs at once need two)")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else int(time.time())
    rng = random.Random(seed)
    print(f"seed {seed}", flush=True)
    rounds: list[Round] = []
    with running_cluster(3, 3, keep=args.keep, subnet=args.subnet, prefix="ackstress-") as (cluster, ledger):
        n1 = cluster["n1"]
        n1.ok("cluster", "modify", "--auto-failover", "yes")
        n1.ok("instance", "add", NAME, "--os", "busybox-guest", "--disk-template", "mirror", "--node", "n2:n3",
              "--disk", "64M", "--memory", "128M", "--hv", guest_hv("quiet corral.seq=1,shutdown_timeout_s=10"))
        for i in range(1, args.rounds + 1):
            try:
                r = run_round(cluster, i, rng)
            except AssertionError as exc:
                print(f"round {i}: the cluster did not recover: {exc}", flush=True)
                break
            ledger.note(cluster)
            rounds.append(r)
            print(f"round {i:3d} {r.scenario:<32} delay {r.delay_s:5.2f} s  {r.primary}->{r.secondary}  "
                  f"{r.outcome:<8} printed {r.last_printed:5d} found {r.found if r.found is not None else '-':>5}"
                  f"{'  LOST' if r.lost else ''}{'  DOUBLE' if r.double else ''}"
                  f"{f'  pause {r.pause_ms} ms' if r.pause_ms is not None else ''}  ({r.took_s:.0f} s)", flush=True)
    print_summary(rounds)
    return 1 if any(r.lost or r.double for r in rounds) else 0


def print_summary(rounds: list[Round]) -> None:
    if not rounds:
        return
    by = Counter(r.scenario.split("(")[0] for r in rounds)
    outcomes = Counter(r.outcome for r in rounds)
    print(f"\n{len(rounds)} rounds: " + ", ".join(f"{k} {v}" for k, v in sorted(by.items())))
    print(f"failovers {outcomes['failover']}, refusals {outcomes['refused']}, stuck {outcomes['stuck']}")
    print(f"lost acknowledged writes: {sum(r.lost for r in rounds)}; double runs: {sum(r.double for r in rounds)}")
    pauses = [r.pause_ms for r in rounds if r.pause_ms is not None]
    if pauses:
        print(f"guest paused while the copy was recorded out of date: median {statistics.median(pauses):.0f} ms, "
              f"max {max(pauses)} ms ({len(pauses)} rounds)")


if __name__ == "__main__":
    sys.exit(main())
