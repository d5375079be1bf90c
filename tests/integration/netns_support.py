"""Real network partitions for integration tests: nodes in network namespaces on a bridge the test owns.

    switch namespace  <prefix>-sw : bridge `br0`, one port `<prefix>-nK` per node
    node namespaces   <prefix>-nK : `lo` up, `eth0` (the peer of `<prefix>-nK`) holding 10.213.X.K/24

The addresses exist only inside these namespaces, which are connected to
nothing else (no link to the host's namespace, no route out), so a parallel
run's cluster can never be reached, whatever its subnet; X is still drawn at
random, with the prefix, so that logs and `ip netns list` tell runs apart.
An agent started with `ip netns exec <prefix>-nK` (and its etcd, Serf, fence
keeper and QEMUs after it) sees only its own namespace: each namespace has
its own port space, so every node keeps the fixed ports `NODE_PORTS`. The
CLI and the tests still reach each agent through its unix socket: a socket
file works across network namespaces.

A node is cut by setting its bridge port down in the switch namespace: its
frames go nowhere, and nothing tells the agent (it never looks at links).
Healing sets the port up again. nftables is not needed for this (and is
not installed here): a port down drops everything in both directions, which
is the partition these tests want.

`Switch.close` deletes every link and namespace it created (ports first, then
namespaces); the processes in them are the caller's to stop first (by PID,
as `Cluster.stop` does), since a namespace that still holds a process lives on
after `ip netns del`. Every command has a timeout.
"""

from __future__ import annotations

import random
import secrets
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

NODE_PORTS = {"api": 7947, "gossip": 7946, "serf_rpc": 7373, "etcd_client": 2379, "etcd_peer": 2380}
IP_TIMEOUT_S = 10


def ip(*args: str, namespace: str | None = None) -> str:
    argv = ["ip", *(("-n", namespace) if namespace else ()), *args]
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=IP_TIMEOUT_S).stdout


class Switch:
    """A bridge in a namespace of its own, and one namespace per node wired to it by a veth pair.

    Made and removed by `network()`; `add` wires a node, `cut`/`heal` partition it."""

    def __init__(self) -> None:
        self.prefix = f"corral{secrets.token_hex(3)[:5]}"  # the port `<prefix>-nKK` must fit in 15 bytes
        self.subnet = f"10.213.{random.randrange(256)}"
        self.namespace = f"{self.prefix}-sw"
        self.nodes: dict[str, str] = {}  # node name -> its namespace, once wired
        self._namespaces: list[str] = []  # in creation order, each once it exists

    def _add_namespace(self, name: str) -> None:
        ip("netns", "add", name)  # fails if the name is taken: never adopt someone else's namespace
        self._namespaces.append(name)
        ip("link", "set", "lo", "up", namespace=name)

    def open(self) -> None:
        self._add_namespace(self.namespace)
        ip("link", "add", "br0", "type", "bridge", namespace=self.namespace)
        ip("link", "set", "br0", "up", namespace=self.namespace)

    def port(self, node: str) -> str:
        """The switch-side end of the node's veth pair."""
        return f"{self.prefix}-{node}"

    def add(self, node: str, host: int) -> tuple[str, str]:
        """Wire node `node` (a short name, e.g. n1) with address subnet.host; returns (namespace, address)."""
        namespace, address = f"{self.prefix}-{node}", f"{self.subnet}.{host}"
        self._add_namespace(namespace)
        # made inside the two namespaces directly: nothing appears in the host's namespace, even briefly
        ip("link", "add", self.port(node), "type", "veth", "peer", "name", "eth0", "netns", namespace,
           namespace=self.namespace)
        self.nodes[node] = namespace
        ip("link", "set", self.port(node), "master", "br0", "up", namespace=self.namespace)
        ip("addr", "add", f"{address}/24", "dev", "eth0", namespace=namespace)
        ip("link", "set", "eth0", "up", namespace=namespace)
        return namespace, address

    def cut(self, node: str) -> None:
        ip("link", "set", self.port(node), "down", namespace=self.namespace)

    def heal(self, node: str) -> None:
        ip("link", "set", self.port(node), "up", namespace=self.namespace)

    @contextmanager
    def cut_off(self, node: str) -> Iterator[None]:
        """The node is partitioned from every other for the block's duration, healed afterwards whatever happens."""
        self.cut(node)
        try:
            yield
        finally:
            self.heal(node)

    def close(self) -> list[str]:
        """Delete every port and namespace this switch created; returns what is left (nothing, normally)."""
        problems = []
        for node in self.nodes:
            try:
                ip("link", "del", self.port(node), namespace=self.namespace)  # takes its peer `eth0` along
            except subprocess.SubprocessError as exc:
                problems.append(f"link {self.port(node)}: {exc}")
        for name in reversed(self._namespaces):
            try:
                ip("netns", "del", name)
            except subprocess.SubprocessError as exc:
                problems.append(f"namespace {name}: {exc}")
        listed = {line.split()[0] for line in ip("netns", "list").splitlines() if line.strip()}
        problems += [f"namespace {name} still listed" for name in sorted(listed & set(self._namespaces))]
        return problems


@contextmanager
def network() -> Iterator[Switch]:
    """A switch for one cluster; stop the processes in its namespaces (by PID) before the block ends."""
    switch = Switch()
    try:
        switch.open()
        yield switch
    finally:
        problems = switch.close()
        assert not problems, f"the test network was not fully removed: {'; '.join(problems)}"
