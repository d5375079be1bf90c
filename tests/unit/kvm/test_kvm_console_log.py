import os

from kvm.process import QemuManager


def test_console_log_tail_strips_terminal_escapes(tmp_path):
    manager = QemuManager(str(tmp_path / "run"))
    log = manager.paths("web1").console_log
    os.makedirs(os.path.dirname(log))
    with open(log, "wb") as f:
        f.write(b"\x1bc\x1b[?7l\x1b[2J\x1b[0mSeaBIOS (version 1.16)\r\n"
                b"Booting from Hard Disk...\r\nNo bootable device.\r\n")
    assert manager.console_log_tail("web1", lines=2) == [
        "Booting from Hard Disk...", "No bootable device."
    ]
    assert manager.console_log_tail("web1")[0] == "SeaBIOS (version 1.16)"


def test_console_log_tail_of_unknown_instance_is_empty(tmp_path):
    assert QemuManager(str(tmp_path)).console_log_tail("never") == []


def test_console_log_tail_reads_only_the_end_of_a_large_log(tmp_path):
    manager = QemuManager(str(tmp_path / "run"), log_dir=str(tmp_path / "log"))
    log = manager.paths("web1").console_log
    os.makedirs(os.path.dirname(log))
    with open(log, "w") as f:
        for i in range(100_000):
            f.write(f"line {i}\n")
    assert manager.console_log_tail("web1", lines=3) == ["line 99997", "line 99998", "line 99999"]


def test_cleanup_without_runtime_files_is_a_no_op(tmp_path):
    manager = QemuManager(str(tmp_path))
    manager.cleanup("web1")
    manager.cleanup("web1")
    assert manager.find("web1") is None
    assert manager.discover() == {}
