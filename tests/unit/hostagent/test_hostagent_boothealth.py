"""The console watch of hostagent.node.boothealth on real files, and how its verdicts are shown."""

from __future__ import annotations

from pathlib import Path

from hostagent.node.boothealth import BootWatcher, QemuStart
from hostagent.views import instance_row, verify

T0 = 1_000_000.0
RECORDS = {"web1": {"name": "web1", "boot_pattern": r"login:", "boot_timeout_s": 30.0},
           "db1": {"name": "db1", "boot_pattern": "", "boot_timeout_s": 0.0}}


def watcher(tmp_path: Path, born_at: float = T0, records: dict | None = None) -> BootWatcher:
    (tmp_path / "console").mkdir(exist_ok=True)
    return BootWatcher(str(tmp_path / "console"), str(tmp_path / "boot-watch.json"),
                       (RECORDS if records is None else records).get, born_at)


def write(tmp_path: Path, name: str, text: str) -> None:
    with open(tmp_path / "console" / f"{name}.console.log", "a") as fh:
        fh.write(text)


def test_a_boot_is_waiting_until_a_console_line_matches_then_up(tmp_path):
    w = watcher(tmp_path)
    qemu = {"web1": QemuStart(100, T0 + 1)}
    write(tmp_path, "web1", "[    0.000000] Linux version 6.1\r\n[    1.2] Run /init\n")
    assert w.look(qemu, T0 + 3)["web1"]["boot"] == "waiting"
    write(tmp_path, "web1", "\x1b[0mDebian GNU/Linux 12 web1 ttyS0\n\nweb1 login: ")  # a prompt ends no line
    seen = w.look(qemu, T0 + 5)["web1"]
    assert (seen["boot"], seen["boot_started_at"], seen["boot_up_at"]) == ("up", T0 + 1, T0 + 5)


def test_between_reports_a_poll_sees_the_boot_end_and_the_next_report_shows_it_up(tmp_path):
    """The agent polls twice a second and reports at once on True: the start slot frees in under a second."""
    w = watcher(tmp_path)
    qemu = {"web1": QemuStart(100, T0 + 1)}
    write(tmp_path, "web1", "[    1.2] Run /init\n")
    assert w.look(qemu, T0 + 2)["web1"]["boot"] == "waiting"
    assert w.poll(T0 + 2.5) is False
    write(tmp_path, "web1", "web1 login: ")
    assert w.poll(T0 + 3) is True
    assert w.poll(T0 + 3.5) is False, "said once"
    seen = w.look(qemu, T0 + 5)["web1"]
    assert (seen["boot"], seen["boot_up_at"]) == ("up", T0 + 3)


def test_a_poll_sees_a_boot_time_out_too(tmp_path):
    w = watcher(tmp_path)
    qemu = {"web1": QemuStart(100, T0 + 1)}
    w.look(qemu, T0 + 2)
    assert w.poll(T0 + 20) is False
    assert w.poll(T0 + 31) is True
    assert w.look(qemu, T0 + 32)["web1"]["boot"] == "timeout"


def test_output_of_an_earlier_boot_does_not_count(tmp_path):
    (tmp_path / "console").mkdir()
    write(tmp_path, "web1", "web1 login: \nreboot: Power down\n")  # the previous QEMU's life
    w = watcher(tmp_path)
    w.look({}, T0 + 1)
    qemu = {"web1": QemuStart(200, T0 + 2)}
    write(tmp_path, "web1", "Kernel panic - not syncing: VFS: Unable to mount root fs\n")
    assert w.look(qemu, T0 + 3)["web1"]["boot"] == "waiting"


def test_a_boot_that_never_prints_the_pattern_times_out_with_its_last_console_lines(tmp_path):
    w = watcher(tmp_path)
    qemu = {"web1": QemuStart(100, T0 + 1)}
    write(tmp_path, "web1", "".join(f"line {i}\n" for i in range(30)) + "waiting for root device")
    assert w.look(qemu, T0 + 30)["web1"]["boot"] == "waiting"  # 29 s after the start: not yet
    seen = w.look(qemu, T0 + 31.5)["web1"]
    assert (seen["boot"], seen["boot_pattern"], seen["boot_timeout_s"]) == ("timeout", "login:", 30.0)
    assert seen["boot_console"] == [f"line {i}" for i in range(11, 30)] + ["waiting for root device"]


def test_a_line_written_in_two_pieces_still_matches(tmp_path):
    w = watcher(tmp_path, records={"web1": {"boot_pattern": "CORRAL-GUEST-BOOTED count=[0-9]+"}})
    qemu = {"web1": QemuStart(100, T0 + 1)}
    write(tmp_path, "web1", "CORRAL-GUEST-BOO")
    assert w.look(qemu, T0 + 2)["web1"]["boot"] == "waiting"
    write(tmp_path, "web1", "TED count=3\n")
    assert w.look(qemu, T0 + 3)["web1"]["boot"] == "up"


def test_each_new_qemu_is_judged_from_its_own_start(tmp_path):
    w = watcher(tmp_path)
    write(tmp_path, "web1", "web1 login: \n")
    assert w.look({"web1": QemuStart(100, T0 + 1)}, T0 + 2)["web1"]["boot"] == "up"
    assert w.look({}, T0 + 3) == {}  # stopped
    write(tmp_path, "web1", "reboot: Power down\n")
    second = {"web1": QemuStart(101, T0 + 4)}
    assert w.look(second, T0 + 5)["web1"]["boot"] == "waiting"
    assert w.look(second, T0 + 40)["web1"]["boot"] == "timeout"


def test_instances_without_a_pattern_and_incoming_migrations_are_not_judged(tmp_path):
    w = watcher(tmp_path)
    seen = w.look({"db1": QemuStart(100, T0 + 1), "web1": QemuStart(101, T0 + 1, incoming=True)}, T0 + 500)
    assert seen == {"db1": {}, "web1": {}}


def test_a_qemu_running_before_the_watch_began_is_not_judged(tmp_path):
    w = watcher(tmp_path, born_at=T0 + 10)
    assert w.look({"web1": QemuStart(100, T0 + 1)}, T0 + 500) == {"web1": {}}


def test_a_restarted_agent_carries_on_judging_the_boot_under_way(tmp_path):
    qemu = {"web1": QemuStart(100, T0 + 1)}
    first = watcher(tmp_path)
    write(tmp_path, "web1", "Booting...\n")
    assert first.look(qemu, T0 + 2)["web1"]["boot"] == "waiting"
    second = watcher(tmp_path, born_at=T0 + 5)  # the agent restarted; QEMU went on
    write(tmp_path, "web1", "web1 login: ")
    assert second.look(qemu, T0 + 6)["web1"]["boot"] == "up"


def test_a_pattern_the_replica_learns_just_after_the_start_applies_to_that_boot_a_later_one_to_the_next(tmp_path):
    records: dict = {}
    w = watcher(tmp_path, records=records)
    qemu = {"web1": QemuStart(100, T0 + 1)}
    write(tmp_path, "web1", "web1 login: \n")
    assert w.look(qemu, T0 + 2) == {"web1": {}}  # the replica has not got the new instance yet
    records["web1"] = {"boot_pattern": "login:", "boot_timeout_s": 30.0}
    assert w.look(qemu, T0 + 3)["web1"]["boot"] == "up"
    records["web1"] = {"boot_pattern": "NEVER"}
    assert w.look(qemu, T0 + 20)["web1"]["boot"] == "up"  # an `instance modify` now: from the next start on
    assert w.look({"web1": QemuStart(101, T0 + 21)}, T0 + 22)["web1"]["boot_pattern"] == "NEVER"


def test_a_removed_and_re_added_instance_is_read_from_its_new_log(tmp_path):
    w = watcher(tmp_path)
    write(tmp_path, "web1", "x" * 5000 + "\n")
    w.look({}, T0 + 1)
    (tmp_path / "console" / "web1.console.log").unlink()
    write(tmp_path, "web1", "web1 login: ")
    assert w.look({"web1": QemuStart(300, T0 + 2)}, T0 + 3)["web1"]["boot"] == "up"


# ---- what list, info and verify show ---------------------------------------------------------------

def inst(**extra):
    return {"name": "web1", "uuid": "u", "os": "img", "disk_template": "file", "memory_mib": 256, "vcpus": 1,
            "primary_node": "n1", "secondary_node": None, "admin_state": "up", "disks": [], "nics": [],
            "hvparams": {}, "ctime": 0, "mtime": 0, "boot_pattern": "login:", **extra}


def report(boot: dict) -> dict:
    return {"node": "n1", "time": T0, "instances": {"web1": {"pid": 7, "status": "running", **boot}},
            "volumes": [], "os_problems": []}


def test_a_boot_under_way_shows_as_running_with_how_long_it_has_waited():
    boot = {"boot": "waiting", "boot_started_at": T0 - 12, "boot_pattern": "login:", "boot_timeout_s": 120.0}
    row = instance_row(inst(), {"n1": report(boot)}, T0)
    assert (row["status"], row["reason"], row["boot"]) == \
        ("running", "booting: waiting for console line matching 'login:' (12 s of 120 s)", "waiting")
    assert (row["boot_pattern"], row["boot_timeout_s"], row["auto_failover"]) == ("login:", 120.0, None)


def test_a_boot_that_timed_out_is_an_error_with_its_console_in_info_and_verify():
    boot = {"boot": "timeout", "boot_started_at": T0 - 40, "boot_pattern": "login:", "boot_timeout_s": 30.0,
            "boot_console": ["Kernel panic - not syncing"]}
    row = instance_row(inst(boot_timeout_s=30.0), {"n1": report(boot)}, T0)
    assert (row["status"], row["reason"]) == ("error", "did not boot: no console line matching 'login:' within 30 s")
    assert row["console_tail"] == ["Kernel panic - not syncing"]
    findings = verify([{"name": "n1", "address": "127.0.0.1"}], [inst()], {"n1": report(boot)}, [], "n1", T0)
    assert any(f.severity == "error" and "did not boot: no console line matching 'login:' within 30 s" in f.message
               for f in findings), findings
