"""The primary probes a secondary's disk export before QEMU connects to it (QEMU would wait, hung, with it)."""

from __future__ import annotations

import asyncio

import pytest

from hostagent.node.replication import NBD_GREETING, ReplicationError, probe_export


async def _serve(greeting: bytes | None) -> tuple[asyncio.AbstractServer, int]:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if greeting is not None:
            writer.write(greeting)
            await writer.drain()
        await reader.read()  # until the prober hangs up
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_an_export_that_greets_passes() -> None:
    server, port = await _serve(NBD_GREETING + b"\x00\x03")
    async with server:
        await probe_export("127.0.0.1", port, timeout_s=2)


async def test_an_export_that_accepts_but_never_greets_is_refused_in_time() -> None:
    server, port = await _serve(None)
    async with server:
        with pytest.raises(ReplicationError, match="accepts connections but does not greet within 0.2 s"):
            await probe_export("127.0.0.1", port, timeout_s=0.2)


async def test_something_else_on_the_port_is_refused() -> None:
    server, port = await _serve(b"SSH-2.0-OpenSSH_9.2\r\n")
    async with server:
        with pytest.raises(ReplicationError, match="is not a disk export"):
            await probe_export("127.0.0.1", port, timeout_s=2)


async def test_nothing_listening_is_refused() -> None:
    server, port = await _serve(None)
    server.close()
    await server.wait_closed()
    with pytest.raises(ReplicationError, match="does not answer"):
        await probe_export("127.0.0.1", port, timeout_s=2)
