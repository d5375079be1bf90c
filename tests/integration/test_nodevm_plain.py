"""`plain` instances on real LVM, in node VMs (tests/integration/nodevm.py): n1 has volume group vg0 on its
own disk, n2 has none. Nested QEMU starts but its guest does not boot in test time, so the instance is
checked where the node sees it: the logical volume (`lvs`), its content, and the block device QEMU holds
(QMP `query-block`)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from nodevm import (
    GUEST,
    IMAGE_OS,
    PYTHON,
    REPO,
    STATE,
    NodeVM,
    NodeVMs,
    corral,
    form_cluster,
    ok,
    quoted,
)

from storage.lvmparse import lv_name

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

VG = "vg0"
LV, LV1 = (f"/dev/{VG}/{lv_name(VG, 'web1', i)}" for i in (0, 1))
MIB = 2**20


@pytest.fixture(scope="module")
def vms(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeVMs]:
    vms = NodeVMs(tmp_path_factory.mktemp("plain"), ["n1", "n2"], memory_mib=1024)
    try:
        vms.start()
        vms["n1"].ok(f"pvcreate -q /dev/vda && vgcreate -q {VG} /dev/vda")
        form_cluster(vms, volume_groups={"n1": VG})
        yield vms
    finally:
        vms.stop()


def lvs(vm: NodeVM) -> dict[str, tuple[str, float]]:
    """LV path -> (attributes, size in MiB) of every LV in the volume group."""
    out = vm.ok(f"lvs --noheadings --units m --nosuffix -o lv_path,lv_attr,lv_size {VG}")
    return {path: (attr, float(size)) for path, attr, size in (line.split() for line in out.splitlines() if line)}


def query_block(vm: NodeVM, name: str) -> dict[str, dict]:
    """QMP query-block of the instance's QEMU: image file -> its inserted medium (drv, image)."""
    script = ("import asyncio, json, sys\nfrom kvm.qmp import Qmp\n"
              "async def main():\n"
              "    async with await Qmp.connect(sys.argv[1], 30.0) as qmp:\n"
              "        print(json.dumps(await qmp.execute('query-block')))\n"
              "asyncio.run(main())\n")
    out = vm.ok(f"cd {REPO} && PYTHONPATH={REPO} "
                + quoted(str(PYTHON), "-c", script, f"{STATE}/run/instances/{name}/qmp.sock"))
    return {b["inserted"]["file"]: b["inserted"] for b in json.loads(out) if b.get("inserted")}


def status(vm: NodeVM, name: str) -> str:
    return {r["name"]: r["status"] for r in json.loads(ok(vm, "instance", "list", "--json"))}.get(name, "absent")


def test_a_plain_instance_runs_on_its_logical_volume_grows_and_gains_a_disk_online_and_leaves_nothing(vms):
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

    ok(n1, "instance", "remove", "web1")
    assert not {LV, LV1} & set(lvs(n1))
    assert status(n1, "web1") == "absent"


def test_plain_on_a_node_without_a_volume_group_is_refused_before_any_job(vms):
    n1 = vms["n1"]
    jobs = len(json.loads(ok(n1, "job", "list", "--json")))
    refused = corral(n1, "instance", "add", "db1", "--os", IMAGE_OS, "-t", "plain", "--node", "n2",
                     "--memory", "64M")
    assert refused.rc != 0
    assert "n2: has no LVM volume group: set [storage] volume_group in its agent.toml" in refused.err + refused.out
    assert len(json.loads(ok(n1, "job", "list", "--json"))) == jobs
    assert status(n1, "db1") == "absent"
