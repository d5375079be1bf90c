"""Benchmark: instance add to boot marker, start to QMP running, agent idle cost.

Runs a real one-node cluster (etcd, Serf, QEMU with TCG) in a temp dir and
prints medians of 5. Usage: .venv/bin/python bench/instance_start.py [--rounds N]
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))
from conftest import GUEST_DIR, AgentNode  # noqa: E402  (the test suite's agent harness)

MARKER = re.compile(r"CORRAL-GUEST-BOOTED count=(\d+)")


def wait_marker(node: AgentNode, name: str, count: int, timeout_s: float = 120) -> float:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if str(count) in MARKER.findall(node.console_log(name)):
            return time.monotonic()
        time.sleep(0.02)
    raise RuntimeError(f"{name} did not print its boot marker #{count} within {timeout_s} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    args = parser.parse_args()
    node = AgentNode(Path(tempfile.mkdtemp(prefix="corral-bench-")))
    node.start()
    add_to_marker, start_to_running = [], []
    try:
        node.ok("cluster", "init", "--name", "bench", "--hv",
                f"accel=tcg,kernel_path={GUEST_DIR}/vmlinuz,initrd_path={GUEST_DIR}/initrd.img,kernel_args=quiet")
        for i in range(args.rounds):
            name = f"b{i}"
            t0 = time.monotonic()
            node.ok("instance", "add", name, "--os", "busybox-guest", "--memory", "128M", "--disk", "1G,format=qcow2")
            add_to_marker.append(wait_marker(node, name, 1) - t0)
            node.ok("instance", "stop", name, "--force")
            t0 = time.monotonic()
            node.ok("instance", "start", name)  # returns once QMP answers with the VM running
            start_to_running.append(time.monotonic() - t0)
            node.ok("instance", "remove", name)
        agent = psutil.Process(node.proc.pid)
        time.sleep(2)  # let the last job's report settle before measuring idle
        cpu0 = agent.cpu_times()
        t0 = time.monotonic()
        time.sleep(args.idle_seconds)
        cpu1 = agent.cpu_times()
        idle_cpu = (cpu1.user + cpu1.system - cpu0.user - cpu0.system) / (time.monotonic() - t0) * 100
        rss = agent.memory_info().rss / 2**20
        children = {c.name(): c.memory_info().rss / 2**20 for c in agent.children()}
    finally:
        node.stop()
        node.kill_qemus()
    print(f"instance add (image OS) -> boot marker: median {statistics.median(add_to_marker):.2f} s "
          f"(runs: {', '.join(f'{v:.2f}' for v in add_to_marker)})")
    print(f"instance start -> QMP running:          median {statistics.median(start_to_running):.2f} s "
          f"(runs: {', '.join(f'{v:.2f}' for v in start_to_running)})")
    print(f"agent idle: RSS {rss:.0f} MiB, CPU {idle_cpu:.1f}% of one core over {args.idle_seconds:.0f} s")
    print("children RSS: " + ", ".join(f"{k} {v:.0f} MiB" for k, v in sorted(children.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
