"""`corral cluster balance|capacity --from-htools FILE`: Corral's planners on a cluster in htools' text format
(what Ganeti's `hscan` writes), run here with no cluster, so their plans compare with hbal's and hspace's on
the same file. They are the pure planners the master runs (hostagent.master.decide)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hostagent.master.decide.htools import HtoolsCluster, read_text
from hostagent.master.decide.balance import plan
from hostagent.master.decide.htools_score import format_score

from cli.common import Context, Subparsers, UsageError, command

MAX_FILE_BYTES = 64 << 20


def register(c: Subparsers) -> None:
    s = command(c, "balance", balance, "a plan of moves that evens out the nodes (hbal's score, before and after)")
    s.add_argument("--from-htools", metavar="FILE", dest="from_htools",
                   help="plan on a cluster in htools' text format (hscan's) instead of this one")
    s.add_argument("--group", help="the node group to balance (default: the only one with nodes)")
    s.add_argument("--max-moves", type=int, default=1000, metavar="N", help="at most N moves (default 1000)")
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
    if not a.from_htools:
        raise UsageError("balancing this cluster's nodes is planned from a file so far: write it with "
                         "`hscan -d DIR URL` (or any htools data file) and give --from-htools FILE")
    if a.max_moves < 0:
        raise UsageError(f"--max-moves {a.max_moves}: a number of moves, 0 or more")
    cluster = _load(a.from_htools)
    try:
        made = plan(cluster, a.group, a.max_moves)
    except ValueError as exc:
        groups = ", ".join(g.name for g in cluster.groups if any(n.group_uuid == g.uuid for n in cluster.nodes))
        raise UsageError(f"{exc} (groups with nodes: {groups or 'none'})") from None
    rows: list[dict[str, Any]] = []
    for index, move in enumerate(made.moves, start=1):
        rows.append({"step": index, "instance": move.instance, "kind": move.kind, "target": move.target,
                     "primary": move.primary, "secondary": move.secondary, "was": "{}:{}".format(*move.was),
                     "operations": [f"{op} {node}".strip() for op, node in move.steps()]})
    answer = {"initial_score": format_score(made.initial), "final_score": format_score(made.final), "moves": rows}
    if a.json:
        print(json.dumps(answer, indent=2, sort_keys=True))
        return 0
    print(f"Initial score: {answer['initial_score']}")
    for row in rows:
        print(f"  {row['step']:3d}. {row['instance']}  {row['was']} => {row['primary']}:{row['secondary'] or '-'}  "
              f"({', '.join(row['operations'])})")
    print(f"Final score: {answer['final_score']} after {len(rows)} move(s)" if rows else
          "No move lowers the score: the nodes are as balanced as these moves make them")
    return 0
