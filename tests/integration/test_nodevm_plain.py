"""`plain` instances on real LVM, in node VMs (tests/integration/nodevm.py): n1 has volume group vg0 on its
own disk; n2's agent is told to use vg0 too, which it has not until the move test makes it. Nested QEMU starts but its guest does not boot in test time, so the instance is
checked where the node sees it: the logical volume (`lvs`), its content, and the block device QEMU holds
(QMP `query-block`)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from nodevm import GUEST, IMAGE_OS, STATE, NodeVM, NodeVMs, corral, form_cluster, ok, query_block

from storage.lvmparse import lv_name

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

VG = "vg0"
LV, LV1 = (f"/dev/{VG}/{lv_name(VG, 'web1', i)}" for i in (0, 1))
ADOPTED = f"/dev/{VG}/{lv_name(VG, 'web2', 0)}"
NO_VG = (f"n2: volume group '{VG}' cannot be used: LVM does not find it on this node; create it with vgcreate, "
         "or set the node's volume group to one that `vgs` lists")
MIB = 2**20


@pytest.fixture(scope="module")
def vms(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeVMs]:
    vms = NodeVMs(tmp_path_factory.mktemp("plain"), ["n1", "n2"], memory_mib=1024)
    try:
        vms.start()
        vms["n1"].ok(f"pvcreate -q /dev/vda && vgcreate -q {VG} /dev/vda")
        form_cluster(vms, volume_groups={"n1": VG, "n2": VG})
        yield vms
    finally:
        vms.stop()


def lvs(vm: NodeVM) -> dict[str, tuple[str, float]]:
    """LV path -> (attributes, size in MiB) of every LV in the volume group."""
    out = vm.ok(f"lvs --noheadings --units m --nosuffix -o lv_path,lv_attr,lv_size {VG}")
    return {path: (attr, float(size)) for path, attr, size in (line.split() for line in out.splitlines() if line)}


def status(vm: NodeVM, name: str) -> str:
    return {r["name"]: r["status"] for r in json.loads(ok(vm, "instance", "list", "--json"))}.get(name, "absent")


def md5(vm: NodeVM, path: str) -> str:
    """The MD5 of a file or device in the VM: the identity of test data (emulated, MD5 takes about half
    the time of SHA-256)."""
    return vm.ok(f"md5sum {path}").split()[0]


def backups(vm: NodeVM, name: str, count: int, within_s: float = 30) -> list[dict]:
    """`backup list NAME` once it lists `count` backups (it reads the nodes' reports, sent after each order)."""
    deadline = time.monotonic() + within_s
    while True:
        found = json.loads(ok(vm, "backup", "list", name, "--json"))
        if len(found) == count or time.monotonic() > deadline:
            return found
        time.sleep(1)


def verify_until(vm: NodeVM, *wanted: str, within_s: float = 45) -> str:
    """`cluster verify`'s output once it says every `wanted` text (the nodes report every 3 s, and read their volume group every 15 s)."""
    deadline = time.monotonic() + within_s
    while True:
        out = corral(vm, "cluster", "verify").out
        if all(w in out for w in wanted) or time.monotonic() > deadline:
            return out
        time.sleep(2)


def test_a_plain_instance_runs_on_its_logical_volume_grows_gains_a_disk_is_renamed_and_leaves_nothing(vms):
    n1 = vms["n1"]
    ok(n1, "instance", "add", "web1", "--os", IMAGE_OS, "-t", "plain", "--node", "n1", "--disk", "128M",
       "--memory", "64M")
    attr, size = lvs(n1)[LV]
    assert (attr[4], attr[5], size) == ("a", "o", 128.0), f"{LV} is not active and held open: {attr}"
    n1.ok(f"qemu-img compare -U -q -f qcow2 -F raw {GUEST}/base.qcow2 {LV}")  # the image is what the LV holds
    assert status(n1, "web1") == "running"
    disk = query_block(n1, "web1")[LV]
    assert (disk["drv"], disk["image"]["virtual-size"]) == ("raw", 128 * MIB)

    ok(n1, "instance", "grow-disk", "web1", "0", "256M")
    assert lvs(n1)[LV][1] == 256.0
    assert query_block(n1, "web1")[LV]["image"]["virtual-size"] == 256 * MIB, "QEMU was not told"

    ok(n1, "instance", "add-disk", "web1", "64M")  # hot-plugged: a block device added through QMP
    assert lvs(n1)[LV1][1] == 64.0
    assert query_block(n1, "web1")[LV1]["image"]["virtual-size"] == 64 * MIB

    ok(n1, "instance", "stop", "web1", "--force")  # (its guest does not boot here) renamed stopped: its LVs take the new name, data and tags with them
    ok(n1, "instance", "rename", "web1", "web3")
    renamed = {f"/dev/{VG}/{lv_name(VG, 'web3', i)}" for i in (0, 1)}
    assert renamed <= set(lvs(n1)) and not {LV, LV1} & set(lvs(n1))
    ok(n1, "instance", "start", "web3")
    assert renamed <= set(query_block(n1, "web3")), "QEMU does not run on the renamed LVs"

    ok(n1, "instance", "remove", "web3")
    assert not renamed & set(lvs(n1))
    assert status(n1, "web3") == "absent"


def test_plain_on_a_node_without_a_volume_group_is_refused_before_any_job(vms):
    n1 = vms["n1"]
    jobs = len(json.loads(ok(n1, "job", "list", "--json")))
    refused = corral(n1, "instance", "add", "db1", "--os", IMAGE_OS, "-t", "plain", "--node", "n2",
                     "--memory", "64M")
    assert refused.rc != 0
    assert NO_VG in refused.err + refused.out
    assert len(json.loads(ok(n1, "job", "list", "--json"))) == jobs
    assert status(n1, "db1") == "absent"


def test_an_adopted_lv_runs_as_it_is_verify_finds_orphan_and_missing_lvs_and_a_move_carries_the_data(vms):
    n1, n2 = vms["n1"], vms["n2"]
    n1.ok(f"lvcreate -q --yes -n handmade -L 16m {VG} && head -c 4M /dev/urandom | dd of=/dev/{VG}/handmade "
          "conv=fsync status=none")
    content = md5(n1, f"/dev/{VG}/handmade")
    refused = corral(n1, "instance", "add", "web3", "--os", IMAGE_OS, "-t", "plain", "--node", "n1",
                     "--disk", "adopt=nosuch", "--disk", "1G")
    assert refused.rc != 0
    for reason in (f"disk 0: node 'n1': no logical volume 'nosuch' in volume group {VG}",
                   "adopt: either every disk adopts an LV or none does"):
        assert reason in refused.err + refused.out

    ok(n1, "instance", "add", "web2", "--os", IMAGE_OS, "-t", "plain", "--node", "n1", "--disk", "adopt=handmade",
       "--memory", "64M")
    volumes = lvs(n1)
    assert f"/dev/{VG}/handmade" not in volumes and volumes[ADOPTED][1] == 16.0  # renamed, its size kept
    assert query_block(n1, "web2")[ADOPTED]["image"]["virtual-size"] == 16 * MIB
    assert md5(n1, ADOPTED) == content, "the adopted LV's data changed"

    # An LV tagged as a disk web2 does not have; web2's own LV renamed and untagged by hand (stopped first:
    # it moves next).
    ok(n1, "instance", "stop", "web2", "--force")  # its guest does not boot here, so would not power down
    n1.ok(f"lvcreate -q --yes -n stray -L 8m --addtag corral-instance=web2 --addtag corral-disk=5 {VG} && "
          f"lvchange -q --deltag corral-instance=web2 --deltag corral-disk=0 {ADOPTED} && "
          f"lvrename -q {VG} {lv_name(VG, 'web2', 0)} hidden")
    orphan = f"node 'n1': orphan disk /dev/{VG}/stray (instance 'web2' has no disk 5)"
    missing = (f"instance 'web2': disk 0 is missing: no logical volume for it in volume group {VG} on its "
               "primary node 'n1'")
    found = verify_until(n1, orphan, missing)
    assert orphan in found and missing in found, found
    n1.ok(f"lvremove -q -f {VG}/stray && lvrename -q {VG} hidden {lv_name(VG, 'web2', 0)} && "
          f"lvchange -q --addtag corral-instance=web2 --addtag corral-disk=0 {ADOPTED}")

    refused = corral(n1, "instance", "move", "web2", "--node", "n2")
    assert refused.rc != 0 and NO_VG in refused.err + refused.out
    n2.ok(f"pvcreate -q /dev/vda && vgcreate -q {VG} /dev/vda")
    deadline = time.monotonic() + 30
    while not (json.loads(ok(n1, "node", "info", "n2", "--json")).get("lvm") or {}).get("free_mib"):
        assert time.monotonic() < deadline, "n2's report never showed its new volume group"
        time.sleep(2)
    # A master change under load (the VMs' leases are short) interrupts the job: the next run replaces what the
    # copy left on n2, or finds the move done.
    for _ in range(3):
        moved = corral(n1, "instance", "move", "web2", "--node", "n2")
        if not ("interrupted by a master change" in moved.err or "no longer certainly master" in moved.err):
            break
    assert moved.rc == 0 or "is already on node 'n2'" in moved.err, \
        moved.err + "".join(vm.run(f"tail -n 30 {STATE}/agent.log").out for vm in (n1, n2))
    assert md5(n2, ADOPTED) == content, "the data did not arrive intact"
    assert lvs(n2)[ADOPTED][1] == 16.0 and ADOPTED not in lvs(n1)
    ok(n1, "instance", "remove", "web2")
    assert ADOPTED not in lvs(n2)


def test_lvm_snapshots_of_a_plain_instance_revert_there_and_back_and_go_with_it(vms):
    """Two disks snapshotted while QEMU runs (paused for that instant, so both hold the same one), then written
    over while stopped and reverted twice: each revert gives back what the snapshot LVs held, and keeps them."""
    n1 = vms["n1"]
    ok(n1, "instance", "add", "snapped", "--os", IMAGE_OS, "-t", "plain", "--node", "n1", "--disk", "64M",
       "--disk", "32M", "--memory", "64M", "--no-start")
    disks = [f"/dev/{VG}/{lv_name(VG, 'snapped', i)}" for i in (0, 1)]
    snaps = [f"/dev/{VG}/snap-corral-snapped-disk{i}-s1" for i in (0, 1)]
    n1.ok(f"head -c 8M /dev/urandom | dd of={disks[1]} bs=1M seek=4 oflag=direct status=none")
    ok(n1, "instance", "start", "snapped")
    jobs = len(json.loads(ok(n1, "job", "list", "--json")))
    for bad, why in ((("create", "../x"), "is not valid"), (("revert", "s1", "--yes"), "no snapshot named 's1'")):
        refused = corral(n1, "instance", "snapshot", "snapped", *bad)
        assert refused.rc != 0 and why in refused.err + refused.out, refused
    assert len(json.loads(ok(n1, "job", "list", "--json"))) == jobs, "a refused snapshot must not make a job"

    ok(n1, "instance", "snapshot", "snapped", "create", "s1")
    assert status(n1, "snapped") == "running", "a snapshot must not stop the instance"
    volumes = lvs(n1)
    assert all(volumes[s][0][0] == "s" for s in snaps), volumes  # LVM snapshots, of the disks' size or more
    assert volumes[snaps[0]][1] >= 64 and volumes[snaps[1]][1] >= 32
    held = [md5(n1, s) for s in snaps]
    refused = corral(n1, "instance", "grow-disk", "snapped", "0", "128M")
    assert refused.rc != 0 and "has LVM snapshots (s1)" in refused.err + refused.out, refused
    row = json.loads(ok(n1, "instance", "info", "snapped", "--json"))
    assert [(s["name"], s["consistency"], s["node"]) for s in row["snapshots"]] == [("s1", "crash", "n1")]
    assert row["snapshot_bytes"] >= 96 * MIB

    ok(n1, "instance", "stop", "snapped", "--force")
    refused = corral(n1, "instance", "snapshot", "snapped", "revert", "s1")
    assert refused.rc != 0 and "--yes" in refused.err + refused.out
    for _ in range(2):  # there and back, twice
        for disk in disks:
            n1.ok(f"head -c 16M /dev/urandom | dd of={disk} bs=1M oflag=direct status=none")
        assert md5(n1, disks[1]) != held[1]
        ok(n1, "instance", "snapshot", "snapped", "revert", "s1", "--yes")
        assert [md5(n1, d) for d in disks] == held, "the disks do not hold the snapshot after its revert"
        assert [md5(n1, s) for s in snaps] == held, "the snapshot must still be there after a revert"

    ok(n1, "instance", "snapshot", "snapped", "create", "s2")
    listed = json.loads(ok(n1, "instance", "snapshot", "snapped", "list", "--json"))
    assert [(s["name"], s["consistency"]) for s in listed] == [("s1", "crash"), ("s2", "stopped")]
    ok(n1, "instance", "snapshot", "snapped", "remove", "s1")
    assert not set(snaps) & set(lvs(n1))
    ok(n1, "instance", "remove", "snapped")
    assert not [path for path in lvs(n1) if "snapped" in path], lvs(n1)


def test_a_plain_instance_is_backed_up_stopped_and_live_restored_in_place_and_imported_as_a_new_one(vms):
    """Backups of LVs: the stopped export holds the LV's bytes, a restore writes them back over the LV, an import
    makes a new plain instance's LV of them; a live export is taken while QEMU runs."""
    n1 = vms["n1"]
    ok(n1, "instance", "add", "bk", "--os", IMAGE_OS, "-t", "plain", "--node", "n1", "--disk", "64M",
       "--memory", "64M", "--no-start")
    disk, copy = (f"/dev/{VG}/{lv_name(VG, name, 0)}" for name in ("bk", "bk2"))
    n1.ok(f"head -c 16M /dev/urandom | dd of={disk} bs=1M seek=8 oflag=direct status=none")
    held = md5(n1, disk)
    ok(n1, "backup", "export", "bk")
    stopped = backups(n1, "bk", 1)[0]
    image = f"{stopped['path']}/disk0.qcow2"
    assert stopped["consistency"] == "stopped" and stopped["node"] == "n1"
    n1.ok(f"qemu-img compare -q -f qcow2 -F raw {image} {disk}")  # the LV's bytes, every one

    ok(n1, "instance", "start", "bk")
    assert "as of one instant" in ok(n1, "backup", "export", "bk", "--live")
    assert {b["consistency"] for b in backups(n1, "bk", 2)} == {"stopped", "crash"}
    ok(n1, "instance", "stop", "bk", "--force")

    n1.ok(f"head -c 64M /dev/urandom | dd of={disk} bs=1M oflag=direct status=none")
    ok(n1, "backup", "restore", "bk", "--from", stopped["ref"], "--yes")
    assert md5(n1, disk) == held, "the restore did not write the backup's bytes back over the LV"
    assert status(n1, "bk") == "stopped"

    refused = corral(n1, "backup", "import", stopped["ref"], "--name", "bk2", "--node", "n2")
    assert refused.rc != 0 and "on the node holding it ('n1'" in refused.err + refused.out, refused
    ok(n1, "backup", "import", stopped["ref"], "--name", "bk2", "--no-start")
    assert json.loads(ok(n1, "instance", "info", "bk2", "--json"))["disk_template"] == "plain"
    assert md5(n1, copy) == held, "the imported instance's LV does not hold the backup"
    for name in ("bk", "bk2"):
        ok(n1, "instance", "remove", name)
    for backup in json.loads(ok(n1, "backup", "list", "bk", "--json")):
        ok(n1, "backup", "remove", backup["ref"])
