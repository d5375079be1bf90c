"""The primary cuts a secondary's copy on which guest writes have waited HUNG_AFTER_S, and not sooner."""

from __future__ import annotations

from typing import Any

from fakes.clock import FakeClock

from storage.filedisk import FileTemplate

from hostagent.node.disks import NodeDisks
from hostagent.node.replication import HUNG_AFTER_S, NodeReplication, target_node

DISK0 = "/machine/peripheral/disk0-dev/virtio-backend"


class StuckCopy:
    """QMP of a running guest with one write in flight on disk 0 that never completes."""

    def __init__(self) -> None:
        self.yanked: list[Any] = []

    async def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        answers = {"x-query-virtio": [{"path": DISK0}], "x-query-virtio-status": {"num-vqs": 1},
                   "x-query-virtio-queue-status": {"inuse": 1, "used-idx": 7},
                   "query-yank": [{"type": "block-node", "node-name": target_node(0)}]}
        if command == "yank":
            self.yanked.append(arguments)
            return {}
        return answers[command]

    async def status(self) -> str:
        return "running"


async def test_a_write_stuck_on_the_copy_cuts_it_after_hung_after_s(tmp_path):
    clock, qmp = FakeClock(), StuckCopy()
    disks = NodeDisks("n1", FileTemplate(str(tmp_path / "disks")), None)
    replication = NodeReplication("n1", "127.0.0.1", None, disks, None, str(tmp_path), clock)  # type: ignore[arg-type]
    await replication._watch_queues(qmp, "web1", 0)  # type: ignore[arg-type]
    clock.advance(HUNG_AFTER_S - 0.5)
    await replication._watch_queues(qmp, "web1", 0)  # type: ignore[arg-type]
    assert qmp.yanked == [], "cut before the writes had waited HUNG_AFTER_S"
    clock.advance(0.5)
    await replication._watch_queues(qmp, "web1", 0)  # type: ignore[arg-type]
    assert qmp.yanked == [{"instances": [{"type": "block-node", "node-name": target_node(0)}]}]
