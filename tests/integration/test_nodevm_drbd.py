"""`drbd` instances on real DRBD 8.4 and LVM, in three node VMs (tests/integration/nodevm.py), each with volume group
vg0: the master allocates each disk's minor, port and secret, both nodes bring the resource up, the initial sync
shows the kernel's progress, and when the primary's node VM is powered off the master fails the instance over
to its secondary only after the dead node's lease has expired, DRBD promoting a copy that has every write.
Nested QEMU starts but its guest does not boot in test time, so data is checked on the DRBD devices."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from nodevm import GUEST, IMAGE_OS, STATE, NodeVM, NodeVMError, NodeVMs, corral, form_cluster, ok, query_block, start_agent

# About 24 minutes in emulation (the story 14, a reinstall 5, the cut-off primary 2, the VMs 2): the longest
# module of `make test`, which the README accounts for.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]

VG = "vg0"


@pytest.fixture(scope="module")
def vms(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeVMs]:
    vms = NodeVMs(tmp_path_factory.mktemp("drbd"), ["n1", "n2", "n3"], memory_mib=1024, state_disk=True)
    try:
        vms.start()
        for vm in vms.vms.values():
            vm.ok(f"pvcreate -q /dev/vda && vgcreate -q {VG} /dev/vda")
        form_cluster(vms, volume_groups={name: VG for name in vms.vms})
        yield vms
    finally:
        try:
            post_mortem(vms)
        finally:
            vms.stop()  # always: VMs left running would eat the CPU of every test after this one


def post_mortem(vms: NodeVMs) -> None:
    """What each agent and DRBD said, for a failure's post-mortem (a VM that no longer answers costs only its own)."""
    for vm in vms.vms.values():
        if vm.proc is None or vm.proc.poll() is not None:
            continue
        for what, command in (("agent.log", f"tail -n 400 {STATE}/agent.log"),
                              ("dmesg", "dmesg | grep -i drbd | tail -n 200")):
            try:
                (vms.root / f"{vm.name}-{what}").write_text(vm.run(command).out)
            except NodeVMError as exc:
                (vms.root / f"{vm.name}-{what}").write_text(f"no answer: {exc}\n")


TRANSIENT = ("does not answer", "no quorum", "is not the master", "no master")


def steady(vm: NodeVM, *args: str, tries: int = 4) -> str:
    """`corral ARGS` that must succeed, tried again while the cluster is between masters (under emulation a
    loaded host can cost the master its lease; an operator would run the command again too)."""
    for attempt in range(tries):
        result = corral(vm, *args)
        if result.rc == 0:
            return result.out
        said = result.err + result.out
        if attempt == tries - 1 or not any(t in said for t in TRANSIENT):
            raise NodeVMError(f"in node VM {vm.name}, corral {' '.join(args)} failed ({result.rc}): {said.strip()}")
        time.sleep(10)
    raise AssertionError("unreachable")


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


def out_of_sync_kib(vm: NodeVM) -> int:
    return int(re.search(r"oos:(\d+)", vm.ok("cat /proc/drbd"))[1])


def lv_mib(vm: NodeVM, lv: str) -> float:
    return float(vm.ok(f"lvs --noheadings --units m --nosuffix -o lv_size {VG}/{lv}"))


def row(vm: NodeVM, name: str) -> dict[str, Any]:
    return info(vm, name)["replication"]


def primary_running(vm: NodeVM, name: str, node: str) -> dict[str, Any] | None:
    r = info(vm, name)
    return r if r["primary_node"] == node and r["status"] == "running" else None


def in_sync(vm: NodeVM, name: str) -> bool:
    r = row(vm, name)
    return bool(r["in_sync"]) and r["record"] == "in sync"


def test_a_drbd_instance_syncs_migrates_changes_secondary_and_fails_over_with_its_data(vms):
    n1, n2, n3 = vms["n1"], vms["n2"], vms["n3"]
    # resyncs capped (a faster one leaves an emulated node VM's agent without CPU for seconds), at first so low
    # that the initial sync outlasts `instance add`
    steady(n1, "cluster", "modify", "--auto-failover", "yes", "--sync-rate", "2")
    ok(n1, "instance", "add", "db1", "--os", IMAGE_OS, "-t", "drbd", "--node", "n1:n2", "--disk", "128M",
       "--memory", "64M", "--no-start")
    seen = [row(n3, "db1")]  # the initial sync, as `instance info` shows it, from the kernel's own counters
    device = f"/dev/drbd{seen[0]['drbd'][0]['minor']}"
    assert "secret" not in json.dumps(info(n3, "db1")), "the DRBD shared secret must not leave the config"
    syncing_now = corral(n3, "instance", "grow-disk", "db1", "0", "160M")  # DRBD grows both copies at once
    assert syncing_now.rc != 0 and "not in sync" in syncing_now.err, syncing_now
    wait_for("the initial sync", lambda: (seen.append(row(n3, "db1")) or in_sync(n3, "db1")), 300, every_s=0.5)
    syncing = [r["summary"] for r in seen if r["summary"].startswith("syncing")]
    assert syncing, [r["summary"] for r in seen]
    for summary in syncing:
        assert "%" in summary and "ETA unknown" not in summary, summary
    steady(n1, "cluster", "modify", "--sync-rate", "5")  # DRBD takes it when the resources are next adjusted
    for vm in (n1, n2):  # both nodes hold the data LV and its metadata LV
        assert {"corral-db1-disk0", "corral-db1-disk0-meta"} <= set(vm.ok(f"lvs --noheadings -o lv_name {VG}").split())

    # activate-disks (Ganeti's): the primary's device, for maintenance while the instance is stopped
    assert device in steady(n1, "instance", "activate-disks", "db1", "--json")
    n1.ok(f"dd if=/dev/urandom of=/tmp/pattern bs=1M count=8 2>/dev/null && "
          f"dd if=/tmp/pattern of={device} bs=1M seek=96 oflag=direct 2>/dev/null")
    want = n1.ok("md5sum < /tmp/pattern").split()[0]
    ok(n1, "instance", "start", "db1")
    wait_for("db1 running and in sync", lambda: in_sync(n3, "db1") and primary_running(n3, "db1", "n1"), 120)

    # grown while it runs: both data LVs, then DRBD (which resyncs the new part), then QEMU told
    too_big = corral(n3, "instance", "grow-disk", "db1", "0", "200G")
    assert too_big.rc != 0 and "at most" in too_big.err, too_big
    ok(n3, "instance", "grow-disk", "db1", "0", "160M")
    for vm in (n1, n2):
        assert lv_mib(vm, "corral-db1-disk0") == 160.0, vm.name
    assert int(n1.ok(f"cat /sys/block/{device.removeprefix('/dev/')}/size")) == 160 * 2048
    assert query_block(n1, "db1")[device]["image"]["virtual-size"] == 160 * 2**20, "QEMU was not told"
    wait_for("db1 in sync after the grow", lambda: in_sync(n3, "db1"), 120)

    # live migration: both Primary for the switchover only, the copy never outdated (the memory copy throttled: at
    # full speed, a QEMU nested in an emulated VM stops answering QMP while it encrypts; it takes minutes anyway)
    ok(n3, "instance", "migrate", "db1", "--max-bandwidth", "8", timeout=900)
    assert primary_running(n3, "db1", "n2"), info(n3, "db1")
    state = n2.ok("cat /proc/drbd")
    assert "ro:Primary/Secondary" in state, f"after the switchover n2 must be the only Primary: {state}"
    assert md5(n2, device, 96, 8) == want
    wait_for("db1 in sync after the migration", lambda: in_sync(n3, "db1"), 120)

    # a new secondary: n3 gets every block, n1 loses its volumes
    ok(n3, "instance", "replace-secondary", "db1", "--node", "n3")
    wait_for("the new copy on n3 in sync", lambda: in_sync(n3, "db1"), 300)
    assert "corral-db1-disk0" not in n1.ok(f"lvs --noheadings -o lv_name {VG}")
    assert "UpToDate/UpToDate" in n3.ok("cat /proc/drbd")

    # the primary's node dies: the master waits for its lease, then promotes n3's UpToDate copy
    died = time.monotonic()
    n2.power_off()
    moved = wait_for("db1 failed over to n3", lambda: primary_running(n3, "db1", "n3"), 240)
    took = time.monotonic() - died
    assert took >= 15, f"failed over {took:.0f} s after the power-off: before n2's node lease (20 s) could expire"
    assert moved["secondary_node"] == "n2"
    assert md5(n3, device, 96, 8) == want, "the copy promoted on n3 lacks what was written before"
    assert "ro:Primary/Unknown" in n3.ok("cat /proc/drbd")
    kinds = [e["kind"] for e in json.loads(ok(n3, "events", "--json"))]
    assert "node-lost" in kinds and "fail-over" in kinds, kinds

    # written while n2 is away: the new primary's bitmap counts it, and only that (and the blocks n2 was writing
    # when it died) goes back to n2 when it returns
    n3.ok(f"dd if=/dev/urandom of=/tmp/later bs=1M count=4 2>/dev/null && "
          f"dd if=/tmp/later of={device} bs=1M seek=80 oflag=direct 2>/dev/null")
    later = n3.ok("md5sum < /tmp/later").split()[0]
    away_kib = out_of_sync_kib(n3)
    assert 4096 <= away_kib < 96 * 1024, f"the primary must count what n2 misses, not the whole disk: {away_kib} KiB"
    n2.boot_again()
    start_agent(n2, VG)
    wait_for("n2 back as secondary and in sync", lambda: in_sync(n3, "db1"), 300)
    received_kib = int(re.search(r"nr:(\d+)", n2.ok("cat /proc/drbd"))[1])
    assert received_kib < 96 * 1024, f"n2 took {received_kib} KiB: a full copy, not only what changed"
    assert "ro:Secondary/Primary" in n2.ok("cat /proc/drbd")
    n2_data = f"/dev/{VG}/corral-db1-disk0"
    assert md5(n2, n2_data, 80, 4) == later and md5(n2, n2_data, 96, 8) == want


def test_a_cut_off_primary_stays_frozen_while_its_secondary_takes_over_then_resyncs_from_it(vms):
    """Follows the story above (db1 running on n3, its copy on n2). n3 loses its network: DRBD freezes its writes
    (the fence-peer handler cannot reach the master), so when the master fails db1 over to n2, n3 is a Primary
    whose writer never completes; when the cable is back, n3 discards what it never acknowledged and resyncs."""
    n2, n3 = vms["n2"], vms["n3"]
    assert primary_running(n2, "db1", "n3") and in_sync(n2, "db1"), info(n2, "db1")
    device = f"/dev/drbd{row(n2, 'db1')['drbd'][0]['minor']}"
    vms.cut("n3")
    # the guest's write, as one request (QEMU's own would end with it: its node kills it when fencing)
    n3.ok(f"dd if=/dev/urandom of=/tmp/cut bs=4M count=1 2>/dev/null && "
          f"(setsid sh -c 'dd if=/tmp/cut of={device} bs=4M count=1 seek=10 oflag=direct 2>/dev/null; "
          "touch /tmp/cut.done' </dev/null >/dev/null 2>&1 &)")
    moved = wait_for("db1 failed over to n2", lambda: primary_running(n2, "db1", "n2"), 240)
    assert moved["secondary_node"] == "n3"
    frozen = n3.ok("cat /proc/drbd")
    assert n3.run("test -e /tmp/cut.done").rc != 0, f"a write on the cut-off primary completed: {frozen}"
    assert re.search(r"ro:Primary/Unknown .* s-", frozen), f"n3 must still be a Primary with its I/O frozen: {frozen}"
    assert md5(n2, device, 40, 4) != n3.ok("md5sum < /tmp/cut").split()[0]
    n2.ok(f"dd if=/dev/urandom of=/tmp/after bs=1M count=4 2>/dev/null && "
          f"dd if=/tmp/after of={device} bs=1M seek=40 oflag=direct 2>/dev/null")
    after = n2.ok("md5sum < /tmp/after").split()[0]

    vms.join("n3")
    wait_for("n3 back as secondary and in sync", lambda: in_sync(n2, "db1"), 300)
    assert "ro:Secondary/Primary" in n3.ok("cat /proc/drbd")
    assert md5(n3, f"/dev/{VG}/corral-db1-disk0", 40, 4) == after, "n3 kept a write it never acknowledged"
    kinds = [e["kind"] for e in json.loads(ok(n2, "events", "--json"))]
    assert kinds.count("fail-over") >= 2, kinds


def test_a_reinstalled_drbd_instance_gets_new_copies_on_both_nodes_holding_the_image(vms):
    """Follows the partition test (db1 running on n2, its copy on n3): stopped (no guest writes while the copies
    are compared), the OS installed anew on the primary's new resource while the secondary's is made anew too
    (fresh metadata on both: a full resync); both nodes Secondary afterwards."""
    n2, n3 = vms["n2"], vms["n3"]
    wait_for("db1 running on n2 and in sync", lambda: in_sync(n2, "db1") and primary_running(n2, "db1", "n2"), 300)
    ok(n2, "instance", "stop", "db1", "--force")  # its guest does not boot here, so would not power down
    ok(n2, "instance", "reinstall", "db1", "--yes")
    wait_for("the new copies in sync", lambda: in_sync(n2, "db1"), 300)
    assert "ro:Secondary/Secondary" in n2.ok("cat /proc/drbd")
    n2.ok(f"qemu-img convert -O raw {GUEST}/base.qcow2 /tmp/base.raw")
    image = n2.ok("md5sum < /tmp/base.raw").split()[0]
    data = f"/dev/{VG}/corral-db1-disk0"  # external metadata: the data LV is the disk, byte for byte
    assert md5(n2, data, 0, 64) == image, "the primary's disk does not hold the OS image"
    assert md5(n3, data, 0, 64) == image, "the secondary's copy differs from the primary's"

    ok(n2, "instance", "grow-disk", "db1", "0", "192M")  # stopped: DRBD resizes with the primary promoted a moment
    assert (lv_mib(n2, "corral-db1-disk0"), lv_mib(n3, "corral-db1-disk0")) == (192.0, 192.0)
    wait_for("the grown copies in sync", lambda: in_sync(n2, "db1"), 120)
    assert "ro:Secondary/Secondary" in n2.ok("cat /proc/drbd")


def test_a_drbd_snapshot_or_backup_rewrites_the_primarys_disk_and_the_secondary_takes_every_block_again(vms):
    """snapdb, stopped on n1 with its copy on n2: the snapshot is an LVM snapshot of the primary's data LV; what is
    written after it goes through DRBD to both copies; the revert merges it back on the primary and makes the
    secondary's copy start afresh, so both end holding the snapshot's data."""
    n1, n2 = vms["n1"], vms["n2"]
    steady(n1, "cluster", "modify", "--sync-rate", "5")  # as the story test leaves it (this one also runs alone)
    ok(n1, "instance", "add", "snapdb", "--os", IMAGE_OS, "-t", "drbd", "--node", "n1:n2", "--disk", "96M",
       "--memory", "64M", "--no-start")
    wait_for("snapdb's initial sync", lambda: in_sync(n1, "snapdb"), 300)
    data, snap = f"/dev/{VG}/corral-snapdb-disk0", f"/dev/{VG}/snap-corral-snapdb-disk0-before"
    ok(n1, "instance", "snapshot", "snapdb", "create", "before")
    held = n1.ok(f"sha256sum {snap}").split()[0]
    assert "snap-corral-snapdb" not in n2.ok(f"lvs --noheadings -o lv_name {VG}"), "only the primary holds it"
    refused = corral(n1, "instance", "grow-disk", "snapdb", "0", "128M")
    assert refused.rc != 0 and "has LVM snapshots (before)" in refused.err + refused.out, refused

    device = f"/dev/drbd{row(n1, 'snapdb')['drbd'][0]['minor']}"
    assert device in steady(n1, "instance", "activate-disks", "snapdb", "--json")
    n1.ok(f"head -c 16M /dev/urandom | dd of={device} bs=1M seek=32 oflag=direct status=none")
    wait_for("the write on both copies", lambda: in_sync(n1, "snapdb"), 120)
    assert n2.ok(f"sha256sum {data}").split()[0] != held

    ok(n1, "instance", "snapshot", "snapdb", "revert", "before", "--yes", timeout=600)
    wait_for("the secondary's new copy in sync", lambda: in_sync(n1, "snapdb"), 300)
    assert n1.ok(f"sha256sum {data}").split()[0] == held, "the primary's disk does not hold the snapshot"
    assert n2.ok(f"sha256sum {data}").split()[0] == held, "the secondary's copy differs from the reverted disk"
    minor = row(n1, "snapdb")["drbd"][0]["minor"]
    received_kib = int(re.search(rf"(?m)^ ?{minor}:.*\n.*nr:(\d+)", n2.ok("cat /proc/drbd"))[1])
    assert received_kib >= 96 * 1024, f"n2 took {received_kib} KiB: the whole disk must go to it again"
    assert n1.ok(f"sha256sum {snap}").split()[0] == held, "the snapshot must still be there after a revert"

    # a backup of the stopped instance (its data LV), restored in place the same way, then imported as a new drbd
    # instance on the same two nodes
    ok(n1, "backup", "export", "snapdb")
    backup = wait_for("the backup listed", lambda: json.loads(ok(n1, "backup", "list", "snapdb", "--json")), 30)[0]
    steady(n1, "instance", "activate-disks", "snapdb", "--json")
    n1.ok(f"head -c 16M /dev/urandom | dd of={device} bs=1M seek=8 oflag=direct status=none")
    wait_for("the write on both copies", lambda: in_sync(n1, "snapdb"), 120)
    ok(n1, "backup", "restore", "snapdb", "--from", backup["ref"], "--yes", timeout=600)
    wait_for("the secondary's copy in sync after the restore", lambda: in_sync(n1, "snapdb"), 300)
    assert [vm.ok(f"sha256sum {data}").split()[0] for vm in (n1, n2)] == [held, held]
    ok(n1, "backup", "import", backup["ref"], "--name", "snapdb2", "--node", "n1:n2", "--no-start", timeout=600)
    wait_for("the imported instance in sync", lambda: in_sync(n1, "snapdb2"), 300)
    copy = f"/dev/{VG}/corral-snapdb2-disk0"
    assert [vm.ok(f"sha256sum {copy}").split()[0] for vm in (n1, n2)] == [held, held]

    for name in ("snapdb", "snapdb2"):
        ok(n1, "instance", "remove", name)
    assert "snapdb" not in n1.ok(f"lvs --noheadings -o lv_name {VG}"), "the instance's snapshot must go with it"
    ok(n1, "backup", "remove", backup["ref"])


def test_drbd_on_a_node_without_the_module_or_a_volume_group_is_refused_up_front(vms):
    n3 = vms["n3"]
    jobs = len(json.loads(ok(n3, "job", "list", "--json")))
    refused = corral(n3, "instance", "add", "db2", "--os", IMAGE_OS, "-t", "drbd", "--node", "n3",
                     "--memory", "64M")
    assert refused.rc != 0 and "secondary" in (refused.err + refused.out)
    assert len(json.loads(ok(n3, "job", "list", "--json"))) == jobs
