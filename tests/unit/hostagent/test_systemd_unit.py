import os
import socket
import subprocess
import sys

from hostagent.node.notify import Notifier

UNIT = os.path.join(os.path.dirname(__file__), "..", "..", "..", "packaging", "systemd", "corral-agent.service")


def test_unit_passes_systemd_analyze_verify(tmp_path):
    """The shipped unit, with ExecStart pointed at this venv's agent, has no warnings."""
    text = open(UNIT).read()
    agent = os.path.join(os.path.dirname(sys.executable), "corral-agent")
    unit = tmp_path / "corral-agent.service"
    unit.write_text(text.replace("/usr/local/bin/corral-agent", agent))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    complaints = [l for l in (result.stdout + result.stderr).splitlines() if "corral-agent.service" in l]
    assert result.returncode == 0 and complaints == [], result.stdout + result.stderr


def test_unit_keeps_qemu_alive_on_restart_and_uses_notify_with_watchdog():
    directives = dict(line.split("=", 1) for line in open(UNIT).read().splitlines()
                      if "=" in line and not line.startswith("#"))
    assert directives["Type"] == "notify"
    assert directives["KillMode"] == "process"
    assert directives["Restart"] == "on-failure"
    assert directives["WatchdogSec"]
    assert directives["RuntimeDirectoryPreserve"] == "yes"


def test_notifications_arrive_on_a_real_datagram_socket(tmp_path, monkeypatch):
    path = str(tmp_path / "notify.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    server.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    notifier = Notifier()
    try:
        assert notifier.watchdog_interval_s() == 15.0
        notifier.ready("member of cluster 'c1'")
        notifier.watchdog()
        notifier.status("node 'n1' is master")
        got = [server.recv(4096).decode() for _ in range(3)]
    finally:
        notifier.close()
        server.close()
    assert got == ["READY=1\nSTATUS=member of cluster 'c1'", "WATCHDOG=1", "STATUS=node 'n1' is master"]


def test_without_notify_socket_notifications_are_silent(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = Notifier()
    assert not notifier.enabled
    notifier.ready("x")  # must not raise


def test_a_broken_unit_is_caught_by_verify(tmp_path):
    unit = tmp_path / "broken.service"
    unit.write_text("[Service]\nType=notify\nExecStart=/bin/true\nKilMode=process\n")
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert "Unknown key" in result.stdout + result.stderr
