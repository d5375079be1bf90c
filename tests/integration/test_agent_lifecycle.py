"""The agent process itself: systemd notifications, init that fails cleanly, one agent per node."""

from __future__ import annotations

import os
import socket
import subprocess
import time

import pytest

from conftest import BIN, AgentNode

pytestmark = pytest.mark.integration


def receive_until(sock: socket.socket, wanted: str, timeout_s: float) -> list[str]:
    """Datagrams received until one contains `wanted` (bounded)."""
    got: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            got.append(sock.recv(4096).decode())
        except TimeoutError:
            break
        if wanted in got[-1]:
            return got
    raise AssertionError(f"no notification with {wanted!r} within {timeout_s} s; got {got}")


@pytest.fixture
def fresh(tmp_path_factory):
    node = AgentNode(tmp_path_factory.mktemp("fresh"))
    yield node
    node.stop()
    node.kill_qemus()  # and the fence keeper, which outlives the agent by design


def test_agent_notifies_systemd_ready_status_and_watchdog(fresh, guest_dir):
    path = str(fresh.root / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    os.environ["NOTIFY_SOCKET"], os.environ["WATCHDOG_USEC"] = path, "1000000"
    try:
        fresh.start()
    finally:
        del os.environ["NOTIFY_SOCKET"], os.environ["WATCHDOG_USEC"]
    try:
        first = receive_until(sock, "READY=1", 20)
        assert "STATUS=waiting for `corral cluster init`" in first[-1]
        receive_until(sock, "WATCHDOG=1", 5)  # every WatchdogSec/2 = 0.5 s
        fresh.ok("cluster", "init", "--name", "c1", "--hv", "accel=tcg")
        receive_until(sock, "STATUS=acquired the master lease; node 'n1' is master", 20)
        fresh.stop()
        receive_until(sock, "STOPPING=1", 20)
    finally:
        sock.close()


def test_a_node_outside_a_cluster_says_so(fresh):
    fresh.start()
    result = fresh.corral("instance", "list")
    assert result.returncode != 0
    assert "node 'n1' is not part of a cluster yet; run `corral cluster init --name NAME` first" in result.stderr
    assert fresh.json("cluster", "info")["initialized"] is False


def test_a_failed_cluster_init_leaves_nothing_and_can_be_retried(fresh):
    fresh.start()
    bad = fresh.corral("cluster", "init", "--name", "c1", "--hv", "accel=xen")
    assert bad.returncode == 2 and "'xen'" in bad.stderr
    assert not (fresh.root / "state" / "cluster.json").exists()
    assert not (fresh.root / "state" / "pki").exists()
    fresh.ok("cluster", "init", "--name", "c1", "--hv", "accel=tcg")
    info = fresh.json("cluster", "info")
    assert (info["name"], info["master"], info["initialized"]) == ("c1", "n1", True)
    again = fresh.corral("cluster", "init", "--name", "c2")
    assert again.returncode == 2 and "node 'n1' already belongs to cluster 'c1'" in again.stderr


def test_a_second_agent_for_the_same_node_is_refused(fresh):
    fresh.start()
    second = subprocess.run([str(BIN / "corral-agent"), "--config", str(fresh.config)],
                            capture_output=True, text=True, timeout=30)
    assert second.returncode == 1
    assert f"another corral-agent (pid {fresh.proc.pid}) is running" in second.stderr
    assert fresh.json("cluster", "info")["this_node"] == "n1"  # the first one is undisturbed
