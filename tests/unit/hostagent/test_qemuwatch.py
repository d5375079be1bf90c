"""A QEMU's death seen at once (hostagent.node.qemuwatch, with a real process and its pidfd), and the master
woken by a report that no longer lists an instance (hostagent.master.candidacy.vanished)."""

from __future__ import annotations

import asyncio
import json
import subprocess

from election.etcd import KV, WatchEvent

from hostagent import model
from hostagent.master.candidacy import vanished
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


def test_only_a_report_that_drops_an_instance_wakes_the_master() -> None:
    def put(node: str, names: list[str]) -> WatchEvent:
        value = json.dumps({"instances": {n: {"pid": 1} for n in names}}).encode()
        return WatchEvent("put", KV(model.report_key(node), value, 1, 1, 1, 0))
    running: dict[str, frozenset[str]] = {}
    assert not vanished(running, [put("n1", ["web1", "web2"]), put("n2", ["db1"])])
    assert not vanished(running, [put("n1", ["web1", "web2", "web3"])])  # a start: nothing to restart
    assert vanished(running, [put("n1", ["web1", "web3"])])  # web2's QEMU is gone
    assert running["n1"] == frozenset({"web1", "web3"})
    other = WatchEvent("put", KV(model.job_key(3), b"{}", 1, 1, 1, 0))
    broken = WatchEvent("put", KV(model.report_key("n2"), b"not json", 1, 1, 1, 0))
    assert vanished(running, [other, broken])  # a broken report lists nothing: db1 is not seen running
