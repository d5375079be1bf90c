"""DRBD's fence-peer handler for Corral's resources: `fence-peer "... -m cli.drbdfence --socket PATH"`.

DRBD runs it when a primary loses its peer, with the resource in DRBD_RESOURCE, and keeps the primary's
I/O frozen until it exits. It asks this node's agent (hostagent.node.drbdnode) to have the master record the
peer's copy out of date and exits 4 ("peer outdated": DRBD resumes I/O) once that is committed; any other
outcome exits 1, which leaves the I/O frozen: a node that cannot reach its master must not write alone.
"""

from __future__ import annotations

import argparse
import os
import sys

from cli.client import AgentClient, AgentUnreachable, ApiError

PEER_OUTDATED = 4
FAILED = 1
WAIT_S = 90.0  # the agent tries for 60 s


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="corral-drbd-fence-peer", description=__doc__.splitlines()[0])
    parser.add_argument("--socket", required=True, help="the local agent's socket")
    args = parser.parse_args(argv)
    resource = os.environ.get("DRBD_RESOURCE", "")
    if not resource:
        print("corral fence-peer: DRBD_RESOURCE is not set (this is DRBD's handler, run by drbdadm)", file=sys.stderr)
        return FAILED
    try:
        answer = AgentClient(args.socket, WAIT_S).request("POST", "/v1/drbd/fence-peer", {"resource": resource})
    except (AgentUnreachable, ApiError) as exc:
        print(f"corral fence-peer: {resource}: {exc}; its I/O stays frozen", file=sys.stderr)
        return FAILED
    print(f"corral fence-peer: {resource}: the copy on node '{answer['data']['outdated']}' is recorded out of date")
    return PEER_OUTDATED


if __name__ == "__main__":
    sys.exit(main())
