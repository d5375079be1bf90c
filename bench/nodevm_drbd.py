"""Node VMs and DRBD between them: how long node VMs take to boot, DRBD's initial sync and its resync after an
outage against a plain copy over the same virtual network (the floor), in the same run.

    .venv/bin/python bench/nodevm_drbd.py [--mib 256] [--outage-mib 32]

Prints: boot time of two node VMs started together; the plain copy's rate (socat from an LV to socat on the other
VM writing an LV, checked by checksum); DRBD 8.4's initial sync rate of an LV of the same size (protocol C, the
resource file Corral writes: storage.drbdconf with Corral's fixed resync rate) and its ratio to the plain copy;
then the secondary's cable is pulled, --outage-mib are written in scattered 1 MiB pieces, and the cable put
back: what DRBD counts out of sync against what was written, and the resync's rate against the plain copy.
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

from nodevm import NodeVM, NodeVMs  # noqa: E402

from hostagent.node.drbdnode import RESYNC_RATE_MIB_S  # noqa: E402

from storage.drbdconf import DrbdPeer, DrbdResource, module_version, random_secret, render_resource  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256, help="size of the copied LV (default 256)")
    parser.add_argument("--outage-mib", type=int, default=32, help="written while the secondary is away (default 32)")
    args = parser.parse_args()
    mib, outage = args.mib, min(args.outage_mib, args.mib // 2)
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
            res = DrbdResource("corral-bench-0", 0, random_secret(), (peers[0], peers[1]),
                               resync_rate_mib_s=RESYNC_RATE_MIB_S)
            text = render_resource(res, version)
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
            outage_resync(vms, outage, mib, plain)
        finally:
            vms.stop()


def out_of_sync_kib(vm: NodeVM) -> int:
    found = re.search(r"oos:(\d+)", vm.ok("cat /proc/drbd"))
    return int(found[1]) if found else -1


def outage_resync(vms: NodeVMs, outage_mib: int, mib: int, plain: float) -> None:
    """The secondary away while `outage_mib` are written in 1 MiB pieces spread over the disk, then back."""
    n1, n2 = vms["n1"], vms["n2"]
    vms.cut("n2")
    for _ in range(120):
        if "cs:WFConnection" in n1.ok("cat /proc/drbd"):
            break
        time.sleep(0.25)
    step = max(1, mib // outage_mib)
    n1.ok(f"for i in $(seq 0 {outage_mib - 1}); do dd if=/dev/urandom of=/dev/drbd0 bs=1M count=1 "
          f"seek=$((i * {step})) oflag=direct 2>/dev/null; done", timeout=600)
    counted = out_of_sync_kib(n1) / 1024
    print(f"written while n2 was away: {outage_mib} MiB; DRBD counts {counted:.1f} MiB out of sync "
          f"({counted / outage_mib:.2f} x what was written; a full copy would be {mib / outage_mib:.0f} x)")
    vms.join("n2")
    started = time.monotonic()
    for _ in range(mib * 8):
        if out_of_sync_kib(n1) == 0 and "ds:UpToDate/UpToDate" in n1.ok("cat /proc/drbd"):
            break
        time.sleep(0.25)
    took = time.monotonic() - started
    print(f"resync after the outage: {took:.1f} s from the cable back (DRBD reconnects within ~10 s), "
          f"{counted / took:.1f} MiB/s, {counted / took / plain:.2f} x the plain copy; "
          f"a full copy at the plain rate would take {mib / plain:.1f} s")
    sums = {vm.ok("dd if=/dev/vg0/data bs=1M iflag=direct 2>/dev/null | md5sum").split()[0] for vm in (n1, n2)}
    print("both copies identical after the resync" if len(sums) == 1 else "THE COPIES DIFFER after the resync")


if __name__ == "__main__":
    main()
