"""Benchmark: Corral's balancer (hostagent.master.decide.balance) against Debian's hbal on the same htools files.

Per file and node group: the final score each reaches (the same cluster score, hbal's), the moves each needs,
and the planning time of each (hbal's whole run, loading included; Corral's planner alone); then the
instances of the policy's standard spec that fit, Corral's capacity against hspace's standard allocation. Files: the data
sets of Debian's ganeti-testsuite (unpacked by packaging/install-deps.sh) and generated unbalanced clusters
(every replicated instance piled on the first nodes; `--nodes` and `--instances` choose their sizes).

The goal (issue 15): a final score no worse than hbal's, with no more moves, and at least hspace's instance
count, on every file. Prints figures only.
Usage: .venv/bin/python bench/balance.py [--files 'hbal-*.data'] [--nodes 4,8 | --nodes ''] [--instances 60,200]
       [--max-seconds 600] [--ignore-soft-errors]
"""

from __future__ import annotations

import argparse
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from ganeti_data import HTOOLS_DATA, htool  # noqa: E402

from hostagent.master.decide import htools  # noqa: E402
from hostagent.master.decide.balance import plan  # noqa: E402
from hostagent.master.decide.capacity import capacity, standard_spec  # noqa: E402
from hostagent.master.decide.htools_score import format_score  # noqa: E402


def generated(nodes: int, instances: int, seed: int) -> str:
    """An unbalanced cluster in htools' text format: equal nodes, replicated instances on the first few."""
    rng = random.Random(seed)
    uuid = "00000000-0000-0000-0000-000000000001"
    lines = [f"default|{uuid}|preferred||", ""]
    mem, disk = 262144, 16 * 1024 * 1024  # room for every copy on the crowded nodes (one short of disk: no move)
    used_mem: dict[int, int] = {}
    used_disk: dict[int, int] = {}
    insts = []
    crowded = max(2, nodes // 4)
    for i in range(instances):
        p = rng.randrange(crowded)
        s = (p + 1 + rng.randrange(crowded - 1)) % crowded
        m, d = rng.choice((512, 1024, 2048, 4096)), rng.choice((10240, 20480, 51200))
        used_mem[p] = used_mem.get(p, 0) + m
        used_disk[p] = used_disk.get(p, 0) + d
        used_disk[s] = used_disk.get(s, 0) + d
        insts.append(f"inst{i}|{m}|{d}|{rng.choice((1, 2, 4))}|running|Y|node{p}|node{s}|drbd||1")
    for n in range(nodes):
        lines.append(f"node{n}|{mem}|4096|{mem - 4096 - used_mem.get(n, 0)}|{disk}|{disk - used_disk.get(n, 0)}|32|N|"
                     f"{uuid}|24")  # 24 spindles: within the policy (a node over it makes hbal restrict its moves)
    lines += ["", *insts, "", "",
              "|128,1,1024,1,1,1|128,1,1024,1,1,1;262144,32,4194304,16,8,12|drbd,plain,file|8.0|32.0",
              "default|128,1,1024,1,1,1|128,1,1024,1,1,1;262144,32,4194304,16,8,12|drbd,plain,file|8.0|32.0", ""]
    return "\n".join(lines)


def hbal(path: Path, group: str, limit: float, soft: bool) -> tuple[str, int, float]:
    """hbal's final score, moves and time (`soft`: with --ignore-soft-errors); a run over `limit` seconds is
    stopped (score "?", its time the limit)."""
    started = time.monotonic()
    try:
        out = subprocess.run([htool("hbal"), "-t", str(path), "-G", group, "--max-length=100000",
                              *(["--ignore-soft-errors"] if soft else [])],
                             capture_output=True, text=True, timeout=limit).stdout
    except subprocess.TimeoutExpired:
        return "?", 0, limit
    took = time.monotonic() - started
    improved = re.search(r"Cluster score improved from \S+ to (\S+)", out)
    initial = re.search(r"Initial score: (\S+)", out)
    return ((improved or initial)[1] if (improved or initial) else "?"), len(re.findall(r"^\s+\d+\. ", out, re.M)), took


def compare(path: Path, label: str, limit: float, soft: bool) -> None:
    cluster = htools.read_text(path.read_text())
    for group in [g for g in cluster.groups if any(n.group_uuid == g.uuid for n in cluster.nodes)]:
        if not cluster.instances:
            continue
        theirs, their_moves, their_s = hbal(path, group.name, limit, soft)
        started = time.monotonic()
        made = plan(cluster, group.uuid, ignore_soft_errors=soft)
        ours_s = time.monotonic() - started
        ours = format_score(made.final)
        verdict = ("same" if ours == theirs else "hbal stopped" if theirs == "?"
                   else "better" if float(ours) < float(theirs) else "WORSE")
        moves = "fewer" if len(made.moves) < their_moves else "same" if len(made.moves) == their_moves else "MORE"
        print(f"{label:44s} {group.name:9s} score corral {ours:>12s} hbal {theirs:>12s} ({verdict}); moves "
              f"{len(made.moves):4d} vs {their_moves:4d} ({moves}); planning {ours_s:7.2f} s vs {their_s:6.2f} s")
    fits(path, cluster, label, limit)


def fits(path: Path, cluster: htools.HtoolsCluster, label: str, limit: float) -> None:
    """Instances of the policy's standard spec that fit (drbd): Corral's capacity against hspace's standard
    allocation (hspace's own run includes its tiered allocation, so its time is not comparable)."""
    spec = standard_spec(cluster)
    try:
        out = subprocess.run([htool("hspace"), "-t", str(path), "--machine-readable", "--disk-template=drbd",
                              f"--standard-alloc={spec.disk_mib},{spec.memory_mib},{spec.cpus},{spec.spindle_use}"],
                             capture_output=True, text=True, timeout=limit).stdout
    except subprocess.TimeoutExpired:
        print(f"{label:44s} capacity: hspace took over {limit:.0f} s")
        return
    theirs = re.search(r"HTS_ALLOC_INSTANCES=(\d+)", out)
    reason = re.search(r"HTS_ALLOC_FAIL_REASON=(\S+)", out)
    started = time.monotonic()
    found = capacity(cluster, spec, "drbd")
    took = time.monotonic() - started
    if not theirs:
        print(f"{label:44s} capacity: hspace gave no answer")
        return
    verdict = "same" if found.count == int(theirs[1]) else "more" if found.count > int(theirs[1]) else "FEWER"
    print(f"{label:44s} capacity (drbd, std spec) corral {found.count:5d} {found.reason or '-':9s} hspace "
          f"{theirs[1]:>5s} {reason[1] if reason else '-':9s} ({verdict}); corral {took:6.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", default="4,8", help="generated clusters' node counts (comma separated; '' for none)")
    parser.add_argument("--instances", default="60,200", help="generated clusters' instance counts")
    parser.add_argument("--max-seconds", type=float, default=600,
                        help="stop hbal and hspace after this long (hbal takes hours on 100 nodes, 2,000 instances)")
    parser.add_argument("--files", default="*.data",
                        help="which data sets (comma separated patterns, default every *.data; '' for none)")
    parser.add_argument("--ignore-soft-errors", action="store_true",
                        help="balance with hbal's --ignore-soft-errors, on both sides")
    args = parser.parse_args()
    if not htool("hbal"):
        sys.exit("hbal is not installed: packaging/install-deps.sh installs ganeti-htools-3.0")
    print(f"Debian's data sets ({HTOOLS_DATA}):")
    paths = sorted({path for pattern in args.files.split(",") if pattern for path in HTOOLS_DATA.glob(pattern)})
    for path in paths:
        try:
            compare(path, path.name, args.max_seconds, args.ignore_soft_errors)
        except ValueError:
            continue
    print("Generated unbalanced clusters:")
    with tempfile.TemporaryDirectory() as tmp:
        for nodes in (int(n) for n in args.nodes.split(",") if n):
            for count in (int(i) for i in args.instances.split(",")):
                path = Path(tmp) / f"gen-{nodes}-{count}.data"
                path.write_text(generated(nodes, count, seed=nodes * 1000 + count))
                compare(path, f"{nodes} nodes, {count} instances", args.max_seconds, args.ignore_soft_errors)


if __name__ == "__main__":
    main()
