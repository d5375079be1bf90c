"""Node-to-node connections (hostagent.orders): what a network split does to a request on its way."""

from __future__ import annotations

import socket

from hostagent import orders


def test_a_node_to_node_connection_dies_once_its_peer_has_acknowledged_nothing_for_ten_seconds() -> None:
    """A request sent into a split must not wait in the kernel to be delivered when the network heals."""
    addr_info = (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("192.0.2.1", 7947))
    with orders._short_lived_unacknowledged(addr_info) as sock:
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 10_000
