"""The `corral` command line in a node VM without a Python start per call (packaging/nodevm/control.py starts it).

Why: under TCG a fresh `python -m cli.main` spends about 5 s starting Python and importing the CLI over 9p, and
the node-VM tests make hundreds of calls. This process imports the CLI once, then forks a child per connection on
its Unix socket, which runs `cli.main.main(argv)` as a fresh process would (the server's environment plus the request's, stdin
from /dev/null, stdout and stderr captured) and answers one JSON line: {"rc": .., "out": .., "err": ..}. The
request is one JSON line: {"argv": [...], "env": {...}, "timeout": seconds}; a child still running after its
timeout is killed by its alarm, and the connection closes without an answer.

Usage (in the VM, with the checkout on PYTHONPATH): python cli_server.py SOCKET; prints READY once it listens.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import sys
import tempfile
import traceback

import cli.main


def exit_code(exc: SystemExit) -> int:
    """The status a process ending with this SystemExit has (its message, if any, printed as Python would)."""
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    print(exc.code, file=sys.stderr)
    return 1


def run_cli(request: dict) -> int:
    try:
        return cli.main.main(list(request["argv"]))
    except SystemExit as exc:  # argparse's usage errors and --help
        return exit_code(exc)
    except BaseException:  # noqa: BLE001 - what an uncaught exception does to a fresh process
        traceback.print_exc()
        return 1


def child(conn: socket.socket) -> None:
    """In the forked child: one request, one answer, then exit."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the CLI's own subprocesses are waited for as usual
    with conn.makefile("rb") as reader:
        request = json.loads(reader.readline())
    signal.alarm(max(1, math.ceil(float(request.get("timeout", 300)))))
    os.environ.update(request["env"])  # over the server's own, as a shell command's would be
    os.chdir("/")
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        rc = run_cli(request)
        sys.stdout.flush()
        sys.stderr.flush()
        out.seek(0)
        err.seek(0)
        reply = {"rc": rc, "out": out.read().decode(errors="replace"), "err": err.read().decode(errors="replace")}
    conn.sendall((json.dumps(reply) + "\n").encode())


def main() -> None:
    path = sys.argv[1]
    if os.path.exists(path):
        os.unlink(path)  # a predecessor's, whose control server was restarted
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(64)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    print("READY", flush=True)
    while True:
        conn, _ = server.accept()
        if os.fork() == 0:
            server.close()
            try:
                child(conn)
            finally:
                os._exit(0)
        conn.close()


if __name__ == "__main__":
    main()
