"""A one-node cluster with real etcd, Serf and QEMU (TCG) running the test guest.

The tests run in file order against one cluster, like an operator's session.
"""

from __future__ import annotations

import json
import os
import re
import socket
import ssl
import stat
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from conftest import GUEST_DIR, AgentNode, boots, console_answer, wait_boot_count, wait_for

from hostagent.node.priority import CONTROL_NICE

pytestmark = pytest.mark.integration
BOOT_TIMEOUT_S = 90


@pytest.fixture(scope="module")
def g1(one_node) -> str:
    """The image instance most tests here use, booted once; what `instance add` said."""
    out = one_node.ok("instance", "add", "g1", "--os", "busybox-guest", "--memory", "256M",
                      "--disk", "256M,format=qcow2")
    wait_boot_count(one_node, "g1", 1)
    return out


@pytest.fixture(scope="module")
def g2(one_node) -> None:
    """An instance installed by the script OS definition, booted once."""
    one_node.ok("instance", "add", "g2", "--os", "corral-guest", "--memory", "128M", "--disk", "128M")
    wait_boot_count(one_node, "g2", 1)


def test_cluster_init_makes_this_node_master(one_node):
    info = one_node.json("cluster", "info")
    assert info["name"] == "t1"
    assert info["master"] == "n1"
    nodes = one_node.json("node", "list")
    assert [(n["name"], n["role"], n["status"]) for n in nodes] == [("n1", "master", "online")]
    jobs = one_node.json("job", "list")
    assert jobs[0]["op"] == "cluster.init" and jobs[0]["status"] == "success"


def test_os_list_shows_image_and_script_os(one_node):
    oses = {o["name"]: o["kind"] for o in one_node.json("os", "list")["os"]}
    assert oses.get("busybox-guest") == "image"
    assert oses.get("corral-guest") == "script"


def test_instance_from_image_boots_and_prints_marker(one_node, g1):
    assert "instance 'g1' is running on node 'n1'" in g1
    row = one_node.instance("g1")
    assert (row["status"], row["primary_node"], row["disk_template"], row["memory"], row["vcpus"]) == \
        ("running", "n1", "file", 256, 1)
    assert row["secondary_node"] is None
    qemu = int((one_node.root / "run" / "instances" / "g1" / "qemu.pid").read_text())
    keeper = int((one_node.root / "run" / "fence-keeper.pid").read_text())
    assert (nice(one_node.proc.pid), nice(keeper), nice(qemu)) == (CONTROL_NICE, CONTROL_NICE, 0), \
        "the agent and its fence keeper run above the guests' CPU priority; the guest at the host's usual one"


def nice(pid: int) -> int:
    """A process's niceness, from /proc (field 19 of stat, after the command name in parentheses)."""
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[16])


def test_stop_and_start_keeps_the_disk(one_node, g1):
    booted = max(boots(one_node, "g1"))
    out = one_node.ok("instance", "stop", "g1")
    assert "shut down cleanly (ACPI)" in out
    wait_for(lambda: one_node.instance("g1")["status"] == "stopped", 15, "g1 to show stopped")
    one_node.ok("instance", "start", "g1")
    wait_boot_count(one_node, "g1", booted + 1)


def test_soft_and_hard_reboot_boot_again(one_node, g1):
    booted = max(boots(one_node, "g1"))
    one_node.ok("instance", "reboot", "g1")
    wait_boot_count(one_node, "g1", booted + 1)
    one_node.ok("instance", "reboot", "g1", "--type", "hard")
    wait_boot_count(one_node, "g1", booted + 2)


def test_a_console_get_without_websocket_upgrade_is_told_to_upgrade_and_leaves_the_console_free(one_node, g1):
    """The guest's console takes one client at a time: a plain GET (a write user's, over TLS) must not open
    it, or the operator's `corral instance console` would wait behind a connection nobody reads."""
    token = one_node.json("user", "add", "plain-get", "--role", "write")["token"]
    ctx = ssl.create_default_context(cafile=str(one_node.root / "state" / "pki" / "ca.crt"))
    for _ in range(3):
        req = urllib.request.Request(f"https://{one_node.api}/v1/instances/g1/console",
                                     headers={"Authorization": f"Bearer {token}"})
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, context=ctx, timeout=30)
        assert err.value.code == 426 and err.value.headers["Upgrade"] == "websocket"
        assert "the console of instance 'g1' is a websocket" in json.loads(err.value.read())["message"]
    assert b"hi-42" in console_answer(one_node, "g1")


def test_console_reaches_the_guest_shell(one_node, g1):
    """`corral instance console` relays keystrokes to the guest and its answer back; Ctrl-] detaches."""
    assert b"hi-42" in console_answer(one_node, "g1")
    assert one_node.instance("g1")["status"] == "running"


def test_agent_killed_with_sigkill_finds_its_instance_again(one_node, g1):
    before = wait_for(lambda: one_node.instance("g1")["pid"], 15, "g1's pid in the node report")
    booted = max(boots(one_node, "g1"))
    one_node.kill9()
    os.kill(before, 0)  # QEMU survived the agent
    one_node.start()
    one_node.wait_fresh_report()
    assert one_node.instance("g1")["status"] == "running"
    assert one_node.instance("g1")["pid"] == before
    assert max(boots(one_node, "g1")) == booted  # not restarted


def test_script_os_definition_installs_a_bootable_disk(one_node, g2):
    os_logs = list((one_node.root / "log" / "os").glob("add-corral-guest-g2-*.log"))
    assert os_logs, "the OS create script's log is kept"


def test_remove_deletes_disk_pidfile_and_process(one_node, g2):
    pid = one_node.instance("g2")["pid"]
    disk_dir = one_node.root / "state" / "file-storage" / "g2"
    assert disk_dir.exists()
    one_node.ok("instance", "remove", "g2")
    assert not disk_dir.exists()
    assert not list((one_node.root / "run").rglob("g2/qemu.pid"))
    assert not Path(f"/proc/{pid}").exists() or b"g2" not in Path(f"/proc/{pid}/cmdline").read_bytes()
    assert "g2" not in [i["name"] for i in one_node.json("instance", "list")]


def _refused(node: AgentNode, args: list[str], message: str) -> None:
    jobs_before = len(node.json("job", "list"))
    instances_before = sorted(i["name"] for i in node.json("instance", "list"))
    result = node.corral(*args)
    assert result.returncode != 0, result.stdout
    assert message in result.stderr, result.stderr
    assert sorted(i["name"] for i in node.json("instance", "list")) == instances_before
    assert len(node.json("job", "list")) == jobs_before  # refused before any job existed


@pytest.mark.parametrize("args,message", [
    (["instance", "add", "g1", "--os", "busybox-guest"], "an instance named 'g1' already exists"),
    (["instance", "add", "g3", "--os", "nosuch"], "OS 'nosuch' is not available on node 'n1' (available: "),
    (["instance", "add", "g3", "--os", "busybox-guest", "--disk", "12Q"], "'12Q' is not a size"),
    (["instance", "add", "g3", "--os", "busybox-guest", "--memory", "64T"], "n1: only "),
    (["instance", "add", "g3", "--os", "busybox-guest", "--hv", "accel=xen"], "'xen'"),
    (["instance", "add", "g3", "--os", "corral-guest+../../../etc", "--disk", "64M"],
     "os: variant '../../../etc' is not a variant name"),
    (["instance", "add", "g3", "--os", "corral-guest+nosuch", "--disk", "64M"],
     "os: OS 'corral-guest' on node 'n1' has no variant 'nosuch' (its variants.list offers: default)"),
    (["instance", "add", "g3", "--os", "corral-guest", "--disk", "64M", "--os-param", "filesystem=ext4;reboot"],
     "osparams: filesystem: 'ext4;reboot' is not accepted"),
    (["instance", "add", "g3", "--os", "corral-guest", "--disk", "64M", "--os-param", "filesystem=ext4\nX=$(id)"],
     "no shell characters such as ; $ ` | &, no newlines"),
    (["instance", "add", "g3", "--os", "corral-guest", "--disk", "64M", "--os-param", "root-password=x"],
     "OS 'corral-guest' on node 'n1' takes no parameter 'root-password' (its parameters.list names: filesystem)"),
    (["instance", "add", "g3", "--os", "busybox-guest", "--hv", "initrd_path=/etc/shadow"],
     "hypervisor parameter 'initrd_path': '/etc/shadow' is not a file in the kernel directories on node 'n1'"),
    (["instance", "add", "g3", "--os", "busybox-guest", "--hv", f"kernel_path={GUEST_DIR}/../../../../etc/shadow"],
     "hypervisor parameter 'kernel_path'"),
    (["instance", "start", "g1"], "instance 'g1' is already running on node 'n1'"),
    (["instance", "remove", "nosuch"], "no instance named 'nosuch'"),
])
def test_bad_input_is_refused_clearly_and_leaves_nothing(one_node, g1, args, message):
    _refused(one_node, args, message)
    assert not (one_node.root / "state" / "file-storage" / "g3").exists()


def test_a_kernel_file_linked_out_of_the_kernel_directories_is_refused_by_the_node(one_node):
    """The master judges the path as written; the node resolves it before QEMU starts, so a symlink (or a
    file swapped for one) in an allowed directory still cannot hand a host file to the guest."""
    kernels = one_node.root / "kernels"
    kernels.mkdir(exist_ok=True)
    (kernels / "initrd.img").symlink_to("/etc/shadow")
    one_node.ok("instance", "add", "k1", "--os", "busybox-guest", "--memory", "64M", "--disk", "64M",
                "--no-start", "--hv", f"initrd_path={kernels}/initrd.img")
    try:
        result = one_node.corral("instance", "start", "k1")
        assert result.returncode != 0
        assert (f"hypervisor parameter 'initrd_path': '{kernels}/initrd.img' (which is '/etc/shadow') is not in the "
                "kernel directories of this node") in result.stdout + result.stderr
        assert one_node.instance("k1")["pid"] is None
        assert not (one_node.root / "run" / "instances" / "k1" / "qemu.pid").exists()
        assert "is marked down again: the start failed" in result.stdout + result.stderr
        row = one_node.instance("k1")
        assert row["admin_state"] == "down", row  # no restart duty retrying what the operator saw refused
    finally:
        one_node.ok("instance", "remove", "k1")


def test_vnc_is_a_unix_socket_only_root_reaches_never_a_tcp_port(one_node):
    one_node.ok("instance", "add", "v1", "--os", "busybox-guest", "--memory", "64M", "--disk", "64M",
                "--hv", "vnc=localhost")
    try:
        pid = wait_for(lambda: one_node.instance("v1")["pid"], 30, "v1's QEMU in the node report")
        assert [c for c in psutil.Process(pid).net_connections(kind="inet") if c.status == "LISTEN"] == []
        path = wait_for(lambda: one_node.json("instance", "info", "v1")["vnc_socket"], 15, "v1's VNC socket")
        assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(10)
            sock.connect(path)
            assert sock.recv(12) == b"RFB 003.008\n"
        hint = one_node.ok("instance", "console", "v1", "--vnc")
        assert f"ssh -N -L 5901:{path} root@127.0.0.1" in hint
        no_vnc = one_node.corral("instance", "console", "g1", "--vnc")
        assert no_vnc.returncode == 2 and "its hypervisor parameter vnc is off" in no_vnc.stderr
    finally:
        one_node.ok("instance", "remove", "v1")


def test_mac_addresses_are_unique_in_the_cluster(one_node, g1):
    used = one_node.instance("g1")["nics"][0]["mac"]
    _refused(one_node, ["instance", "add", "g3", "--os", "busybox-guest", "--net", f"mode=user,mac={used}"],
             f"MAC address {used} is already used by another instance")


def test_malformed_agent_config_is_refused_with_every_problem(tmp_path):
    import sys
    bad = tmp_path / "agent.toml"
    bad.write_text('[node]\nname = "Bad Name"\n[ports]\napi = "x"\n')
    result = subprocess.run([str(Path(sys.executable).parent / "corral-agent"), "--config", str(bad)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "'Bad Name' is not a valid node name" in result.stderr
    assert "missing required key 'address' in [node]" in result.stderr
    assert "ports.api: expected an integer" in result.stderr


def test_a_guest_that_dies_is_restarted_and_one_that_cannot_boot_is_given_up_with_its_console(one_node, g1):
    result = one_node.corral("cluster", "verify")
    assert result.returncode == 0, result.stdout + result.stderr
    pid = one_node.instance("g1")["pid"]
    os.kill(pid, 9)  # QEMU dies behind the agent's back

    def restarted() -> bool:
        row = one_node.instance("g1")
        return row["status"] == "running" and row["pid"] not in (None, pid)
    wait_for(restarted, 30, "the master to restart g1")
    assert "instance 'g1' is marked up but its QEMU is not running: starting it on node 'n1' (attempt 1 of 5)" \
        in (one_node.root / "agent.log").read_text()

    one_node.ok("instance", "add", "p1", "--os", "busybox-guest", "--memory", "128M", "--disk", "64M",
                "--hv", "kernel_args=quiet corral.panic=1")  # panics at every boot
    wait_for(lambda: one_node.instance("p1")["status"] == "failed", 120, "the master to give p1 up")
    info = one_node.json("instance", "info", "p1")
    assert info["reason"].startswith("gave up after 5 start attempts on node 'n1'")
    assert any("Kernel panic" in line for line in info["console_tail"]), info["console_tail"]
    result = one_node.corral("cluster", "verify")
    assert result.returncode == 1 and "instance 'p1': gave up after 5 start attempts" in result.stdout
    kinds = [e["kind"] for e in one_node.json("events", "--instance", "p1", "--limit", "0")]
    assert kinds == ["restart"] * 5 + ["give-up"], kinds
    assert [e["kind"] for e in one_node.json("events", "--instance", "g1")] in (["restart"], ["restart", "recovered"])
    assert "gave up after 5 start attempts" in one_node.ok("events", "--node", "n1")
    one_node.ok("instance", "remove", "p1")


def test_job_info_and_submit(one_node, g1):
    job_id = one_node.ok("instance", "stop", "g1", "--submit").strip()
    assert job_id.isdigit()
    watched = one_node.corral("job", "watch", job_id)
    assert watched.returncode == 0
    job = one_node.json("job", "info", job_id)
    assert job["status"] == "success" and job["op"] == "instance.stop"
    assert any("stopping instance 'g1'" in line for _, line in job["log"])


def qemu_args(pid: int) -> str:
    return " ".join(psutil.Process(pid).cmdline())


def test_memory_and_vcpus_of_a_running_instance_wait_for_its_next_start(one_node):
    one_node.ok("cluster", "modify", "--default-memory", "96M", "--default-vcpus", "1")
    one_node.ok("instance", "add", "grow1", "--os", "busybox-guest", "--disk", "64M")
    row = wait_for(lambda: (r := one_node.instance("grow1"))["pid"] and r, 60, "grow1 running")
    assert (row["memory"], row["vcpus"]) == (96, 1)  # the cluster's defaults
    assert re.search(r"-m 96(M|\b)", qemu_args(row["pid"])), qemu_args(row["pid"])

    out = one_node.ok("instance", "modify", "grow1", "--memory", "160M", "--vcpus", "2")
    assert "pending: memory 160M, 2 vCPUs take(s) effect at the next restart of 'grow1'" in out, out
    info = one_node.json("instance", "info", "grow1")
    assert (info["memory"], info["vcpus"], info["pending"]) == (96, 1, {"memory_mib": 160, "vcpus": 2})
    assert "pending:      memory 160M, 2 vCPUs: takes effect at the next restart" in \
        one_node.ok("instance", "info", "grow1")
    assert info["pid"] == row["pid"]  # nothing restarted

    refused = one_node.corral("instance", "modify", "grow1", "--memory", "64T")
    assert refused.returncode != 0 and "n1: only" in refused.stderr, refused.stderr
    assert one_node.json("instance", "info", "grow1")["pending"] == {"memory_mib": 160, "vcpus": 2}

    one_node.ok("instance", "reboot", "grow1")
    row = wait_for(lambda: (r := one_node.instance("grow1"))["pid"] not in (None, row["pid"]) and r, 60,
                   "grow1 running again")
    assert (row["memory"], row["vcpus"], row["pending"]) == (160, 2, {})
    args = qemu_args(row["pid"])
    assert re.search(r"-m 160(M|\b)", args) and re.search(r"-smp 2\b", args), args

    one_node.ok("instance", "stop", "grow1")
    one_node.ok("instance", "modify", "grow1", "--memory", "128M", "--hv", "shutdown_timeout_s=5")
    info = one_node.json("instance", "info", "grow1")  # stopped: made at once, nothing pending
    assert (info["memory"], info["pending"], info["hvparams"].get("shutdown_timeout_s")) == (128, {}, "5")
    one_node.ok("instance", "modify", "grow1", "--hv", "shutdown_timeout_s=")
    assert "shutdown_timeout_s" not in one_node.json("instance", "info", "grow1")["hvparams"]
    one_node.ok("instance", "remove", "grow1")
    one_node.ok("cluster", "modify", "--default-memory", "512M")


def test_owners_descriptions_tags_filters_and_the_search(one_node):
    one_node.ok("instance", "add", "lab1", "--os", "busybox-guest", "--memory", "64M", "--disk", "64M", "--no-start",
                "--owner", "alice", "--description", "thesis web server", "--tag", "project:thesis", "--tag", "web")
    one_node.ok("instance", "add", "lab2", "--os", "busybox-guest", "--memory", "64M", "--disk", "64M", "--no-start")
    try:
        info = one_node.ok("instance", "info", "lab1")
        assert "owner:        alice" in info and "description:  thesis web server" in info
        assert "tags:         project:thesis, web" in info
        assert one_node.ok("instance", "add-tags", "lab2", "project:thesis", "db").split() == ["project:thesis", "db"]
        assert one_node.ok("instance", "remove-tags", "lab2", "db").split() == ["project:thesis"]
        one_node.ok("node", "add-tags", "n1", "rack:a3")
        one_node.ok("cluster", "add-tags", "lab:cs")
        assert one_node.ok("cluster", "list-tags").split() == ["lab:cs"]

        rows = one_node.json("instance", "list", "--tag", "project:thesis")
        assert sorted(r["name"] for r in rows) == ["lab1", "lab2"]
        assert [r["name"] for r in one_node.json("instance", "list", "--owner", "alice")] == ["lab1"]
        assert [r["name"] for r in one_node.json("instance", "list", "--tag", "web", "--status", "stopped")] == ["lab1"]
        table = one_node.ok("instance", "list", "--tag", "project:thesis", "-o", "name,owner,tags")
        assert table.splitlines()[0].split() == ["NAME", "OWNER", "TAGS"]
        assert "lab1  alice  project:thesis,web" in " ".join(table.split("\n")) or \
            any(line.split() == ["lab1", "alice", "project:thesis,web"] for line in table.splitlines())
        found = one_node.json("search-tags", "^(project|rack|lab):")
        assert {(f["kind"], f["name"], f["tag"]) for f in found} == {
            ("instance", "lab1", "project:thesis"), ("instance", "lab2", "project:thesis"),
            ("node", "n1", "rack:a3"), ("cluster", "", "lab:cs")}
        assert one_node.corral("search-tags", "^nothing-has-this$").returncode == 1

        bad = one_node.corral("instance", "add-tags", "lab1", "no spaces")
        assert bad.returncode == 2 and "'no spaces' is not a tag" in bad.stderr
        bad = one_node.corral("instance", "remove-tags", "lab1", "never-there")
        assert bad.returncode == 2 and "not tagged 'never-there'" in bad.stderr
        bad = one_node.corral("search-tags", "(")
        assert bad.returncode == 2 and "not an RE2 regular expression" in bad.stderr
        assert one_node.json("instance", "info", "lab1")["tags"] == ["project:thesis", "web"]  # nothing changed

        one_node.ok("cluster", "modify", "--require-owner", "yes")
        refused = one_node.corral("instance", "add", "lab3", "--os", "busybox-guest", "--disk", "64M", "--no-start")
        assert refused.returncode == 2 and "requires an owner for every instance" in refused.stderr
        verify = one_node.corral("cluster", "verify")
        assert "instance 'lab2': has no owner, and this cluster asks for one" in verify.stdout
        one_node.ok("instance", "modify", "lab2", "--owner", "bob")
        assert "instance 'lab2': has no owner" not in one_node.corral("cluster", "verify").stdout
    finally:
        one_node.corral("cluster", "modify", "--require-owner", "no")
        for name in ("lab1", "lab2"):
            one_node.corral("instance", "remove", name)


def test_many_instances_at_once_by_tag_with_one_line_each_and_a_failure_counted(one_node):
    for name in ("bat1", "bat2"):
        one_node.ok("instance", "add", name, "--os", "busybox-guest", "--memory", "64M", "--disk", "64M",
                    "--no-start", "--tag", "batch", "--priority", "high" if name == "bat2" else "normal")
    kernels = one_node.root / "kernels"
    kernels.mkdir(exist_ok=True)
    if not (kernels / "bad-initrd").exists():
        (kernels / "bad-initrd").symlink_to("/etc/shadow")
    one_node.ok("instance", "add", "bat3", "--os", "busybox-guest", "--memory", "64M", "--disk", "64M",
                "--no-start", "--tag", "batch", "--hv", f"initrd_path={kernels}/bad-initrd")
    try:
        result = one_node.corral("instance", "start", "--tag", "batch", "--parallel", "2")
        lines = result.stdout.splitlines()
        assert result.returncode == 1, result.stdout + result.stderr
        assert lines[-1] == "start: 2 of 3 instance(s) done; failed: bat3", lines
        assert any(line.startswith("bat2: done (job ") for line in lines) and \
            any(line.startswith("bat3: failed (job ") and "kernel directories" in line for line in lines), lines
        assert {r["name"]: r["status"] for r in one_node.json("instance", "list", "--tag", "batch")} == \
            {"bat1": "running", "bat2": "running", "bat3": "stopped"}
        again = one_node.corral("instance", "start", "--tag", "batch", "--owner", "nobody")
        assert again.returncode == 2 and "no instance matches --tag batch, --owner nobody" in again.stderr
        both = one_node.corral("instance", "start", "bat1", "--all")
        assert both.returncode == 2 and "not both" in both.stderr
        stopped = one_node.corral("instance", "stop", "--tag", "batch", "--force")
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert "stop: 3 of 3 instance(s) done" in stopped.stdout
    finally:
        for name in ("bat1", "bat2", "bat3"):
            one_node.corral("instance", "remove", name)


def test_reinstall_refuses_without_yes_then_starts_from_a_fresh_disk(one_node):
    one_node.ok("instance", "add", "re1", "--os", "busybox-guest", "--memory", "128M", "--disk", "64M")
    try:
        wait_boot_count(one_node, "re1", 1)
        one_node.ok("instance", "reboot", "re1")
        wait_boot_count(one_node, "re1", 2)  # the count is kept on its disk
        jobs = len(one_node.json("job", "list"))
        refused = one_node.corral("instance", "reinstall", "re1")
        assert refused.returncode == 2 and "destroys the content of its disks: confirm with --yes" in refused.stderr
        bad_os = one_node.corral("instance", "reinstall", "re1", "--yes", "--os", "nosuch-os")
        assert bad_os.returncode == 2 and "OS 'nosuch-os' is not available on node 'n1'" in bad_os.stderr
        assert len(one_node.json("job", "list")) == jobs and one_node.instance("re1")["status"] == "running"

        out = one_node.ok("instance", "reinstall", "re1", "--yes")
        assert "the content of its disks is destroyed" in out and "reinstalled with OS 'busybox-guest'" in out
        wait_for(lambda: boots(one_node, "re1")[-1:] == [1], BOOT_TIMEOUT_S,
                 "re1 to boot from its fresh disk, counting from 1 again")
        assert one_node.instance("re1")["status"] == "running"
    finally:
        one_node.corral("instance", "remove", "re1")


def test_rename_keeps_identity_and_disk_updates_references_and_runs_the_os_script(one_node):
    one_node.ok("instance", "add", "old1", "--os", "corral-guest", "--memory", "128M", "--disk", "128M")
    one_node.ok("instance", "add", "dep1", "--os", "busybox-guest", "--memory", "64M", "--disk", "64M",
                "--no-start", "--after", "old1")
    try:
        wait_boot_count(one_node, "old1", 1)
        before = one_node.json("instance", "info", "old1")
        running = one_node.corral("instance", "rename", "old1", "new1")
        assert running.returncode == 2 and "it is renamed only stopped" in running.stderr
        one_node.ok("instance", "stop", "old1")
        taken = one_node.corral("instance", "rename", "old1", "dep1")
        assert taken.returncode == 2 and "an instance named 'dep1' already exists" in taken.stderr
        bad = one_node.corral("instance", "rename", "old1", "Bad_Name")
        assert bad.returncode == 2 and "'Bad_Name' is not valid" in bad.stderr

        out = one_node.ok("instance", "rename", "old1", "new1")
        assert "instance 'dep1' now starts after 'new1'" in out and "is now 'new1'" in out
        after = one_node.json("instance", "info", "new1")
        assert (after["uuid"], [n["mac"] for n in after["nics"]]) == \
            (before["uuid"], [n["mac"] for n in before["nics"]])
        assert one_node.json("instance", "info", "dep1")["after"] == ["new1"]
        assert one_node.corral("instance", "info", "old1").returncode == 2
        assert not (one_node.root / "state" / "file-storage" / "old1").exists()
        script_logs = list((one_node.root / "log" / "os").glob("rename-corral-guest-old1-new1-*.log"))
        assert script_logs and "instance old1 is now new1" in script_logs[0].read_text()

        one_node.ok("instance", "start", "new1")
        wait_boot_count(one_node, "new1", 2)  # its own disk: the boot count goes on
    finally:
        for name in ("dep1", "new1", "old1"):
            one_node.corral("instance", "remove", name)


@pytest.mark.timeout(360)  # its bounded waits add up to 270 s
def test_finished_jobs_move_to_the_archive_and_stay_readable_and_ids_go_on(one_node):
    newest = max(j["id"] for j in one_node.json("job", "list"))  # the cluster has jobs by now
    one_node.ok("cluster", "modify", "--job-archive-after", "1")
    try:
        wait_for(lambda: not [j for j in one_node.json("job", "list") if j["id"] <= newest], 60,
                 "the finished jobs to leave the live list")
        archived = one_node.json("job", "list", "--archived")
        assert newest in {j["id"] for j in archived}
        assert one_node.json("job", "info", str(newest))["id"] == newest  # still readable
        failed = one_node.json("job", "list", "--archived", "--failed")
        assert all(j["status"] == "error" for j in failed)
    finally:
        one_node.ok("cluster", "modify", "--job-archive-after", "21600")
    # A new master counts job ids on from the archive: none is used twice.
    one_node.kill9()
    one_node.start()
    wait_for(lambda: one_node.json("cluster", "info")["master"] == "n1", 60, "n1 to be master again")
    job = wait_for(lambda: (r := one_node.corral("instance", "add", "arch1", "--os", "busybox-guest", "--memory",
                                                 "64M", "--disk", "64M", "--no-start", "--submit")).returncode == 0
                   and int(r.stdout.strip()), 60, "the new master to take a job")
    assert job > max(j["id"] for j in one_node.json("job", "list", "--archived"))
    wait_for(lambda: one_node.json("job", "info", str(job))["status"] == "success", 60, "arch1's add")
    one_node.ok("instance", "remove", "arch1")


def test_cluster_settings_change_after_init_and_the_policy_bounds_instances(one_node):
    before = one_node.json("cluster", "info")
    try:
        one_node.ok("cluster", "modify", "--hv", "shutdown_timeout_s=20", "--sync-rate", "40", "--restart-backoff",
                    "3", "--disk-templates", "file", "--policy", "max_memory=256M", "--policy", "max_vcpus=2",
                    "--policy", "max_disks=1")
        info = one_node.json("cluster", "info")
        assert info["hvparams"]["shutdown_timeout_s"] == "20" and info["hvparams"]["accel"] == "tcg"  # merged
        assert (info["sync_rate_mib_s"], info["restart_backoff_s"], info["enabled_disk_templates"]) == (40, 3, ["file"])
        assert info["policy"] == {"max_memory_mib": 256, "max_vcpus": 2, "max_disks": 1}
        assert "policy:       max_disks=1, max_memory=256M, max_vcpus=2" in one_node.ok("cluster", "info")

        big = one_node.corral("instance", "add", "pol1", "--os", "busybox-guest", "--memory", "512M", "--vcpus", "4",
                              "--disk", "64M", "--disk", "64M", "--no-start")
        assert big.returncode == 2, big.stderr
        for words in ("memory 512M is above the cluster's policy maximum 256M",
                      "4 vCPUs is above the cluster's policy maximum 2", "2 disks is above the cluster's policy maximum 1"):
            assert words in big.stderr, big.stderr
        mirror = one_node.corral("instance", "add", "pol2", "--os", "busybox-guest", "--disk-template", "mirror",
                                 "--disk", "64M", "--no-start")
        assert mirror.returncode == 2 and "disk template 'mirror' is not enabled in this cluster" in mirror.stderr
        one_node.ok("instance", "add", "pol3", "--os", "busybox-guest", "--memory", "128M", "--disk", "64M", "--no-start")
        grow = one_node.corral("instance", "modify", "pol3", "--memory", "1G")
        assert grow.returncode == 2 and "memory 1G is above the cluster's policy maximum 256M" in grow.stderr
        bad = one_node.corral("cluster", "modify", "--policy", "speed=3", "--restart-backoff", "0")
        assert bad.returncode == 2 and "unknown bound 'speed'" in bad.stderr and "restart_backoff_s" in bad.stderr
        one_node.ok("cluster", "modify", "--policy", "max_memory=", "--hv", "shutdown_timeout_s=")
        info = one_node.json("cluster", "info")
        assert info["policy"] == {"max_vcpus": 2, "max_disks": 1} and "shutdown_timeout_s" not in info["hvparams"]
    finally:
        one_node.corral("instance", "remove", "pol3")
        one_node.ok("cluster", "modify", "--disk-templates", "file,mirror", "--policy", "max_vcpus=",
                    "--policy", "max_disks=", "--sync-rate", str(before.get("sync_rate_mib_s") or 0),
                    "--restart-backoff", str(before.get("restart_backoff_s") or 2))


def test_disks_are_added_and_the_last_one_removed_while_stopped(one_node):
    one_node.ok("instance", "add", "dsk1", "--os", "busybox-guest", "--memory", "128M", "--disk", "64M", "--no-start")
    files = one_node.root / "state" / "file-storage" / "dsk1"
    try:
        out = one_node.ok("instance", "add-disk", "dsk1", "32M,format=qcow2")
        assert "has a new disk 1 of 32M (qcow2)" in out
        assert [(d["index"], d["size_mib"], d["format"]) for d in one_node.json("instance", "info", "dsk1")["disks"]] \
            == [(0, 64, "raw"), (1, 32, "qcow2")]
        assert (files / "disk1.qcow2").exists()
        too_big = one_node.corral("instance", "add-disk", "dsk1", "64T")
        assert too_big.returncode == 2 and "does not fit" in too_big.stderr

        one_node.ok("instance", "start", "dsk1")
        pid = wait_for(lambda: one_node.instance("dsk1")["pid"], 60, "dsk1 running")
        assert "disk1.qcow2" in qemu_args(pid)  # a running instance's disks come and go: test_hotplug.py
        one_node.ok("instance", "stop", "dsk1")
        unsure = one_node.corral("instance", "remove-disk", "dsk1", "1")
        assert unsure.returncode == 2 and "confirm with --destroy-data" in unsure.stderr
        first = one_node.corral("instance", "remove-disk", "dsk1", "0", "--destroy-data")
        assert first.returncode == 2 and "only the last disk" in first.stderr
        one_node.ok("instance", "remove-disk", "dsk1", "1", "--destroy-data")
        assert [d["index"] for d in one_node.json("instance", "info", "dsk1")["disks"]] == [0]
        assert not (files / "disk1.qcow2").exists() and (files / "disk0.raw").exists()
    finally:
        one_node.corral("instance", "remove", "dsk1")


def test_a_snapshot_of_a_running_guest_brings_its_disk_back_to_that_instant(one_node):
    """The boot counter the test guest keeps on its disk: a snapshot after boot 1, reverted after boot 2, makes
    the next boot count 2 again. The copy is taken while the guest runs (QEMU's backup job)."""
    one_node.ok("instance", "add", "sn1", "--os", "busybox-guest", "--memory", "128M", "--disk", "64M")
    snapdir = one_node.root / "state" / "file-storage" / "sn1" / "snapshots"
    try:
        wait_boot_count(one_node, "sn1", 1)
        made = one_node.ok("instance", "snapshot", "sn1", "create", "first")
        assert "copied while the guest ran, as of one instant (crash-consistent" in made, made
        assert (snapdir / "first" / "disk0.qcow2").is_file()
        info = wait_for(lambda: (i := one_node.json("instance", "info", "sn1"))["snapshots"] and i, 30,
                        "the snapshot in `instance info`")
        assert [s["name"] for s in info["snapshots"]] == ["first"] and info["snapshot_bytes"] > 0
        assert one_node.json("node", "info", "n1")["snapshot_bytes"] >= info["snapshot_bytes"]
        assert [s["name"] for s in one_node.json("instance", "snapshot", "sn1", "list")] == ["first"]
        jobs = len(one_node.json("job", "list"))
        again = one_node.corral("instance", "snapshot", "sn1", "create", "first")
        assert again.returncode != 0 and "already has a snapshot named 'first'" in again.stderr, again
        bad = one_node.corral("instance", "snapshot", "sn1", "create", "../x")
        assert bad.returncode != 0 and "is not valid" in bad.stderr, bad
        unknown = one_node.corral("instance", "snapshot", "sn1", "revert", "nope", "--yes")
        assert unknown.returncode != 0 and "no snapshot named 'nope'" in unknown.stderr, unknown
        running = one_node.corral("instance", "snapshot", "sn1", "revert", "first", "--yes")
        assert running.returncode != 0 and "is reverted only while it is stopped" in running.stderr, running
        assert len(one_node.json("job", "list")) == jobs, "refused at submit: no job"

        one_node.ok("instance", "reboot", "sn1")
        wait_boot_count(one_node, "sn1", 2)
        one_node.ok("instance", "stop", "sn1")
        unsure = one_node.corral("instance", "snapshot", "sn1", "revert", "first")
        assert unsure.returncode != 0 and "confirm with --yes" in unsure.stderr, unsure
        one_node.ok("instance", "snapshot", "sn1", "revert", "first", "--yes")
        one_node.ok("instance", "start", "sn1")
        wait_for(lambda: len(boots(one_node, "sn1")) >= 3, BOOT_TIMEOUT_S, "sn1's third boot")
        assert boots(one_node, "sn1") == [1, 2, 2]

        one_node.ok("instance", "snapshot", "sn1", "remove", "first")
        assert not (snapdir / "first").exists()
        one_node.ok("instance", "snapshot", "sn1", "create", "second")  # kept until the instance goes
    finally:
        one_node.corral("instance", "remove", "sn1")
    assert not snapdir.exists(), "an instance's snapshots go with it"
