"""`corral`: the command line for the whole cluster, usable on any node.

Reads come from the local agent's config replica; changes become jobs whose
log is streamed until they end (`--submit` returns the job id at once).
Exit codes: 0 ok, 1 the operation failed, 2 bad input, 3 agent unreachable.

Each command group is one module (GROUPS, in `corral --help` order) that adds
its commands, each with its handler; this module only builds the parser,
creates the client and runs the chosen handler.
"""

from __future__ import annotations

import argparse
import os
import sys

from cli import backups, cluster, drill, events, instances, jobs, networks, nodes, osdefs, tags, users
from cli.client import EXIT_UNREACHABLE, AgentClient, AgentUnreachable, ApiError, socket_path
from cli.common import COMMON, EXIT_BAD_INPUT, Context, UsageError

GROUPS = (cluster, nodes, instances, events, jobs, drill, users, osdefs, networks, tags, backups)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="corral", description="Corral: a KVM cluster with no fixed master",
                                parents=[COMMON])
    top = p.add_subparsers(dest="group", required=True,
                           metavar="{cluster,node,instance,network,job,events,user,drill,os,search-tags}")
    for module in GROUPS:
        module.register(top)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    args.socket = getattr(args, "socket", None)
    args.json = getattr(args, "json", False)
    ctx = Context(args, AgentClient(socket_path(args.socket)))
    try:
        status: int = args.run(ctx)
        return status
    except BrokenPipeError:  # the reader went away (`corral ... | head`, `| grep -q`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 141
    except (UsageError, networks.NetSpecError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except AgentUnreachable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except ApiError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return EXIT_BAD_INPUT if exc.status in (400, 404, 409) else 1


if __name__ == "__main__":
    sys.exit(main())
