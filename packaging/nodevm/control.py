"""The control server of a node VM: runs the host's shell commands inside the VM over a virtio-serial port.

Stdlib only (it starts in the VM's first second). One JSON request per line on the port named
`corral.ctl`: {"id": N, "sh": "command", "timeout": seconds}; one JSON answer per line: {"id": N, "rc": .., "out":
.., "err": ..}. Requests run concurrently, each in its own thread. A command that starts a daemon must redirect the
daemon's output (`... >log 2>&1 &`), or its answer waits for the daemon. Says READY when it opened the port: the host
writes nothing before that line (QEMU drops what a port receives before the guest opens it).
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
from pathlib import Path

PORT_NAME = "corral.ctl"


def port_device() -> str:
    for entry in Path("/sys/class/virtio-ports").iterdir():
        if (entry / "name").read_text().strip() == PORT_NAME:
            return f"/dev/{entry.name}"
    raise SystemExit(f"no virtio-serial port named {PORT_NAME}")


def answer(out: object, lock: threading.Lock, request: dict) -> None:
    try:
        done = subprocess.run(["/bin/sh", "-c", request["sh"]], capture_output=True, text=True, errors="replace",
                              timeout=float(request.get("timeout", 60)), stdin=subprocess.DEVNULL)
        reply = {"id": request["id"], "rc": done.returncode, "out": done.stdout, "err": done.stderr}
    except subprocess.TimeoutExpired as exc:
        reply = {"id": request["id"], "rc": -1, "out": "", "err": f"timed out after {exc.timeout} s"}
    line = (json.dumps(reply) + "\n").encode()
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
