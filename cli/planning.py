"""`corral cluster balance` (planned and carried out by the master as one job), `corral cluster capacity`, and,
with `--from-htools FILE`,
Corral's planners on a cluster in htools' text format (what Ganeti's `hscan` writes), run here with no cluster,
so their plans compare with hbal's and hspace's on the same file. They are the pure planners the master runs
(hostagent.master.decide)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlencode
from typing import Any

from hostagent.master.decide.htools import HtoolsCluster, read_text
from hostagent.master.decide.balance import plan, summary
from hostagent.master.decide.capacity import capacity, standard_spec
from hostagent.master.decide.capacity import summary as capacity_summary
from hostagent.units import SizeError, format_mib, parse_mib

from cli.common import Context, Subparsers, UsageError, command

MAX_FILE_BYTES = 64 << 20


def register(c: Subparsers) -> None:
    s = command(c, "balance", balance, "even out the nodes with migrations, failovers and new secondaries, as one "
                "job (hbal's score, before and after)", job=True)
    s.add_argument("--dry-run", action="store_true", help="show the plan only")
    s.add_argument("--from-htools", metavar="FILE", dest="from_htools",
                   help="plan on a cluster in htools' text format (hscan's) instead of this one")
    s.add_argument("--group", help="the node group to balance (default: the only one with nodes)")
    s.add_argument("--max-moves", type=int, default=1000, metavar="N", help="at most N moves (default 1000)")
    s.add_argument("--ignore-soft-errors", action="store_true", dest="ignore_soft_errors",
                   help="check only memory and disk, not the policy's vCPU and spindle ratios, N+1 or exclusion tags "
                        "(hbal's option: nodes already over their policy otherwise take nothing more)")
    s = command(c, "capacity", capacity_cmd, "how many more instances of one size fit, on which nodes, N+1 kept, and "
                "what runs out first (hspace's answer)")
    s.add_argument("--spec", metavar="memory=M,disk=D,vcpus=C",
                   help="the instance size (default: the cluster policy's standard spec)")
    s.add_argument("--disk-template", dest="disk_template", metavar="T",
                   help="drbd (Corral's mirror and drbd: a copy on a second node), plain or file; default drbd (with "
                        "--from-htools: the first the file's policy allows)")
    s.add_argument("--from-htools", metavar="FILE", dest="from_htools",
                   help="plan on a cluster in htools' text format (hscan's) instead of this one")
    s = command(c, "export-htools", export_htools, "this cluster in htools' text format (hbal -t, hspace -t)")
    s.add_argument("-o", "--output", metavar="FILE", help="write it there (default: print it)")


def export_htools(ctx: Context) -> int:
    text = ctx.client.get("/v1/cluster/htools")["data"]["text"]
    if ctx.args.output:
        try:
            Path(ctx.args.output).write_text(text, encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"cannot write {ctx.args.output}: {exc.strerror or exc}") from None
        print(f"the cluster in htools' text format is in {ctx.args.output} (hbal -t, hspace -t, corral cluster balance "
              "--from-htools)")
    else:
        print(text, end="")
    return 0


def _load(path: str) -> HtoolsCluster:
    file = Path(path)
    try:
        if file.stat().st_size > MAX_FILE_BYTES:
            raise UsageError(f"{path} is larger than {MAX_FILE_BYTES >> 20} MiB: not an htools cluster file")
        return read_text(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path} is not an htools cluster file: {exc}") from None


def balance(ctx: Context) -> int:
    a = ctx.args
    if a.max_moves < 0:
        raise UsageError(f"--max-moves {a.max_moves}: a number of moves, 0 or more")
    if a.from_htools:
        cluster = _load(a.from_htools)
        try:
            answer = summary(plan(cluster, a.group, a.max_moves, a.ignore_soft_errors))
        except ValueError as exc:
            groups = ", ".join(g.name for g in cluster.groups if any(n.group_uuid == g.uuid for n in cluster.nodes))
            raise UsageError(f"{exc} (groups with nodes: {groups or 'none'})") from None
        if a.json:
            print(json.dumps(answer, indent=2, sort_keys=True))
        else:
            _show(answer)
        return 0
    if a.group not in (None, "default"):
        raise UsageError(f"--group {a.group}: this cluster has one node group, default")
    reply = ctx.client.post("/v1/cluster/balance", {"dry_run": a.dry_run, "max_moves": a.max_moves,
                                                     **({"ignore_soft_errors": True} if a.ignore_soft_errors else {})})
    if "job_id" in reply["data"]:
        if not a.json:
            _show(reply["data"], planned=True)
        return ctx.job(reply)
    if a.json:
        print(json.dumps(reply["data"], indent=2, sort_keys=True))
        return 0
    _show(reply["data"], planned=True)
    if reply["data"]["moves"]:
        print("dry run: nothing was changed")
    return 0


def _show(answer: dict[str, Any], planned: bool = False) -> None:
    """The plan as hbal prints its own: the score, each move, the score it ends at."""
    print(f"Initial score: {answer['initial_score']}")
    for row in answer["moves"]:
        print(f"  {row['step']:3d}. {row['instance']}  {row['was']} => {row['primary']}:{row['secondary'] or '-'}  "
              f"({', '.join(row['operations'])})")
    if not answer["moves"]:
        print("No move lowers the score: the nodes are as balanced as these moves make them")
        return
    print(f"Final score: {answer['final_score']} after {len(answer['moves'])} move(s)")
    if planned:
        print(f"as {len(answer['steps'])} step(s):")
        for index, step in enumerate(answer["steps"], 1):
            print(f"  {index}. {step['description']}")


SPEC_KEYS = ("memory", "disk", "vcpus")


def _spec(text: str) -> dict[str, int]:
    """--spec memory=M,disk=D,vcpus=C as MiB and a count (each part optional)."""
    found: dict[str, int] = {}
    for part in filter(None, text.split(",")):
        key, sep, value = part.partition("=")
        if not sep or key not in SPEC_KEYS or key in found:
            raise UsageError(f"--spec {text}: give memory=SIZE,disk=SIZE,vcpus=N (each once, e.g. "
                             "memory=2G,disk=20G,vcpus=2)")
        try:
            found[key] = int(value) if key == "vcpus" else parse_mib(value, key)
        except (ValueError, SizeError) as exc:
            raise UsageError(f"--spec {key}={value}: {exc}") from None
        if found[key] <= 0:
            raise UsageError(f"--spec {key}={value}: more than 0")
    return found


def capacity_cmd(ctx: Context) -> int:
    a = ctx.args
    wanted = _spec(a.spec or "")
    if a.from_htools:
        cluster = _load(a.from_htools)
        std = standard_spec(cluster)
        spec = replace(std, memory_mib=wanted.get("memory", std.memory_mib), disk_mib=wanted.get("disk", std.disk_mib),
                       cpus=wanted.get("vcpus", std.cpus))
        answer = capacity_summary(capacity(cluster, spec, a.disk_template), spec)
    else:
        query = {f"{k}": str(v) for k, v in wanted.items()}
        if a.disk_template:
            query["disk_template"] = a.disk_template
        answer = ctx.client.get("/v1/cluster/capacity" + ("?" + urlencode(query) if query else ""))["data"]
    if a.json:
        print(json.dumps(answer, indent=2, sort_keys=True))
        return 0
    spec = answer["spec"]
    print(f"{answer['instances']} more instance(s) of {format_mib(spec['memory_mib'])} memory, "
          f"{format_mib(spec['disk_mib'])} disk, {spec['vcpus']} vCPU(s) fit ({answer['disk_template']}, N+1 kept)")
    for node, count in answer["primaries"].items():
        print(f"  {node}: {count} as primary")
    if answer["reason"]:
        refused = sum(answer["refusals"].values())
        print(f"runs out first: {answer['runs_out']} ({answer['refusals'].get(answer['reason'], 0)} of the "
              f"{refused} placement(s) tried for the next one lack it)")
    return 0
