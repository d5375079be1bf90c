"""A QEMU's death seen at once (hostagent.node.qemuwatch, with a real process and its pidfd), and the master
woken by a report that no longer lists an instance or whose guest booted
(hostagent.master.candidacy.slot_or_instance_freed)."""

from __future__ import annotations

import asyncio
import json
import subprocess

from election.etcd import KV, WatchEvent

from hostagent import model
from hostagent.master.candidacy import slot_or_instance_freed
from hostagent.node.qemuwatch import QemuWatch


def test_a_watched_process_that_dies_is_said_at_once_and_once() -> None:
    async def scenario() -> tuple[list[tuple[str, int]], int, int]:
        exits: list[tuple[str, int]] = []
        done = asyncio.Event()
        watch = QemuWatch(lambda name, pid: (exits.append((name, pid)), done.set()))
        proc = subprocess.Popen(["sleep", "30"])
        other = subprocess.Popen(["sleep", "30"])
        reaped = subprocess.Popen(["true"])
        reaped.wait()
        try:
            watch.follow({"web1": proc.pid, "web2": other.pid})
            watch.follow({"web1": proc.pid, "web2": other.pid})  # followed again: still one watch each
            proc.kill()
            proc.wait()
            await asyncio.wait_for(done.wait(), 2)
            await asyncio.sleep(0.1)
            watch.follow({"web2": other.pid, "gone": reaped.pid})  # not there any more: said at once
        finally:
            watch.close()
            other.kill()
            other.wait()
        return exits, proc.pid, reaped.pid
    exits, killed, reaped = asyncio.run(scenario())
    assert exits == [("web1", killed), ("gone", reaped)]


def put(node: str, names: list[str], booting: tuple[str, ...] = ()) -> WatchEvent:
    rows = {n: {"pid": 1, **({"boot": "waiting"} if n in booting else {"boot": "up"})} for n in names}
    return WatchEvent("put", KV(model.report_key(node), json.dumps({"instances": rows}).encode(), 1, 1, 1, 0))


def test_only_a_report_that_drops_an_instance_or_ends_a_boot_wakes_the_master() -> None:
    seen: dict[str, tuple[frozenset[str], frozenset[str]]] = {}
    assert not slot_or_instance_freed(seen, [put("n1", ["web1", "web2"]), put("n2", ["db1"])])
    assert not slot_or_instance_freed(seen, [put("n1", ["web1", "web2", "web3"])])  # a start: nothing to restart
    assert slot_or_instance_freed(seen, [put("n1", ["web1", "web3"])])  # web2's QEMU is gone
    assert seen["n1"] == (frozenset({"web1", "web3"}), frozenset())
    other = WatchEvent("put", KV(model.job_key(3), b"{}", 1, 1, 1, 0))
    broken = WatchEvent("put", KV(model.report_key("n2"), b"not json", 1, 1, 1, 0))
    assert slot_or_instance_freed(seen, [other, broken])  # a broken report lists nothing: db1 is not seen running


def test_a_report_whose_guest_booted_wakes_the_master_to_use_the_free_start_slot() -> None:
    """Else the next restart of a boot storm waited for the master's next pass (up to 0.67 s), once per boot."""
    seen: dict[str, tuple[frozenset[str], frozenset[str]]] = {}
    assert not slot_or_instance_freed(seen, [put("n1", ["vm1", "vm2"], booting=("vm1", "vm2"))])
    assert not slot_or_instance_freed(seen, [put("n1", ["vm1", "vm2", "vm3"], booting=("vm1", "vm2", "vm3"))])  # one more
    assert slot_or_instance_freed(seen, [put("n1", ["vm1", "vm2", "vm3"], booting=("vm2", "vm3"))])  # vm1 booted
    assert not slot_or_instance_freed(seen, [put("n1", ["vm1", "vm2", "vm3"], booting=("vm2", "vm3"))])  # the same again
