"""`cluster verify` and `--repair` against real QEMU and qemu-storage-daemon processes.

The strays are started the way the agent starts its own (kvm.process,
kvm.nbdexport, in the agent's run directory), so the node reports them
exactly as it would report leftovers of its own.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

import psutil
import pytest

from conftest import free_port, is_gone, wait_for, wait_until

from kvm.cmdline import InstanceSpec
from kvm.hvparams import HvParams
from kvm.nbdexport import NbdExportSpec, link_tls_dir, start_export
from kvm.process import QemuManager

from hostagent.node import clocks, reporter
from hostagent.node.executor import client_identity
from hostagent.orders import NodeClient
from hostagent.pki import PkiPaths, client_context

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def bare(name: str) -> InstanceSpec:
    return InstanceSpec(name=name, uuid=str(uuid.uuid4()), memory_mib=64, vcpus=1, hv=HvParams(accel="tcg"),
                        disks=(), nics=())


def kill_if_ours(pids: list[int], root: Path) -> None:
    """Teardown: SIGKILL what the test started and is still alive, checked by command line."""
    for pid in pids:
        try:
            if str(root) in " ".join(psutil.Process(pid).cmdline()):
                os.kill(pid, signal.SIGKILL)
        except (psutil.Error, ProcessLookupError):
            continue
        wait_until(lambda: is_gone(pid), timeout_s=5)


async def test_verify_reports_a_stray_qemu_and_nbd_export_and_repair_stops_both(one_node, tmp_path):
    run_dir = one_node.root / "run"
    pids: list[int] = []
    try:
        qemu = QemuManager(str(run_dir), log_dir=str(one_node.root / "log" / "console"))
        qemu_pid = await qemu.start(bare("ghost"))
        pids.append(qemu_pid)
        pki = PkiPaths(str(one_node.root / "state" / "pki"))
        link_tls_dir(str(tmp_path / "tls"), pki.ca_cert, pki.node_cert, pki.node_key)
        image = tmp_path / "ghost-disk0.raw"
        image.write_bytes(b"\0" * 2**20)
        export_pid = await start_export(NbdExportSpec(
            image_path=str(image), fmt="raw", host="127.0.0.1", port=free_port(), export_name="ghost-disk0",
            pidfile=str(run_dir / "replication" / "ghost-disk0.pid"), tls_dir=str(tmp_path / "tls"),
            client_identity=client_identity("n2")))
        pids.append(export_pid)

        stray_qemu = f"ERROR: node 'n1': QEMU for unknown instance 'ghost' is running (pid {qemu_pid})"
        stray_export = (f"WARNING: node 'n1': orphan NBD export of disk 0 of 'ghost' (pid {export_pid}): "
                        "no such instance")

        def both_reported() -> str | None:
            result = one_node.corral("cluster", "verify")
            return result.stdout if stray_qemu in result.stdout and stray_export in result.stdout else None
        wait_for(both_reported, 20, "verify to report the stray QEMU and NBD export")
        assert one_node.corral("cluster", "verify").returncode == 1

        repaired = one_node.corral("cluster", "verify", "--repair")
        out = repaired.stdout
        assert repaired.returncode == 0, out + repaired.stderr
        assert f"REPAIRED: {stray_qemu.removeprefix('ERROR: ')}\n    stop the QEMU of unknown instance 'ghost' " \
               f"on node 'n1' (pid {qemu_pid}): stopped" in out
        assert f"REPAIRED: {stray_export.removeprefix('WARNING: ')}\n    stop the NBD export of disk 0 of 'ghost' " \
               f"on node 'n1' (pid {export_pid}): stopped" in out
        assert out.endswith("verifying again:\ncluster verify: no problems found\n"), out
        assert is_gone(qemu_pid) and is_gone(export_pid)
        events = one_node.json("events", "--instance", "ghost")
        assert [e["kind"] for e in events] == ["repair", "repair"]
    finally:
        kill_if_ours(pids, one_node.root)


async def test_a_second_qemu_for_one_instance_on_a_node_is_reported_as_a_stray(root, started):
    qemu = QemuManager(root)
    first = await qemu.start(bare("dup"))
    started.append(first)
    pidfile = qemu.paths("dup").pidfile
    os.rename(pidfile, pidfile + ".lost")  # the agent loses track of the first QEMU ...
    second = await qemu.start(bare("dup"))  # ... and starts another for the same instance
    started.append(second)

    tracked = qemu.discover()
    assert tracked == {"dup": second}
    strays = reporter.stray_qemus(root, tracked, time.time(), min_age_s=0)
    assert [(s["instance"], s["pid"]) for s in strays] == [("dup", first)]
    assert reporter.stray_qemus(root, tracked, time.time()) == []  # too young: it may still be daemonizing


async def test_a_nodes_clock_is_read_over_the_node_api_and_an_unreachable_node_is_a_reading_not_a_crash(one_node):
    client = NodeClient(client_context(PkiPaths(str(one_node.root / "state" / "pki"))))
    nodes = [{"name": "n1", "address": "127.0.0.1", "api_port": one_node.ports["api"]},
             {"name": "gone", "address": "127.0.0.1", "api_port": free_port()}]
    try:
        got = await clocks.measure(client, "test", nodes)
    finally:
        await client.close()
    assert got["n1"].error == "" and got["n1"].offset_s is not None
    assert abs(got["n1"].offset_s) <= got["n1"].uncertainty_s + 0.05  # the same machine, the same clock
    assert got["gone"].offset_s is None and got["gone"].error.startswith("its agent at 127.0.0.1:")
