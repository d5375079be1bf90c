"""The `mirror` template end to end: three real agents, real QEMU guests, NBD over TLS.

The guest (corral.seq=1) writes an increasing number to its disk every
100 ms and prints it only once it is synced, so "the disk holds every write
the guest saw acknowledged" is checked by comparing what the console showed
with what the guest finds on its disk when it boots elsewhere.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import time
from pathlib import Path

import pytest
from conftest import AgentNode, Cluster, console_answer, wait_for

pytestmark = pytest.mark.integration

SEQ = re.compile(r"CORRAL-GUEST-SEQ n=(\d+)")
SEQ_START = re.compile(r"CORRAL-GUEST-SEQ-START last=(\d+)")
BOOTED = re.compile(r"CORRAL-GUEST-BOOTED count=(\d+)")
SYNC_RATE_MIB_S = "16"  # slow enough for the reports to show a copy in progress


def console(node: AgentNode, name: str) -> str:
    path = node.root / "log" / "console" / f"{name}.console.log"
    return path.read_text(errors="replace") if path.exists() else ""


def refused(node: AgentNode, *args: str) -> str:
    result = node.corral(*args)
    assert result.returncode != 0, f"corral {' '.join(args)} was accepted:\n{result.stdout}"
    return result.stderr


def numbers(text: str) -> list[int]:
    return [int(n) for n in SEQ.findall(text)]


def replication(node: AgentNode, name: str) -> dict:
    return node.json("instance", "info", name)["replication"]


def wait_in_sync(node: AgentNode, name: str, timeout_s: float = 90) -> None:
    wait_for(lambda: replication(node, name)["summary"] == "in sync" and replication(node, name)["in_sync"],
             timeout_s, f"the disks of {name} to be in sync")


def summaries_until_in_sync(node: AgentNode, name: str, timeout_s: float = 120) -> list[str]:
    """Wait until the copy of `name` is in sync; what `instance info` said meanwhile (syncing 40%, ...)."""
    seen: list[str] = []

    def synced() -> bool:
        rep = replication(node, name)
        seen.append(rep["summary"])
        return rep["summary"] == "in sync" and rep["in_sync"]
    wait_for(synced, timeout_s, f"the copy of {name} to be in sync")
    return seen


@pytest.fixture(scope="module")
def mirror_cluster(tmp_path_factory, guest_dir: Path):
    cluster = Cluster(tmp_path_factory.mktemp("mirror"), 3, subnet="127.0.8")  # its own: disk exports use fixed ports
    try:
        cluster.form(f"accel=tcg,kernel_path={guest_dir}/vmlinuz,initrd_path={guest_dir}/initrd.img,"
                        "kernel_args=quiet corral.seq=1,shutdown_timeout_s=10", 3,
                     "--sync-rate", SYNC_RATE_MIB_S)
        cluster.wait_candidates(3)
        yield cluster
    finally:
        cluster.stop()


@pytest.mark.timeout(780)  # its bounded waits add up to 660 s
def test_a_mirrored_instance_migrates_live_and_survives_losing_its_primary(mirror_cluster: Cluster) -> None:
    n1, n2, n3 = (mirror_cluster[n] for n in ("n1", "n2", "n3"))
    n1.ok("instance", "add", "m1", "--os", "busybox-guest", "--disk-template", "mirror", "--node", "n2:n3",
          "--disk", "64M", "--memory", "128M")
    wait_in_sync(n1, "m1")
    info = n1.json("instance", "info", "m1")
    assert (info["primary_node"], info["secondary_node"]) == ("n2", "n3")
    assert [d["status"] for d in info["replication"]["disks"]] == ["in_sync"]
    wait_for(lambda: len(numbers(console(n2, "m1"))) >= 5, 60, "the guest to count on n2")

    # Live migration: the guest keeps counting on n3 without booting again.
    out = n1.ok("instance", "migrate", "m1")
    assert re.search(r"now runs on node 'n3': guest paused \d+ ms", out), out
    before = max(numbers(console(n2, "m1")))
    wait_for(lambda: any(n > before for n in numbers(console(n3, "m1"))), 30, "the guest to count on n3")
    assert not SEQ_START.search(console(n3, "m1")), "the guest booted again instead of migrating"
    info = n1.json("instance", "info", "m1")
    assert (info["primary_node"], info["secondary_node"], info["status"]) == ("n3", "n2", "running")
    wait_in_sync(n1, "m1")

    # Back, and there again: a QEMU that arrived by migration leaves by one (its incoming TLS
    # credentials are a server's, so the way out needs its own).
    for there in ("n2", "n3"):
        out = n1.ok("instance", "migrate", "m1")
        assert f"now runs on node '{there}'" in out, out
        wait_in_sync(n1, "m1")

    # The primary's node dies: agent and guest killed, no shutdown.
    wait_for(lambda: len(numbers(console(n3, "m1"))) > 20, 30, "more numbers on n3")
    n3.kill9()
    n3.kill_qemus()
    printed = max(numbers(console(n3, "m1")))
    refused = n1.corral("instance", "failover", "m1")
    assert refused.returncode != 0 and "--ignore-consistency" in refused.stderr
    n1.ok("instance", "failover", "m1", "--ignore-consistency")
    match = wait_for(lambda: SEQ_START.findall(console(n2, "m1"))[1:], 60, "the guest to boot on n2")
    assert int(match[-1]) >= printed, f"n2's copy holds {match[-1]}, the guest had printed {printed} on n3"
    info = n1.json("instance", "info", "m1")
    assert (info["primary_node"], info["secondary_node"]) == ("n2", "n3")

    # The old primary comes back: its copy is brought up to date, and `instance info` shows how far.
    n3.start()
    seen = summaries_until_in_sync(n1, "m1")
    assert any(re.match(r"(re)?syncing", s) for s in seen), seen


@pytest.mark.timeout(600)  # its bounded waits add up to 510 s
def test_disks_move_between_nodes_grow_and_get_a_new_secondary(mirror_cluster: Cluster) -> None:
    n1, n2, n3 = (mirror_cluster[n] for n in ("n1", "n2", "n3"))
    n1.ok("instance", "add", "f1", "--os", "busybox-guest", "--node", "n1", "--disk", "64M", "--memory", "128M")
    wait_for(lambda: BOOTED.findall(console(n1, "f1")), 60, "f1 to boot on n1")

    # Bad input changes nothing, and is refused before any job exists.
    jobs = len(n1.json("job", "list"))
    assert "cannot live-migrate instance 'f1'" in refused(n1, "instance", "migrate", "f1")
    assert len(n1.json("job", "list")) == jobs
    assert "is running; stop it first" in refused(n1, "instance", "move", "f1", "--node", "n2")
    assert "n2:n2" in refused(n1, "instance", "add", "bad", "--os", "busybox-guest", "--disk-template", "mirror",
                              "--node", "n2:n2", "--disk", "64M")
    n1.ok("node", "modify", "n3", "--drained", "yes")
    n1.ok("instance", "stop", "f1")
    assert "n3: drained" in refused(n1, "instance", "move", "f1", "--node", "n3")
    n1.ok("node", "modify", "n3", "--drained", "no")
    assert n1.json("instance", "info", "f1")["primary_node"] == "n1"

    # A stopped file instance moves with its disk: it boots on n2 and counts its second boot.
    out = n1.ok("instance", "move", "f1", "--node", "n2")
    assert "copied 64M of disks of 'f1' from node 'n1' to node 'n2'" in out
    n1.ok("instance", "start", "f1")
    wait_for(lambda: "2" in BOOTED.findall(console(n2, "f1")), 60, "f1 to boot a second time, on n2")

    # A mirror instance gets a new secondary, and a bigger disk while it is stopped.
    n1.ok("instance", "add", "m2", "--os", "busybox-guest", "--disk-template", "mirror", "--node", "n1:n2",
          "--disk", "64M", "--memory", "128M")
    wait_in_sync(n1, "m2")
    n1.ok("instance", "replace-secondary", "m2", "--node", "n3")
    assert n1.json("instance", "info", "m2")["secondary_node"] == "n3"
    wait_in_sync(n1, "m2")
    n2.wait_fresh_report()
    assert not [v for v in n2.json("node", "info", "n2").get("volumes", []) if v["instance"] == "m2"]
    assert "disks only grow" in refused(n1, "instance", "grow-disk", "m2", "0", "32M")
    assert "must be another node" in refused(n1, "instance", "replace-secondary", "m2", "--node", "n1")
    assert "grows only while it is stopped" in refused(n1, "instance", "grow-disk", "m2", "0", "128M")
    n1.ok("instance", "stop", "m2")
    n1.ok("instance", "grow-disk", "m2", "0", "128M")
    n1.ok("instance", "start", "m2")
    info = n1.json("instance", "info", "m2")
    assert info["disks"][0]["size_mib"] == 128 and info["status"] == "running"
    wait_in_sync(n1, "m2")
    assert "disk of 'm2' on node 'n1': " in n1.ok("instance", "activate-disks", "m2")
    verify = n1.corral("cluster", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr


@pytest.mark.timeout(2200)  # its bounded waits add up to 2070 s
def test_every_move_three_times_there_and_back_on_the_same_instances(mirror_cluster: Cluster) -> None:
    """One pass hides faults of the second (a QEMU that came by migration could not leave by one): each
    move runs three times in a row, mixed, on the same instances, and no acknowledged write is lost."""
    n1 = mirror_cluster["n1"]
    for old in ("m1", "f1", "m2"):  # the earlier tests' guests: fewer TCG guests, a steadier machine
        n1.corral("instance", "remove", old)
    n1.ok("cluster", "modify", "--sync-rate", "0")  # no copy in progress to watch here: its many full copies uncapped
    try:
        _every_move_three_times(mirror_cluster, n1)
    finally:
        n1.ok("cluster", "modify", "--sync-rate", SYNC_RATE_MIB_S)


def _every_move_three_times(mirror_cluster: Cluster, n1: AgentNode) -> None:
    n1.ok("instance", "add", "m4", "--os", "busybox-guest", "--disk-template", "mirror", "--node", "n1:n2",
          "--disk", "64M", "--memory", "128M")
    n1.ok("instance", "add", "f4", "--os", "busybox-guest", "--node", "n1", "--disk", "64M", "--memory", "128M",
          "--no-start")
    wait_in_sync(n1, "m4")

    def where(name: str) -> tuple[str, str | None]:
        info = n1.json("instance", "info", name)
        return info["primary_node"], info["secondary_node"]

    for round_ in range(3):
        primary, secondary = where("m4")
        node = mirror_cluster[primary]
        wait_for(lambda: numbers(console(node, "m4")), 60, f"m4 to count on {primary}")
        out = n1.ok("instance", "migrate", "m4")
        assert f"now runs on node '{secondary}'" in out, (round_, out)
        wait_in_sync(n1, "m4")

        primary, secondary = where("m4")
        node, other = mirror_cluster[primary], mirror_cluster[secondary]
        wait_for(lambda: numbers(console(node, "m4")), 60, f"m4 to count on {primary}")
        boots = len(SEQ_START.findall(console(other, "m4")))
        n1.ok("instance", "failover", "m4")  # planned: stopped on one, started from the other's copy
        printed = max(numbers(console(node, "m4")))
        found = wait_for(lambda: SEQ_START.findall(console(other, "m4"))[boots:], 90, f"m4 to boot on {secondary}")
        assert int(found[-1]) >= printed, f"round {round_}: {secondary}'s copy held {found[-1]}, {printed} was shown"
        assert where("m4") == (secondary, primary)
        wait_in_sync(n1, "m4")

        spare = next(n for n in ("n1", "n2", "n3") if n not in where("m4"))
        back = where("m4")[1]
        n1.ok("instance", "replace-secondary", "m4", "--node", spare)
        wait_in_sync(n1, "m4")
        n1.ok("instance", "replace-secondary", "m4", "--node", back)
        wait_in_sync(n1, "m4")

        target = "n2" if where("f4")[0] == "n1" else "n1"
        n1.ok("instance", "move", "f4", "--node", target)
        assert where("f4")[0] == target

    n1.ok("instance", "start", "f4")
    home = mirror_cluster[where("f4")[0]]
    wait_for(lambda: BOOTED.findall(console(home, "f4")), 90, "f4 to boot after three moves")

    # Renamed with its copy: both nodes' files follow, and the new name runs in sync from the same disks.
    primary, secondary = where("m4")
    printed = max(numbers(console(mirror_cluster[primary], "m4")))
    n1.ok("instance", "stop", "m4")
    n1.ok("instance", "rename", "m4", "m5")
    assert where("m5") == (primary, secondary)
    starts = len(SEQ_START.findall(console(mirror_cluster[primary], "m5")))  # its console log was renamed too
    n1.ok("instance", "start", "m5")
    found = wait_for(lambda: SEQ_START.findall(console(mirror_cluster[primary], "m5"))[starts:], 90, "m5 to boot")
    assert int(found[-1]) >= printed
    wait_in_sync(n1, "m5")
    verify = n1.corral("cluster", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    for name in ("m5", "f4"):
        n1.ok("instance", "remove", name)


@pytest.mark.timeout(480)  # its bounded waits add up to 390 s
def test_a_migration_cut_short_by_the_masters_death_is_undone_by_the_next_master(mirror_cluster: Cluster) -> None:
    n1, n2, n3 = (mirror_cluster[n] for n in ("n1", "n2", "n3"))
    assert mirror_cluster.master() == "n1"
    n1.ok("instance", "add", "m3", "--os", "busybox-guest", "--disk-template", "mirror", "--node", "n2:n3",
          "--disk", "64M", "--memory", "128M")
    wait_in_sync(n2, "m3")
    pid = n2.json("instance", "info", "m3")["pid"]
    job = n2.ok("instance", "migrate", "m3", "--max-bandwidth", "2", "--submit").strip()
    wait_for(lambda: "m3" in n3.json("node", "info", "n3")["instances"], 30, "the destination QEMU on n3")
    n1.kill9()  # the master dies in the middle of the migration
    wait_for(lambda: n2.json("job", "info", job)["status"] in ("error", "canceled"), 60,
             "the next master to end the migration job")
    wait_for(lambda: "m3" not in n3.json("node", "info", "n3")["instances"], 90,
             "the destination QEMU on n3 to be stopped")
    wait_for(lambda: n2.json("instance", "info", "m3")["reason"] == "", 30, "the migration on n2 to be over")
    info = n2.json("instance", "info", "m3")
    assert (info["primary_node"], info["status"], info["pid"]) == ("n2", "running", pid)
    wait_in_sync(n2, "m3")
    n1.start()


def test_a_console_opened_through_another_node_reaches_the_guest(mirror_cluster: Cluster) -> None:
    """The local agent relays the serial console from the instance's node over the node API."""
    n1, n2 = mirror_cluster["n1"], mirror_cluster["n2"]
    wait_for(lambda: mirror_cluster.master() is not None, 60, "a master")
    n2.ok("instance", "add", "c1", "--os", "busybox-guest", "--node", "n2", "--disk", "64M", "--memory", "128M")
    try:
        wait_for(lambda: BOOTED.findall(console(n2, "c1")), 90, "c1 to boot on n2")
        seen = console_answer(n1, "c1")  # n1: not c1's node
        assert b"hi-42" in seen, seen[-500:]
    finally:
        n1.corral("instance", "remove", "c1")


@pytest.mark.timeout(900)  # its bounded waits add up to 780 s
def test_a_running_mirror_instance_gets_a_disk_mirrored_migrates_with_it_and_loses_it(mirror_cluster: Cluster) -> None:
    """Hot-plug on a replicated instance: the new disk's copy is made by the running mirror, and the
    replica record says not in sync until it joined (a failover never lands on a copy lacking it)."""
    n1, n2, n3 = (mirror_cluster[n] for n in ("n1", "n2", "n3"))
    n1.ok("instance", "add", "hp1", "--os", "busybox-guest", "--disk-template", "mirror", "--node", "n2:n3",
          "--disk", "64M", "--memory", "128M", "--hv", "kernel_args=quiet corral.watch=1", "--hv", "hotplug_slots=1")
    try:
        wait_in_sync(n1, "hp1")
        wait_for(lambda: "CORRAL-GUEST-WATCHING" in console(n2, "hp1"), 90, "the guest to watch its disks")

        out = n1.ok("instance", "add-disk", "hp1", "64M")
        assert "hot-plugged: the guest sees it now" in out and "mirroring the disks of 'hp1'" in out, out
        assert not replication(n1, "hp1")["in_sync"]  # not before the new disk's copy joined
        seen = summaries_until_in_sync(n1, "hp1")
        assert any(re.match(r"(re)?syncing", s) for s in seen), seen
        assert [d["status"] for d in replication(n1, "hp1")["disks"]] == ["in_sync", "in_sync"]
        wait_for(lambda: "CORRAL-GUEST-DISK-ADDED vdb" in console(n2, "hp1"), 60, "the guest to see vdb")
        for node in (n2, n3):
            assert (node.root / "state" / "file-storage" / "hp1" / "disk1.raw").exists()

        # A disk that cannot be plugged (its one spare slot is taken) is not added anywhere, and the copy of
        # the others is in sync again.
        failed = n1.corral("instance", "add-disk", "hp1", "32M")
        assert failed.returncode != 0 and "no disk was added to 'hp1'" in failed.stderr \
            and "no free hot-plug slot" in failed.stderr, failed.stderr
        assert [d["index"] for d in n1.json("instance", "info", "hp1")["disks"]] == [0, 1]
        for node in (n2, n3):
            assert not (node.root / "state" / "file-storage" / "hp1" / "disk2.raw").exists()
        wait_in_sync(n1, "hp1")

        out = n1.ok("instance", "migrate", "hp1")
        assert "now runs on node 'n3'" in out, out
        wait_in_sync(n1, "hp1")

        n1.ok("instance", "remove-disk", "hp1", "1", "--destroy-data")
        wait_for(lambda: "CORRAL-GUEST-DISK-REMOVED vdb" in console(n3, "hp1"), 60, "the guest to let vdb go")
        assert [d["index"] for d in n1.json("instance", "info", "hp1")["disks"]] == [0]
        wait_in_sync(n1, "hp1")
        for node in (n2, n3):
            assert not (node.root / "state" / "file-storage" / "hp1" / "disk1.raw").exists()
        assert n1.json("instance", "info", "hp1")["status"] == "running"

        # Stopped, a disk and its blank copy are made at once, mirrored at the next start.
        n1.ok("instance", "stop", "hp1")
        assert "made at the next start" in n1.ok("instance", "add-disk", "hp1", "32M")
        n1.ok("instance", "start", "hp1")
        wait_in_sync(n1, "hp1")
        assert [d["status"] for d in replication(n1, "hp1")["disks"]] == ["in_sync", "in_sync"]
    finally:
        n1.corral("instance", "remove", "hp1")


def test_a_mirror_snapshot_reverts_the_primary_and_its_copy_is_made_anew_and_a_migrated_one_waits(mirror_cluster):
    """A snapshot is held by the primary that made it; after a revert the secondary's copy no longer matches,
    so it is recorded out of date and synced again at the start; once migrated away, the snapshot waits on its
    node (a revert there is refused, saying where it is)."""
    n1, n2 = mirror_cluster["n1"], mirror_cluster["n2"]
    n1.ok("instance", "add", "ms1", "--os", "busybox-guest", "--disk-template", "mirror", "--node", "n2:n3",
          "--disk", "64M", "--memory", "128M")
    try:
        wait_in_sync(n1, "ms1")
        wait_for(lambda: "CORRAL-GUEST-BOOTED count=1" in console(n2, "ms1"), 90,
                 "ms1 to boot on n2")
        assert "as of one instant" in n1.ok("instance", "snapshot", "ms1", "create", "s1")
        wait_for(lambda: n1.json("instance", "info", "ms1")["snapshots"], 30, "the snapshot in `instance info`")
        n1.ok("instance", "reboot", "ms1")
        wait_for(lambda: "CORRAL-GUEST-BOOTED count=2" in console(n2, "ms1"), 90, "ms1's second boot")
        wait_in_sync(n1, "ms1")
        n1.ok("instance", "stop", "ms1")
        n1.ok("instance", "snapshot", "ms1", "revert", "s1", "--yes")
        assert replication(n1, "ms1")["record"] != "in sync", "the copy holds what the primary no longer has"
        n1.ok("instance", "start", "ms1")
        wait_for(lambda: console(n2, "ms1").count("CORRAL-GUEST-BOOTED count=2") == 2, 90,
                 "ms1 to count 2 again (its disk as after the first boot)")
        wait_in_sync(n1, "ms1")

        n1.ok("instance", "migrate", "ms1")
        assert [(s["name"], s["node"]) for s in n1.json("instance", "info", "ms1")["snapshots"]] == [("s1", "n2")]
        n1.ok("instance", "stop", "ms1")
        assert "held by node 'n2'" in refused(n1, "instance", "snapshot", "ms1", "revert", "s1", "--yes")
    finally:
        n1.corral("instance", "remove", "ms1")
    for node in ("n2", "n3"):
        assert not (mirror_cluster[node].root / "state" / "file-storage" / "ms1").exists()


def test_a_live_export_to_another_node_streams_there_over_tls_and_comes_back_there(mirror_cluster):
    """The export is written on n1 while the guest runs on n2: n2's QEMU copies into images n1 serves (nothing
    is kept on n2), compressed on n1; imported there as a file instance, and on n3 (n1 writing into the disks
    n3 serves), each boots with the disk of that instant."""
    n1, n2 = mirror_cluster["n1"], mirror_cluster["n2"]
    exports = n1.root / "state" / "export"
    n1.ok("instance", "add", "mb1", "--os", "busybox-guest", "--disk-template", "mirror", "--node", "n2:n3",
          "--disk", "64M", "--memory", "128M")
    try:
        wait_for(lambda: "CORRAL-GUEST-BOOTED count=1" in console(n2, "mb1"), 90, "mb1 to boot on n2")
        wait_in_sync(n1, "mb1")
        made = n1.ok("backup", "export", "mb1", "--live", "--compress", "--to", f"n1:{exports}")
        assert "node 'n1' receives the disks of 'mb1' from node 'n2' over TLS" in made, made
        backup = wait_for(lambda: n1.json("backup", "list", "mb1"), 30, "the export in `backup list`")[0]
        assert (backup["node"], backup["compressed"], backup["consistency"]) == ("n1", True, "crash"), backup
        assert sorted(p.name for p in (exports / "mb1" / backup["backup_id"]).iterdir()) == ["backup.json",
                                                                                               "disk0.qcow2"]
        assert not (n2.root / "state" / "export" / "mb1").exists(), "the sending node keeps nothing"
        n1.ok("instance", "reboot", "mb1")
        wait_for(lambda: "CORRAL-GUEST-BOOTED count=2" in console(n2, "mb1"), 90, "mb1's second boot")
        n1.ok("backup", "import", backup["ref"], "--name", "mb2", "--disk-template", "file")
        wait_for(lambda: "CORRAL-GUEST-BOOTED count=" in console(n1, "mb2"), 90, "mb2 to boot on n1")
        assert re.findall(r"CORRAL-GUEST-BOOTED count=(\d+)", console(n1, "mb2")) == ["2"], "the disk of the export"
        sent = n1.ok("backup", "import", backup["ref"], "--name", "mb3", "--disk-template", "file", "--node", "n3")
        assert "node 'n1' sends the backup's images to node 'n3' over TLS" in sent, sent
        n3 = mirror_cluster["n3"]
        wait_for(lambda: "CORRAL-GUEST-BOOTED count=" in console(n3, "mb3"), 90, "mb3 to boot on n3")
        assert re.findall(r"CORRAL-GUEST-BOOTED count=(\d+)", console(n3, "mb3")) == ["2"], "the disk of the export"
    finally:
        n1.corral("instance", "remove", "mb3")
        n1.corral("instance", "remove", "mb2")
        n1.corral("instance", "remove", "mb1")


def disk_image(node: AgentNode, name: str) -> Path:
    found = [p for p in node.root.rglob(f"{name}/disk0.*") if p.suffix in (".raw", ".qcow2")]
    assert len(found) == 1, found
    return found[0]


def last_sync(node: AgentNode, name: str) -> dict:
    return replication(node, name)["disks"][0].get("last_sync") or {}


@pytest.mark.timeout(600)  # its bounded waits add up to 480 s
def test_a_copy_back_from_an_outage_or_a_migration_gets_only_what_it_missed(mirror_cluster: Cluster) -> None:
    """The secondary's agent and export die for a few seconds while the guest writes: once back, only the
    blocks written meanwhile are copied (not the 256 MiB disk); a live migration is followed by no full
    copy either; at rest both copies are identical, byte for byte."""
    n1 = mirror_cluster["n1"]
    master = mirror_cluster.master()
    primary, secondary = [n for n in ("n1", "n2", "n3") if n != master][:2]
    p, s = mirror_cluster[primary], mirror_cluster[secondary]
    n1.ok("instance", "add", "r1", "--os", "busybox-guest", "--disk-template", "mirror",
          "--node", f"{primary}:{secondary}", "--disk", "256M", "--memory", "128M")
    try:
        # The first copy is a full one, throttled (256 MiB at 16 MiB/s): an ETA from the first seconds on, falling.
        samples: list[tuple[float, str, float | None]] = []

        def sampled() -> bool:
            rep = replication(n1, "r1")
            samples.extend((time.monotonic(), d["status"], d.get("eta_s")) for d in rep["disks"][:1])
            return rep["summary"] == "in sync" and rep["in_sync"]
        wait_for(sampled, 120, "the first copy of r1")
        syncing = [(at, eta) for at, status, eta in samples if status == "syncing"]
        timed = [(at, eta) for at, eta in syncing if eta is not None]
        assert len(timed) >= 3, f"the copy's first report is measuring, every later one has an ETA: {samples}"
        assert timed[0][0] - syncing[0][0] < 15, f"no ETA in the first seconds of the copy: {samples}"
        after = [eta for at, eta in syncing if at >= timed[0][0]]
        assert None not in after, f"the ETA vanished during the copy: {samples}"
        # 256 MiB at 16 MiB/s is 16 s: an ETA of minutes would be a lie (a throttled copy's bursts once gave 47 min).
        assert max(eta for _, eta in timed) < 90, f"an ETA far off the copy's real pace: {samples}"
        assert timed[-1][1] < timed[0][1], f"the ETA did not fall: {samples}"
        assert last_sync(n1, "r1") == {}, "the first copy is a full one"
        wait_for(lambda: len(numbers(console(p, "r1"))) >= 5, 60, "the guest to count")

        # The secondary's node goes away (agent and export killed) while the guest writes, then comes back.
        pidfile = s.root / "run" / "replication" / "r1-disk0.pid"
        export = int(pidfile.read_text().strip())
        s.kill9()
        os.kill(export, signal.SIGKILL)
        before = len(numbers(console(p, "r1")))
        wait_for(lambda: len(numbers(console(p, "r1"))) >= before + 30, 60, "the guest to write on, alone")
        assert not replication(n1, "r1")["in_sync"]
        s.start()
        wait_in_sync(n1, "r1", timeout_s=120)
        sync = last_sync(n1, "r1")
        assert sync.get("mode") == "incremental", sync
        assert 0 < sync["copied_mib"] < 16, f"copied {sync['copied_mib']} MiB of a 256 MiB disk to resync"

        # Live migration: the old primary keeps its images as the new copy, and gets only what changed.
        out = n1.ok("instance", "migrate", "r1")
        assert f"now runs on node '{secondary}'" in out, out
        wait_in_sync(n1, "r1", timeout_s=120)
        sync = last_sync(n1, "r1")
        assert sync.get("mode") == "incremental", sync
        assert sync["copied_mib"] < 16, sync
        out = n1.ok("instance", "migrate", "r1")
        assert f"now runs on node '{primary}'" in out, out
        wait_in_sync(n1, "r1", timeout_s=120)
        assert last_sync(n1, "r1").get("mode") == "incremental"

        # At rest, the two copies are the same bytes.
        n1.ok("instance", "stop", "r1")
        digests = [hashlib.sha256(disk_image(node, "r1").read_bytes()).hexdigest() for node in (p, s)]
        assert digests[0] == digests[1], "the copies differ after a resync that said in sync"
    finally:
        n1.corral("instance", "remove", "r1")
