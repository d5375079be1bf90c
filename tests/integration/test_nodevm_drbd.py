"""`drbd` instances on real DRBD 8.4 and LVM, in three node VMs (tests/integration/nodevm.py), each with volume group
vg0: the master allocates each disk's minor, port and secret, both nodes bring the resource up, the initial sync
shows the kernel's progress, and when the primary's node VM is powered off the master fails the instance over
to its secondary only after the dead node's lease has expired, DRBD promoting a copy that has every write.
Nested QEMU starts but its guest does not boot in test time, so data is checked on the DRBD devices."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from nodevm import IMAGE_OS, NodeVM, NodeVMError, NodeVMs, corral, form_cluster, ok

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

VG = "vg0"


@pytest.fixture(scope="module")
def vms(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeVMs]:
    vms = NodeVMs(tmp_path_factory.mktemp("drbd"), ["n1", "n2", "n3"], memory_mib=1024)
    try:
        vms.start()
        for vm in vms.vms.values():
            vm.ok(f"pvcreate -q /dev/vda && vgcreate -q {VG} /dev/vda")
        form_cluster(vms, volume_groups={name: VG for name in vms.vms})
        yield vms
    finally:
        vms.stop()


def info(vm: NodeVM, name: str) -> dict[str, Any]:
    return json.loads(ok(vm, "instance", "info", name, "--json"))


def wait_for(what: str, probe: Any, within_s: float, every_s: float = 2.0) -> Any:
    """Call probe() until it returns something true; its last answer in the failure message."""
    deadline, last = time.monotonic() + within_s, None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except NodeVMError as exc:  # a CLI call that failed while the cluster changes master: try again
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(every_s)
    raise AssertionError(f"{what} did not happen within {within_s:.0f} s; last seen: {last}")


def md5(vm: NodeVM, device: str, skip_mib: int, count_mib: int) -> str:
    return vm.ok(f"dd if={device} bs=1M skip={skip_mib} count={count_mib} iflag=direct 2>/dev/null | md5sum").split()[0]


def test_a_drbd_instance_syncs_with_progress_and_fails_over_with_its_data_when_its_node_dies(vms):
    n1, n2, n3 = vms["n1"], vms["n2"], vms["n3"]
    ok(n1, "cluster", "modify", "--auto-failover", "yes")
    ok(n1, "instance", "add", "db1", "--os", IMAGE_OS, "-t", "drbd", "--node", "n1:n2", "--disk", "256M",
       "--memory", "64M", "--no-start")
    first = info(n3, "db1")
    slot = first["replication"]["drbd"][0]
    device = f"/dev/drbd{slot['minor']}"
    assert "secret" not in json.dumps(first), "the DRBD shared secret must not leave the config"
    for vm in (n1, n2):  # both nodes hold the data LV and its metadata LV
        names = vm.ok(f"lvs --noheadings -o lv_name {VG}").split()
        assert {"corral-db1-disk0", "corral-db1-disk0-meta"} <= set(names), names
        assert "cs:" in vm.ok("cat /proc/drbd")

    seen: list[str] = []

    def synced() -> bool:
        row = info(n3, "db1")["replication"]
        seen.append(row["summary"])
        return bool(row["in_sync"]) and row["record"] == "in sync"

    # activate-disks (Ganeti's): the primary's device for maintenance, written while the copy syncs
    paths = json.loads(ok(n1, "instance", "activate-disks", "db1", "--json"))
    assert device in json.dumps(paths)
    n1.ok(f"dd if=/dev/urandom of=/tmp/pattern bs=1M count=8 2>/dev/null && "
          f"dd if=/tmp/pattern of={device} bs=1M seek=200 oflag=direct 2>/dev/null")
    want = n1.ok("md5sum < /tmp/pattern").split()[0]
    ok(n1, "instance", "start", "db1")
    wait_for("db1 in sync", synced, 300)
    syncing = [s for s in seen if s.startswith("syncing")]
    assert syncing or any("in sync" in s for s in seen[:1]), seen
    for s in syncing:
        assert "%" in s and "ETA unknown" not in s, f"progress without the kernel's own figures: {s}"
    assert "cs:Connected" in n2.ok("cat /proc/drbd") and "UpToDate/UpToDate" in n2.ok("cat /proc/drbd")
    assert info(n3, "db1")["status"] == "running"

    # the primary's node dies: the master waits for its lease, then promotes n2's UpToDate copy
    died = time.monotonic()
    n1.power_off()
    moved = wait_for("db1 failed over to n2", lambda: (lambda r: r if r["primary_node"] == "n2" and
                                                        r["status"] == "running" else None)(info(n3, "db1")), 240)
    took = time.monotonic() - died
    assert took >= 15, f"failed over {took:.0f} s after the power-off: before n1's node lease (20 s) could expire"
    assert moved["secondary_node"] == "n1"
    assert md5(n2, device, 200, 8) == want, "the copy promoted on n2 lacks what was written on n1"
    state = n2.ok("cat /proc/drbd")
    assert "ro:Primary/Unknown" in state, state
    kinds = [e["kind"] for e in json.loads(ok(n3, "events", "--json"))]
    assert "node-lost" in kinds and "fail-over" in kinds, kinds
    assert "secret" not in json.dumps(info(n3, "db1"))


def test_drbd_on_a_node_without_the_module_or_a_volume_group_is_refused_up_front(vms):
    n3 = vms["n3"]
    jobs = len(json.loads(ok(n3, "job", "list", "--json")))
    refused = corral(n3, "instance", "add", "db2", "--os", IMAGE_OS, "-t", "drbd", "--node", "n3",
                     "--memory", "64M")
    assert refused.rc != 0 and "secondary" in (refused.err + refused.out)
    assert len(json.loads(ok(n3, "job", "list", "--json"))) == jobs
