"""Live migration between two real QEMUs (TCG) on 127.0.0.1.

Both run the firmware only. To give the migration real work, the source's
RAM is a private mapping of a file of random bytes (a zeroed guest RAM
migrates in a few milliseconds); the destination has plain RAM of the same
size and id. Both command lines come from ``kvm.cmdline.build_argv`` plus
those extras; the destination's spec sets ``incoming``, as the agent does.
"""

import asyncio
import dataclasses
import os
import socket
import subprocess
import time
import uuid

import pytest

from conftest import free_port, is_gone, wait_until
from test_kvm_nbdexport import make_pki

from kvm.cmdline import InstanceSpec, build_argv, run_paths
from kvm.hvparams import HvParams
from kvm.migration import (
    MigrationFailed,
    MigrationProgress,
    cancel_migration,
    complete_switchover,
    migrate_to_switchover,
    use_tls,
    migration_uri,
)
from kvm.qmp import Qmp, QmpError

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

MIB = 1024 * 1024
INSTANCE_UUID = str(uuid.uuid4())  # the same instance on both nodes


def random_ram(root: str, mib: int) -> str:
    path = f"{root}/ram.bin"
    with open(path, "wb") as f:
        for _ in range(mib // 16):
            f.write(os.urandom(16 * MIB))
    return path


def instance_spec(memory_mib: int, incoming: str = "") -> InstanceSpec:
    return InstanceSpec(name="vm1", uuid=INSTANCE_UUID, memory_mib=memory_mib, vcpus=1,
                        hv=HvParams(accel="tcg"), disks=(), nics=(), incoming=incoming)


async def launch(root: str, node: str, spec: InstanceSpec, extra: list[str],
                 started: list[int]) -> str:
    """Start the instance 'vm1' on ``node``; return its QMP socket once QMP answers."""
    paths = run_paths(f"{root}/{node}", "vm1")
    os.makedirs(paths.instance_dir, exist_ok=True)
    done = subprocess.run(build_argv(spec, paths) + extra, capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stderr
    with open(paths.pidfile) as f:
        started.append(int(f.read()))
    for _ in range(100):
        try:
            async with await Qmp.connect(paths.qmp_socket, 2.0) as qmp:
                await qmp.status()
            return paths.qmp_socket
        except QmpError:
            await asyncio.sleep(0.05)
    raise AssertionError(f"QMP of {node} never answered")


async def source_and_destination(root: str, started: list[int], memory_mib: int,
                                 port: int) -> tuple[str, str]:
    ram = random_ram(root, memory_mib)
    source = await launch(root, "src", instance_spec(memory_mib), [
        "-object", f"memory-backend-file,id=ram0,size={memory_mib}M,mem-path={ram},share=off",
        "-machine", "memory-backend=ram0"], started)
    destination = await launch(
        root, "dst", instance_spec(memory_mib, incoming=migration_uri("127.0.0.1", port)), [
            "-object", f"memory-backend-ram,id=ram0,size={memory_mib}M",
            "-machine", "memory-backend=ram0"], started)
    return source, destination


async def status_of(socket_path: str) -> str:
    async with await Qmp.connect(socket_path, 5.0) as qmp:
        return await qmp.status()


async def test_running_instance_moves_with_progress_and_reported_downtime(root, started):
    port = free_port()
    source, destination = await source_and_destination(root, started, 32, port)
    assert await status_of(destination) == "inmigrate"
    samples: list[MigrationProgress] = []
    async with await Qmp.connect(source, 5.0) as qmp:
        paused = await migrate_to_switchover(qmp, migration_uri("127.0.0.1", port), 16,
                                             samples.append, 30)
        assert paused.status == "pre-switchover"
        assert await qmp.status() != "running", "the guest waits while the caller hands over"
        result = await complete_switchover(qmp)
        params = await qmp.execute("query-migrate-parameters")
        assert await qmp.status() in ("finish-migrate", "postmigrate"), "paused, the guest runs there"
        await qmp.quit()
    assert wait_until(lambda: is_gone(started[0]), timeout_s=10), "the source should end"
    assert await status_of(destination) == "running"

    assert params["max-bandwidth"] == 16 * MIB, "QEMU's default cap is 128 MiB/s"
    assert result.total_s >= 1.5, "32 MiB at 16 MiB/s cannot take less"
    assert result.throughput_mib_s <= 20  # QEMU's limiter allows a burst in its first slice
    assert 28 <= result.transferred_mib < 40
    assert 0 <= result.downtime_ms < 1000
    active = [s for s in samples if s.status == "active"]
    assert len(active) >= 3
    assert all(a.transferred_mib <= b.transferred_mib for a, b in zip(active, active[1:]))
    assert active[-1].remaining_mib < active[0].remaining_mib
    assert any(s.eta_s is not None and 0 < s.eta_s < 5 for s in active)
    assert all(s.throughput_mib_s <= 20 for s in active)


async def test_migration_to_a_closed_port_fails_and_the_source_keeps_running(root, started):
    source = await launch(root, "src", instance_spec(64), [], started)
    with pytest.raises(MigrationFailed) as failure:
        async with await Qmp.connect(source, 5.0) as qmp:
            await migrate_to_switchover(qmp, migration_uri("127.0.0.1", free_port()), 100,
                                        None, 20)
    assert "Connection refused" in failure.value.reason
    assert failure.value.status == "failed"
    assert await status_of(source) == "running"


async def test_migration_past_its_timeout_is_cancelled_and_the_source_keeps_running(root,
                                                                                     started):
    port = free_port()
    source, destination = await source_and_destination(root, started, 32, port)
    began = time.monotonic()
    with pytest.raises(MigrationFailed) as failure:
        async with await Qmp.connect(source, 5.0) as qmp:
            await migrate_to_switchover(qmp, migration_uri("127.0.0.1", port), 4, None, 1.0)
    assert time.monotonic() - began < 5
    assert failure.value.status == "cancelled"
    assert "not finished within 1 s" in failure.value.reason
    assert await status_of(source) == "running"
    # The destination gives up on the broken stream by itself.
    assert wait_until(lambda: is_gone(started[1]), timeout_s=10)


def test_destination_on_a_taken_port_fails_to_start_rather_than_to_migrate(root):
    paths = run_paths(f"{root}/dst", "vm1")
    os.makedirs(paths.instance_dir)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        spec = instance_spec(64, incoming=migration_uri("127.0.0.1", port))
        done = subprocess.run(build_argv(spec, paths), capture_output=True, text=True,
                              timeout=30)
    assert done.returncode != 0
    assert "Address already in use" in done.stderr


async def test_a_migration_paused_before_switchover_resumes_on_the_source_when_cancelled(
        root, started):
    port = free_port()
    source, destination = await source_and_destination(root, started, 16, port)
    async with await Qmp.connect(source, 5.0) as qmp:
        progress = await migrate_to_switchover(qmp, migration_uri("127.0.0.1", port), 64,
                                               None, 30)
        assert progress.status == "pre-switchover"
        assert await qmp.status() != "running", "the guest waits while the caller hands over"
        assert await cancel_migration(qmp) == "cancelled"
        assert await qmp.status() == "running"


@pytest.mark.parametrize("client", ["n1", "n3", None], ids=["source-certificate", "other-node", "no-tls"])
async def test_a_tls_destination_takes_the_stream_only_from_its_source_node(root, started, tmp_path, client):
    pki = make_pki(tmp_path / "pki", server_node="n2", clients=("n1", "n3"))
    port = free_port()
    source = await launch(root, "src", instance_spec(16), [], started)
    spec = dataclasses.replace(instance_spec(16, incoming=migration_uri("127.0.0.1", port)),
                               incoming_tls_dir=pki.server_dir, incoming_client=pki.identity("n1"))
    destination = await launch(root, "dst", spec, [], started)
    async with await Qmp.connect(source, 5.0) as qmp:
        if client is not None:
            await use_tls(qmp, "migration-tls", pki.client_dirs[client])
        if client == "n1":
            await migrate_to_switchover(qmp, migration_uri("127.0.0.1", port), 64, None, 30)
            await complete_switchover(qmp)
            assert await status_of(destination) == "running"
            return
        with pytest.raises(MigrationFailed):
            await migrate_to_switchover(qmp, migration_uri("127.0.0.1", port), 64, None, 10)
            # A small guest's RAM can fit in the socket buffers before the destination hangs up:
            # then the refusal shows at the switchover, and the destination never runs.
            await complete_switchover(qmp)
        await cancel_migration(qmp)
        assert await qmp.status() == "running", "a refused migration leaves the guest where it was"
