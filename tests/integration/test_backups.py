"""Backups with real guests on a one-node cluster: `corral backup export|list|import|restore|remove`.

The test guest counts its boots on its disk (CORRAL-GUEST-BOOTED count=N on the console), so what a disk
held at the moment of an export is read back as the count the next boot prints.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

from conftest import AgentNode, boots, wait_boot_count, wait_for

from kvm import guestagent

BOOT_TIMEOUT_S = 90


def listed(node: AgentNode, instance: str) -> list[dict]:
    return node.json("backup", "list", instance)


def test_a_live_export_brings_back_the_disk_of_that_instant_as_a_new_instance_and_in_place(one_node):
    """Boot 1, export while running, boot 2: the import's first boot counts 2 (it found 1), and the original
    restored from the export counts 2 again."""
    node = one_node
    node.ok("instance", "add", "bk1", "--os", "busybox-guest", "--memory", "128M", "--disk", "64M")
    exports = node.root / "state" / "export"
    try:
        wait_boot_count(node, "bk1", 1)
        jobs = len(node.json("job", "list"))
        running = node.corral("backup", "export", "bk1")
        assert running.returncode != 0 and "export it with --live" in running.stderr, running
        elsewhere = node.corral("backup", "export", "bk1", "--to", "/tmp")
        assert elsewhere.returncode != 0 and "is not an export directory of node 'n1'" in elsewhere.stderr, elsewhere
        assert len(node.json("job", "list")) == jobs, "refused at submit: no job"

        made = node.ok("backup", "export", "bk1", "--live")
        assert "copied while the guest ran, as of one instant (crash-consistent" in made, made
        backup = wait_for(lambda: listed(node, "bk1"), 30, "the export in `backup list`")[0]
        assert backup["consistency"] == "crash" and backup["node"] == "n1" and backup["used_bytes"] > 0
        path = exports / "bk1" / backup["backup_id"]
        assert sorted(p.name for p in path.iterdir()) == ["backup.json", "disk0.qcow2"]
        config = json.loads((path / "backup.json").read_text())["instance"]
        assert config["name"] == "bk1" and config["memory_mib"] == 128

        node.ok("instance", "reboot", "bk1")
        wait_boot_count(node, "bk1", 2)

        taken = node.corral("backup", "import", backup["ref"], "--name", "bk1")
        assert taken.returncode != 0 and "already exists" in taken.stderr, taken
        imported = node.ok("backup", "import", f"bk1/{backup['backup_id']}", "--name", "bk2")
        assert "no OS is installed" in imported and "is used by another instance" in imported, imported
        wait_boot_count(node, "bk2", 2)  # the disk held count 1: its first boot here counts 2
        assert boots(node, "bk2") == [2]
        info = node.json("instance", "info", "bk2")
        assert info["memory"] == 128 and info["os"] == "busybox-guest"
        assert info["nics"][0]["mac"] != node.json("instance", "info", "bk1")["nics"][0]["mac"]

        unsure = node.corral("backup", "restore", "bk1", "--from", backup["ref"])
        assert unsure.returncode != 0 and "confirm with --yes" in unsure.stderr, unsure
        other = node.corral("backup", "restore", "bk2", "--from", backup["ref"], "--yes")
        assert other.returncode != 0 and "is of instance 'bk1', not 'bk2'" in other.stderr, other
        restored = node.ok("backup", "restore", "bk1", "--from", backup["ref"], "--yes")
        assert "stopping instance 'bk1'" in restored and "is running on node" in restored, restored
        wait_for(lambda: len(boots(node, "bk1")) >= 3, BOOT_TIMEOUT_S, "bk1's boot after the restore")
        assert boots(node, "bk1") == [1, 2, 2]

        node.ok("instance", "stop", "bk1")
        packed = node.ok("backup", "export", "bk1", "--compress", "--rate", "100")
        assert "copied while the instance was stopped" in packed and "at most 100 MiB/s a disk" in packed, packed
        wait_for(lambda: len(listed(node, "bk1")) == 2, 30, "the second export in `backup list`")
        assert [b["compressed"] for b in listed(node, "bk1")] == [False, True]

        (exports / "bk1" / "not-a-backup").mkdir()
        verify = wait_for(lambda: [f for f in node.json("cluster", "verify")
                                   if f["code"] == "backup-problem"], 30, "verify to name the stray directory")
        assert "not-a-backup is not a Corral backup: it has no backup.json" in verify[0]["message"], verify
        stray = node.corral("backup", "import", f"n1:{exports}/bk1/not-a-backup", "--name", "bk3")
        assert stray.returncode != 0 and "has no backup.json" in stray.stderr, stray
        assert "bk3" not in [i["name"] for i in node.json("instance", "list")]

        node.ok("backup", "remove", backup["ref"])
        assert not path.exists()
        wait_for(lambda: len(listed(node, "bk1")) == 1, 30, "the removed backup gone from `backup list`")
        gone = node.corral("backup", "remove", backup["ref"])
        assert gone.returncode != 0 and "no backup" in gone.stderr, gone
    finally:
        node.corral("instance", "remove", "bk1")
        node.corral("instance", "remove", "bk2")


def test_a_script_os_instance_is_backed_up_through_its_os_export_and_import_scripts(one_node):
    """corral-guest is a script OS: its export script writes each disk to the backup's disk0.dump, and its import
    script writes it back, for an import and for a restore (the disk that booted once: its next boot counts 2)."""
    node = one_node
    node.ok("instance", "add", "sc1", "--os", "corral-guest", "--memory", "128M", "--disk", "64M")
    try:
        wait_boot_count(node, "sc1", 1)
        made = node.ok("backup", "export", "sc1", "--live")
        assert "as the export script of OS 'corral-guest' wrote it" in made, made
        backup = wait_for(lambda: listed(node, "sc1"), 30, "the export in `backup list`")[0]
        assert (backup["dumps"], backup["consistency"]) == ("corral-guest", "crash")
        assert sorted(p.name for p in Path(backup["path"]).iterdir()) == ["backup.json", "disk0.dump"]
        assert list((node.root / "log" / "os").glob("export-corral-guest-sc1-disk0-*.log"))

        node.ok("instance", "reboot", "sc1")
        wait_boot_count(node, "sc1", 2)
        node.ok("backup", "import", backup["ref"], "--name", "sc2")
        wait_boot_count(node, "sc2", 2)
        assert list((node.root / "log" / "os").glob("import-corral-guest-sc2-disk0-*.log"))
        node.ok("backup", "restore", "sc1", "--from", backup["ref"], "--yes")
        wait_for(lambda: len(boots(node, "sc1")) >= 3, BOOT_TIMEOUT_S, "sc1's boot after the restore")
        assert boots(node, "sc1") == [1, 2, 2]
        assert json.loads((Path(backup["path"]) / "backup.json").read_text())["dumps"] == "corral-guest"
    finally:
        node.corral("instance", "remove", "sc1")
        node.corral("instance", "remove", "sc2")


# What Ganeti 3.0's FinalizeExport (lib/backend.py) writes into <export dir>/<instance>/config.ini through
# configparser ("key = value", absent values as "None"), for a KVM instance of the corral-guest OS (Ganeti OS
# API 20; its export script writes the disk with dd, so a dump is the raw disk) exported while stopped from a
# file disk. disk0_dump names the dump beside config.ini (Ganeti names it after the disk's snapshot volume).
GANETI_CONFIG = """\
[export]
version = 0
timestamp = 1733400000
source = node1.example.com
os = corral-guest+default
compression = none

[instance]
name = gnt1.example.com
maxmem = 128
minmem = 128
memory = 128
vcpus = 1
disk_template = file
hypervisor = {hypervisor}
tags = from-ganeti
nic_count = 0
disk0_ivname = disk/0
disk0_dump = 5b2f0c1e-3a4d-4e5f-8a9b-0c1d2e3f4a5b.disk0_data.snap
disk0_size = 64
disk0_name = None
disk_count = 1

[hypervisor]
kernel_path = {guest}/vmlinuz
initrd_path = {guest}/initrd.img
kernel_args = quiet
root_path = /dev/vda1
serial_console = True
disk_type = paravirtual
nic_type = paravirtual
kvm_path = /usr/bin/kvm
migration_downtime = 30
spice_bind = 

[backend]
maxmem = 128
minmem = 128
vcpus = 1
always_failover = False
auto_balance = True
spindle_use = 1

[os]
filesystem = ext4

[os_private]
"""


def test_an_export_ganeti_wrote_imports_through_the_os_import_script_and_boots_its_disk(one_node, guest_dir):
    """The dump is a disk that booted twice (a Corral instance's, as Ganeti's corral-guest export script would
    write it): imported with `backup import --ganeti`, it boots a third time under the exported name."""
    node = one_node
    node.ok("instance", "add", "gsrc", "--os", "busybox-guest", "--memory", "128M", "--disk", "64M")
    export = node.root / "state" / "export" / "gnt1.example.com"
    try:
        wait_boot_count(node, "gsrc", 1)
        node.ok("instance", "reboot", "gsrc")
        wait_boot_count(node, "gsrc", 2)
        node.ok("instance", "stop", "gsrc")
        disk = next((node.root / "state" / "file-storage" / "gsrc").glob("disk0.*"))
        export.mkdir(parents=True)
        dump = export / "5b2f0c1e-3a4d-4e5f-8a9b-0c1d2e3f4a5b.disk0_data.snap"
        subprocess.run(["qemu-img", "convert", "-O", "raw", str(disk), str(dump)], check=True, timeout=60)

        (export / "config.ini").write_text(GANETI_CONFIG.format(hypervisor="xen-pvm", guest=guest_dir))
        xen = node.corral("backup", "import", "--ganeti", f"n1:{export}")
        assert xen.returncode != 0 and "uses the xen-pvm hypervisor; Corral runs only kvm" in xen.stderr, xen
        (export / "config.ini").write_text(GANETI_CONFIG.format(hypervisor="kvm", guest=guest_dir))
        dump.rename(export / "elsewhere")
        partial = node.corral("backup", "import", "--ganeti", f"n1:{export}")
        assert partial.returncode != 0 and "is incomplete: disk0_dump" in partial.stderr, partial
        (export / "elsewhere").rename(dump)
        lost = node.corral("backup", "import", "--ganeti", f"n1:{export.parent}")
        assert lost.returncode != 0 and "is not a Ganeti export: it has no config.ini" in lost.stderr, lost
        assert "gnt1.example.com" not in [i["name"] for i in node.json("instance", "list")]

        made = node.ok("backup", "import", "--ganeti", f"n1:{export}")
        assert "through OS 'corral-guest+default'" in made, made
        wait_boot_count(node, "gnt1.example.com", 3)  # its disk had booted twice
        info = node.json("instance", "info", "gnt1.example.com")
        assert (info["memory"], info["vcpus"], info["os"], info["tags"]) == (128, 1, "corral-guest+default",
                                                                              ["from-ganeti"])
        assert list((node.root / "log" / "os").glob("import-corral-guest-gnt1.example.com-disk0-*.log"))
        again = node.corral("backup", "import", "--ganeti", f"n1:{export}")
        assert again.returncode != 0 and "already exists" in again.stderr, again
    finally:
        node.corral("instance", "remove", "gnt1.example.com")
        node.corral("instance", "remove", "gsrc")


def test_a_guest_running_the_guest_agent_is_copied_with_its_file_systems_frozen(one_node):
    """hvparam guest_agent gives the instance the agent's channel; the test guest runs qemu-ga, so a live
    export and a snapshot freeze its file systems for their instant (and thaw them: it boots on)."""
    node = one_node
    node.ok("instance", "add", "ga1", "--os", "busybox-guest", "--memory", "128M", "--disk", "64M",
            "--hv", "guest_agent=true")
    try:
        wait_boot_count(node, "ga1", 1)
        socket = next((node.root / "run").rglob("instances/ga1/qga.sock"))

        def answers() -> bool:
            try:
                asyncio.run(guestagent.ping(str(socket), 1.0))
                return True
            except guestagent.GuestAgentError:
                return False
        wait_for(answers, 30, "qemu-ga in ga1 to answer")
        made = node.ok("backup", "export", "ga1", "--live", "--rate", "50")
        assert "its file systems frozen by the guest agent" in made, made
        backup = wait_for(lambda: listed(node, "ga1"), 30, "the export in `backup list`")[0]
        assert backup["consistency"] == "filesystems", backup
        snap = node.ok("instance", "snapshot", "ga1", "create", "s1")
        assert "its file systems frozen by the guest agent" in snap, snap
        assert asyncio.run(guestagent.fsfreeze_status(str(socket))) == "thawed"
        node.ok("instance", "reboot", "ga1")
        wait_boot_count(node, "ga1", 2)  # thawed: its shutdown and next boot wrote to the disk
    finally:
        node.corral("instance", "remove", "ga1")
