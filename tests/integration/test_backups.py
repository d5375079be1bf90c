"""Backups with real guests on a one-node cluster: `corral backup export|list|import|restore|remove`.

The test guest counts its boots on its disk (CORRAL-GUEST-BOOTED count=N on the console), so what a disk
held at the moment of an export is read back as the count the next boot prints.
"""

from __future__ import annotations

import json

from conftest import AgentNode, boots, wait_boot_count, wait_for

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
        assert "copied while the guest ran, as of one instant (crash-consistent)" in made, made
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
        packed = node.ok("backup", "export", "bk1", "--compress")
        assert "copied while the instance was stopped" in packed, packed
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
