"""Node VMs and DRBD between them: how long node VMs take to boot, and DRBD's initial sync against a plain copy
over the same virtual network (the floor), in the same run.

    .venv/bin/python bench/nodevm_drbd.py [--mib 256]

Prints: boot time of two node VMs started together; the plain copy's rate (socat from an LV to socat on the other
VM writing an LV, checked by checksum); DRBD 8.4's initial sync rate of an LV of the same size (protocol C, resource file written
by storage.drbdconf, resync rate uncapped) and its ratio to the plain copy.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))

from nodevm import NodeVMs  # noqa: E402

from storage.drbdconf import DrbdPeer, DrbdResource, module_version, random_secret, render_resource  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256, help="size of the copied LV (default 256)")
    mib = parser.parse_args().mib
    with tempfile.TemporaryDirectory(prefix="bench-nodevm-") as root:
        vms = NodeVMs(Path(root), ["n1", "n2"], disks=[mib * 3 + 512])
        try:
            started = time.monotonic()
            vms.start()
            print(f"two node VMs booted together: {time.monotonic() - started:.1f} s")
            n1, n2 = vms["n1"], vms["n2"]
            for vm in (n1, n2):
                vm.ok(f"pvcreate -q /dev/vda && vgcreate -q vg0 /dev/vda && lvcreate -q -L {mib}M -n copy vg0 && "
                      f"lvcreate -q -L {mib}M -n data vg0 && lvcreate -q -L 128M -n meta vg0")
            n1.ok(f"dd if=/dev/urandom of=/dev/vg0/copy bs=1M count={mib} 2>/dev/null")
            n2.ok("socat -u TCP-LISTEN:12000,reuseaddr OPEN:/dev/vg0/copy >/tmp/socat.log 2>&1 & echo $! >/tmp/socat.pid")
            n2.ok("for i in $(seq 100); do busybox netstat -ltn | grep -q ':12000 ' && exit 0; sleep 0.1; done; exit 1")
            started = time.monotonic()
            n1.ok("socat -u OPEN:/dev/vg0/copy TCP:10.99.0.2:12000", timeout=600)
            n2.ok("while kill -0 $(cat /tmp/socat.pid) 2>/dev/null; do sleep 0.1; done", timeout=600)
            plain = mib / (time.monotonic() - started)
            sums = {vm.ok("sync; md5sum < /dev/vg0/copy").split()[0] for vm in (n1, n2)}
            if len(sums) != 1:
                raise SystemExit("the plain copy did not arrive whole: no floor to compare with")
            print(f"plain copy over the VMs' network: {plain:.1f} MiB/s")
            version = module_version(n1.ok("cat /proc/drbd"))
            peers = [DrbdPeer(vm.name, i, vm.address, 11000, "/dev/vg0/data", "/dev/vg0/meta")
                     for i, vm in enumerate((n1, n2))]
            res = DrbdResource("corral-bench-0", 0, random_secret(), (peers[0], peers[1]))
            text = render_resource(res, version).replace("    net {", "    disk { c-plan-ahead 0; resync-rate 1000M; }\n    net {")
            for vm in (n1, n2):
                vm.ok(f"cat > /etc/drbd.d/{res.name}.res <<'EOF'\n{text}EOF")
                vm.ok(f"drbdadm create-md --force {res.name} && drbdadm up {res.name}")
            n1.ok(f"drbdadm primary --force {res.name}")
            started = time.monotonic()
            for _ in range(mib * 4):
                if re.search(r"ds:UpToDate/UpToDate", n1.ok("cat /proc/drbd")):
                    break
                time.sleep(0.25)
            synced = mib / (time.monotonic() - started)
            print(f"DRBD {version} initial sync: {synced:.1f} MiB/s, {synced / plain:.2f} x the plain copy")
        finally:
            vms.stop()


if __name__ == "__main__":
    main()
