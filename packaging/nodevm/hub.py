"""A network switch for node VMs, in userspace on 127.0.0.1: QEMU's `-netdev dgram` of every VM sends its Ethernet
frames here and this process sends each one to the other VMs. The VMs' addresses exist only inside them; nothing
reaches the host's interfaces.

Usage: python3 hub.py PORT VM_PORT...    (VM i listens on 127.0.0.1:VM_PORT[i])
Reads commands on stdin, one per line: `cut I` drops every frame from and to VM i (a partition, as a pulled cable);
`join I` lets them through again. Exits when stdin closes.
"""

from __future__ import annotations

import select
import socket
import sys


def main() -> None:
    port, members = int(sys.argv[1]), [("127.0.0.1", int(p)) for p in sys.argv[2:]]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind(("127.0.0.1", port))
    sock.setblocking(False)
    cut: set[int] = set()
    where: dict[bytes, int] = {}  # learnt: MAC address -> the VM behind it (frames to it go only there)
    print("HUB-READY", flush=True)
    while True:
        ready, _, _ = select.select([sock, sys.stdin], [], [])
        if sys.stdin in ready:
            line = sys.stdin.readline()
            if not line:
                return
            verb, _, which = line.partition(" ")
            (cut.add if verb == "cut" else cut.discard)(int(which))
            print(f"HUB-{verb.upper()} {int(which)}", flush=True)
        while sock in ready:
            try:
                frame, sender = sock.recvfrom(65536)
            except BlockingIOError:
                break
            source = members.index(sender) if sender in members else -1
            if source < 0 or source in cut or len(frame) < 14:
                continue
            where[frame[6:12]] = source
            to = where.get(frame[0:6])
            for i, member in enumerate(members):
                if i != source and i not in cut and to in (None, i):
                    sock.sendto(frame, member)

if __name__ == "__main__":
    main()
