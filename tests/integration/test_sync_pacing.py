"""Resync pacing with real agents and QEMU: a node back from an outage gets its copies critical first, a few at a
time, and the cluster's sync rate caps them all together (hostagent.master.decide.syncpace)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import Cluster, wait_for

pytestmark = pytest.mark.integration

CAP_MIB_S = 16.0
TOLERANCE = 1.3
# QEMU's mirror copies in bursts of up to its 16 MiB buffer, then waits out its limit: a rate sampled over one
# report interval swings around the limit, one averaged over a few seconds holds it.
WINDOW_S = 8.0
COPIED_MIB = 64 + 96 + 96


def window_means(samples: list[tuple[float, float]], span_s: float) -> list[float]:
    """The time-weighted mean of the samples (each holds until the next) over each window of `span_s` that the
    samples cover whole, one window starting at each sample."""
    means = []
    for i, (t0, _) in enumerate(samples):
        if samples[-1][0] < t0 + span_s:
            break
        total = 0.0
        for (t, v), (t_next, _) in zip(samples[i:], samples[i + 1:]):
            if t >= t0 + span_s:
                break
            total += v * (min(t_next, t0 + span_s) - t)
        means.append(total / span_s)
    return means


def free_bytes(image: Path) -> int:
    """Free space in the ext4 filesystem of a stopped guest's disk image."""
    header = subprocess.run(["dumpe2fs", "-h", str(image)], check=True, capture_output=True, text=True,
                            timeout=60).stdout
    fields = dict(line.split(":", 1) for line in header.splitlines() if ":" in line)
    return int(fields["Free blocks"]) * int(fields["Block size"])


@pytest.fixture(scope="module")
def pacing_cluster(tmp_path_factory, guest_dir: Path):
    cluster = Cluster(tmp_path_factory.mktemp("pacing"), 3, subnet="127.0.22")  # its own: disk exports use fixed ports
    try:
        cluster.form(f"accel=tcg,kernel_path={guest_dir}/vmlinuz,initrd_path={guest_dir}/initrd.img,"
                     "kernel_args=quiet corral.seq=1,shutdown_timeout_s=10", 3)
        cluster.wait_candidates(3)
        yield cluster
    finally:
        cluster.stop()


@pytest.mark.timeout(300)  # its bounded waits add up to 270 s
def test_a_returning_secondary_gets_critical_copies_first_and_never_more_than_the_cap(pacing_cluster: Cluster,
                                                                                       tmp_path: Path) -> None:
    """Three copies to one secondary back from an outage: `zdb` (critical) and `app1` start, `app2` (low) waits
    its turn and says so; the rates reported for the copies through the secondary never add up to more than the
    cap; when a copy ends, the one still running is sped up to its new share."""
    master = pacing_cluster.master()
    others = [n for n in ("n1", "n2", "n3") if n != master]
    primary, secondary = others[0], others[1]
    m, s = pacing_cluster[master], pacing_cluster[secondary]
    # Names against priorities: by name app1 and app2 would go first. Their disks are filled with a file of random
    # bytes, so that each copy is that many bytes through the rate limit.
    data = tmp_path / "data"
    for name, node, size_mib, priority in (("zdb", primary, 64, "critical"), ("app1", master, 96, "normal"),
                                           ("app2", primary, 96, "low")):
        m.ok("instance", "add", name, "--os", "busybox-guest", "--disk-template", "mirror", "--node",
             f"{node}:{secondary}", "--disk", f"{size_mib}M", "--memory", "96M", "--priority", priority, "--no-start")
        image = next(p for p in pacing_cluster[node].root.rglob(f"{name}/disk0.*") if p.suffix in (".raw", ".qcow2"))
        data.write_bytes(os.urandom(free_bytes(image) - 2**20))
        subprocess.run(["debugfs", "-w", "-R", f"write {data} fill", str(image)], check=True, capture_output=True,
                       timeout=60)
        m.ok("instance", "start", name)
    names = ["zdb", "app1", "app2"]

    def rows() -> dict[str, dict]:
        return {r["name"]: r for r in m.json("instance", "list") if r["name"] in names}
    wait_for(lambda: all(r["status"] == "running" and r["replication"]["in_sync"] for r in rows().values()), 120,
             "the first (uncapped) copies")
    m.ok("cluster", "modify", "--sync-rate", f"{CAP_MIB_S:g}")

    # The secondary goes away (agent and exports killed) and forgets which copies it held: full copies follow.
    exports = [int(p.read_text().strip()) for p in (s.root / "run" / "replication").glob("*.pid")]
    s.kill9()
    for pid in exports:
        os.kill(pid, signal.SIGKILL)
    for copy_id in s.root.rglob("disk0.*.copy"):
        copy_id.unlink()
    wait_for(lambda: not any(r["replication"]["in_sync"] for r in rows().values()), 60,
             "every copy on the lost secondary to be recorded out of date")
    logged_before = len(m.root.joinpath("agent.log").read_text(errors="replace"))
    s.start()

    began = time.monotonic()
    sums: list[tuple[float, float]] = []  # (when, the rates reported for the copies through the secondary)
    seen_queued: list[str] = []
    in_sync_at: dict[str, int] = {}

    reported: dict[str, list[float]] = {name: [] for name in names}  # the distinct reports of each copy so far

    def sample() -> bool:
        now = rows()
        rates = []
        for n, r in now.items():
            for d in r["replication"]["disks"]:
                if d["status"] not in ("syncing", "resyncing"):
                    continue
                if d.get("percent") not in reported[n]:
                    reported[n].append(d.get("percent"))
                # A full copy begins by zeroing its target, unthrottled and cheap on the link (NBD write-zeroes),
                # which QEMU counts as progress: the first reports of a copy (the second spans that) say nothing.
                if len(reported[n]) > 2 and d.get("rate_mib_s") is not None:
                    rates.append(d["rate_mib_s"])
        sums.append((time.monotonic(), sum(rates)))
        seen_queued.extend(r["replication"]["short"] for n, r in now.items() if n == "app2" and
                           str(r["replication"]["short"]).startswith("queued"))
        for n, r in now.items():
            if r["replication"]["in_sync"]:
                in_sync_at.setdefault(n, len(sums))
        return len(in_sync_at) == len(names)
    wait_for(sample, 150, "every copy made again, paced", interval_s=0.3)

    took = time.monotonic() - began
    means = window_means(sums, WINDOW_S)
    assert means and max(means) <= CAP_MIB_S * TOLERANCE, \
        f"the copies through '{secondary}' went faster than the cap: {means} (samples {sums})"
    assert any(v for _, v in sums), f"no copy was seen under way: {sums}"
    assert took >= COPIED_MIB / CAP_MIB_S / TOLERANCE, f"{COPIED_MIB} MiB copied to '{secondary}' in {took:.1f} s"
    assert seen_queued and seen_queued[0] == "queued 1/1", seen_queued
    assert in_sync_at["zdb"] <= in_sync_at["app2"], in_sync_at
    log = m.root.joinpath("agent.log").read_text(errors="replace")[logged_before:]  # since the secondary is back
    starts = {n: log.find(f"the disk copy of instance '{n}' (") for n in names}
    assert -1 < starts["zdb"] < starts["app1"] < starts["app2"], starts
    assert "'zdb' (critical) from node" in log and f"started at {CAP_MIB_S / 2:g} MiB/s" in log
    whole = m.root.joinpath("agent.log").read_text(errors="replace")  # the queue may form before it answers again
    assert "1 queued, next: 'app2'" in whole, "the queue was not told"
    assert "instance 'app2' to node" in log and f"goes on at {CAP_MIB_S:g} MiB/s (was {CAP_MIB_S / 2:g}" in log, \
        "the copy left alone was not sped up to the whole cap"
