"""Failover of a `drbd` instance from its node's power-off to QEMU running on its secondary, in node VMs.

    .venv/bin/python bench/drbd_failover.py

Three node VMs (tests/integration/nodevm.py) run real agents; a drbd instance runs on n1 with its copy on n2 and
automatic failover on. The run powers n1's VM off (a real node death; n1 is also the first master, so a new
master is elected too) and times until `instance list` on n3 shows the instance running on n2. The floor is the
node lease the master must see expire before it may start the instance elsewhere (20 s in node VMs): the figure
is printed as the time and as the time beyond the lease.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))

from nodevm import IMAGE_OS, NodeVM, NodeVMError, NodeVMs, corral, form_cluster, ok  # noqa: E402

LEASE_S = 20.0  # nodevm.agent_config's node lease


def listing(vm: NodeVM) -> dict[str, dict]:
    result = corral(vm, "instance", "list", "--json")
    return {r["name"]: r for r in json.loads(result.out)} if result.rc == 0 else {}


def until(what: str, probe, within_s: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < within_s:
        try:
            if probe():
                return time.monotonic() - started
        except (NodeVMError, ValueError):
            pass
        time.sleep(0.5)
    raise SystemExit(f"{what} did not happen within {within_s:.0f} s")


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-drbd-failover-") as root:
        vms = NodeVMs(Path(root), ["n1", "n2", "n3"], memory_mib=1024)
        try:
            vms.start()
            for vm in vms.vms.values():
                vm.ok("pvcreate -q /dev/vda && vgcreate -q vg0 /dev/vda")
            form_cluster(vms, volume_groups={name: "vg0" for name in vms.vms})
            n1, n3 = vms["n1"], vms["n3"]
            ok(n1, "cluster", "modify", "--auto-failover", "yes")
            ok(n1, "instance", "add", "db1", "--os", IMAGE_OS, "-t", "drbd", "--node", "n1:n2", "--disk", "128M",
               "--memory", "64M")
            until("db1 in sync", lambda: json.loads(ok(n3, "instance", "info", "db1", "--json"))
                  ["replication"]["in_sync"], 300)
            n1.power_off()
            took = until("db1 running on n2", lambda: (listing(n3).get("db1") or {}).get("primary_node") == "n2"
                         and listing(n3)["db1"]["status"] == "running", 300)
            print(f"drbd failover from power-off to QEMU running on the secondary: {took:.1f} s, to within one poll "
                  f"of `instance list` (about 0.5 s in a node VM) "
                  f"({took - LEASE_S:.1f} s beyond the {LEASE_S:.0f} s node lease it must wait out; "
                  f"{took / LEASE_S:.2f} x the lease)")
        finally:
            vms.stop()


if __name__ == "__main__":
    main()
