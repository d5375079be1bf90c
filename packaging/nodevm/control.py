"""The control server of a node VM: runs the host's shell commands inside the VM over a virtio-serial port.

Stdlib only (it starts in the VM's first second). One JSON request per line on the port named
`corral.ctl`: {"id": N, "sh": "command", "timeout": seconds}; one JSON answer per line: {"id": N, "rc": .., "out":
.., "err": ..}. Requests run concurrently, each in its own thread. A command that starts a daemon must redirect the
daemon's output (`... >log 2>&1 &`), or its answer waits for the daemon. Says READY when it opened the port: the host
writes nothing before that line (QEMU drops what a port receives before the guest opens it).

{"id": N, "corral": [args], "python": path, "env": {...}, "timeout": seconds} runs the `corral` command line with
that Python, answered the same way: through cli_server.py, started at the first such request, which imported the
CLI once and forks per call (a fresh Python under TCG takes about 5 s to start the CLI; a fork a fraction of that).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
from pathlib import Path

PORT_NAME = "corral.ctl"
HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CLI_SOCKET = "/run/corral-cli"  # .N.sock, with its log beside it


def port_device() -> str:
    for entry in Path("/sys/class/virtio-ports").iterdir():
        if (entry / "name").read_text().strip() == PORT_NAME:
            return f"/dev/{entry.name}"
    raise SystemExit(f"no virtio-serial port named {PORT_NAME}")


class CliServer:
    """cli_server.py, started once (per Python) on first use; each call is one connection to its socket."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._servers: dict[str, tuple[subprocess.Popen[bytes], str]] = {}  # Python -> (server, its socket)

    def _socket(self, python: str) -> str:
        """The socket of this Python's CLI server, started now if none runs (the first call waits for its imports)."""
        with self._lock:
            proc, path = self._servers.get(python, (None, ""))
            if proc is not None and proc.poll() is None:
                return path
            path, log = f"{CLI_SOCKET}.{len(self._servers)}.sock", f"{CLI_SOCKET}.{len(self._servers)}.log"
            with open(log, "ab") as err:
                proc = subprocess.Popen([python, str(HERE / "cli_server.py"), path], stdin=subprocess.DEVNULL,
                                        stdout=subprocess.PIPE, stderr=err, cwd="/",
                                        env={**os.environ, "PYTHONPATH": str(REPO)})
            assert proc.stdout is not None
            ready = proc.stdout.readline()  # READY once it listens; nothing if it died
            proc.stdout.close()
            if ready.strip() != b"READY":
                raise RuntimeError(f"the CLI server did not start: {Path(log).read_text()[-2000:]}")
            self._servers[python] = (proc, path)
            return path

    def call(self, request: dict) -> dict:
        timeout = float(request.get("timeout", 60))
        path = self._socket(request["python"])
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(timeout + 5)  # the child's alarm ends it at `timeout`
            conn.connect(path)
            conn.sendall((json.dumps({"argv": request["corral"], "env": request.get("env", {}),
                                      "timeout": timeout}) + "\n").encode())
            with conn.makefile("rb") as reader:
                line = reader.readline()
        if not line:
            return {"rc": -1, "out": "", "err": f"corral {' '.join(request['corral'])}: timed out after {timeout} s "
                                                "or died (no answer from the CLI server)"}
        return json.loads(line)


CLI = CliServer()


def shell(request: dict) -> dict:
    try:
        done = subprocess.run(["/bin/sh", "-c", request["sh"]], capture_output=True, text=True, errors="replace",
                              timeout=float(request.get("timeout", 60)), stdin=subprocess.DEVNULL)
        return {"rc": done.returncode, "out": done.stdout, "err": done.stderr}
    except subprocess.TimeoutExpired as exc:
        return {"rc": -1, "out": "", "err": f"timed out after {exc.timeout} s"}


def answer(out: object, lock: threading.Lock, request: dict) -> None:
    try:
        reply = CLI.call(request) if "corral" in request else shell(request)
    except Exception as exc:  # noqa: BLE001 - the host gets an answer, whatever went wrong here
        reply = {"rc": -1, "out": "", "err": f"the control server failed: {exc!r}"}
    line = (json.dumps({"id": request["id"], **reply}) + "\n").encode()
    with lock:
        os.write(out, line)  # type: ignore[arg-type]


def main() -> None:
    fd = os.open(port_device(), os.O_RDWR)
    lock = threading.Lock()
    os.write(fd, b"READY\n")
    pending = b""
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            threading.Event().wait(0.1)  # the host is not connected: the port reads empty until it is
            continue
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            if line.strip():
                threading.Thread(target=answer, args=(fd, lock, json.loads(line)), daemon=True).start()


if __name__ == "__main__":
    main()
