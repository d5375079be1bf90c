"""This node's own record of its cluster (cluster.json): which one, whether it runs an etcd member, whom to reach."""

from __future__ import annotations

import json
import os
from typing import Any


class ClusterFile:
    """Read at every start and by the local API; its absence is what "not in a cluster" means."""

    def __init__(self, state_dir: str) -> None:
        self.path = os.path.join(state_dir, "cluster.json")

    def read(self) -> dict[str, Any] | None:
        try:
            with open(self.path) as fh:
                return json.load(fh)
        except FileNotFoundError:
            return None

    def save(self, local: dict[str, Any]) -> None:
        """Atomically, and on disk before the next step relies on it."""
        tmp = self.path + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(local, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)

    @property
    def is_candidate(self) -> bool:
        return bool((self.read() or {}).get("etcd_member"))
