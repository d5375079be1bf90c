"""membership against real serf 0.8.2 agents on 127.0.0.1, started from serf_argv."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pytest

from membership.agent import new_gossip_key, serf_argv, write_serf_secrets
from membership.rpc import (Member, MemberEvent, SerfRpc, SerfRpcError, SerfUnavailable, UserEvent)
from membership.view import gossip_status, note_alive

pytestmark = pytest.mark.integration

HOST = "127.0.0.1"
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
CONVERGE_TIMEOUT_S = 10.0
# MEASURED.md: ~5.3 s for 3 nodes; leave room for a loaded 2-core machine.
FAILURE_DETECT_TIMEOUT_S = 20.0
POLL_INTERVAL_S = 0.1

T = TypeVar("T")


def free_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1 (serf gossips on both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((HOST, 0))
            port = int(tcp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind((HOST, port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no port free for both TCP and UDP on 127.0.0.1 after 50 tries")


async def eventually(probe: Callable[[], Awaitable[T | None]], timeout_s: float, what: str) -> T:
    """Poll probe until it returns a value other than None, at most timeout_s."""
    deadline = time.monotonic() + timeout_s
    last: object = None
    for _ in range(int(timeout_s / POLL_INTERVAL_S) + 1):
        try:
            result = await probe()
        except (SerfUnavailable, SerfRpcError) as exc:
            result, last = None, exc
        if result is not None:
            return result
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(POLL_INTERVAL_S)
    raise AssertionError(f"{what} not within {timeout_s:g} s (last error: {last})")


@dataclass
class SerfNode:
    """One real `serf agent` child of the test, and an RPC connection to it."""

    name: str
    directory: Path
    key: str
    tags: dict[str, str] = field(default_factory=dict)
    rpc_auth: str | None = None
    keyring: bool = False
    bind_port: int = field(default_factory=free_port)
    rpc_port: int = field(default_factory=free_port)
    process: asyncio.subprocess.Process | None = None
    rpc: SerfRpc | None = None

    @property
    def gossip_addr(self) -> str:
        return f"{HOST}:{self.bind_port}"

    async def start(self, join: tuple[str, ...] = ()) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        config = str(self.directory / "serf.json")
        keyring = str(self.directory / "keyring.json") if self.keyring else None
        write_serf_secrets(config, self.key, self.rpc_auth, keyring)
        argv = serf_argv(self.name, self.gossip_addr, f"{HOST}:{self.rpc_port}", self.key, self.tags,
                         rpc_auth=self.rpc_auth, join=join, keyring_file=keyring, config_file=config)
        with open(self.directory / "serf.log", "ab") as log:
            self.process = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL,
                                                                stdout=log, stderr=log)
        self.rpc = await eventually(self._connect, START_TIMEOUT_S, f"serf agent '{self.name}' answering RPC")

    async def _connect(self) -> SerfRpc | None:
        assert self.process is not None
        if self.process.returncode is not None:
            raise AssertionError(f"serf '{self.name}' exited with {self.process.returncode}:\n{self.log_tail()}")
        try:
            return await SerfRpc.connect(HOST, self.rpc_port, auth_key=self.rpc_auth, timeout_s=2)
        except SerfUnavailable:
            return None

    async def kill(self) -> None:
        """SIGKILL this agent by its PID and reap it."""
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await asyncio.wait_for(self.process.wait(), STOP_TIMEOUT_S)

    async def stop(self) -> None:
        if self.rpc is not None:
            await self.rpc.close()
        await self.kill()

    def log_tail(self) -> str:
        path = self.directory / "serf.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""


@pytest.fixture
async def make_node(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[SerfNode]]]:
    key = new_gossip_key()
    nodes: list[SerfNode] = []

    async def make(name: str, tags: Mapping[str, str] | None = None, rpc_auth: str | None = None,
                   gossip_key: str | None = None, join: tuple[str, ...] = (), keyring: bool = False) -> SerfNode:
        node = SerfNode(name, tmp_path / name, gossip_key or key, dict(tags or {}), rpc_auth, keyring)
        nodes.append(node)
        await node.start(join)
        return node

    yield make
    for node in nodes:
        await node.stop()


async def statuses(node: SerfNode) -> dict[str, str]:
    assert node.rpc is not None
    return {m.name: m.status for m in await node.rpc.members()}


async def member(node: SerfNode, name: str) -> Member | None:
    assert node.rpc is not None
    return next((m for m in await node.rpc.members() if m.name == name), None)


async def status_is(node: SerfNode, name: str, status: str) -> bool | None:
    return True if (await statuses(node)).get(name) == status else None


async def three_node_cluster(make_node: Callable[..., Awaitable[SerfNode]]) -> list[SerfNode]:
    """a, b joined to a over RPC, c joined to a from its command line; returns once all see 3 alive."""
    a = await make_node("a")
    b = await make_node("b")
    assert b.rpc is not None
    assert await b.rpc.join([a.gossip_addr]) == 1
    c = await make_node("c", join=(a.gossip_addr,))
    nodes = [a, b, c]

    async def all_alive() -> bool | None:
        views = [await statuses(n) for n in nodes]
        ok = all(v == {"a": "alive", "b": "alive", "c": "alive"} for v in views)
        return True if ok else None

    await eventually(all_alive, CONVERGE_TIMEOUT_S, "3 agents seeing 3 alive members")
    return nodes


async def test_members_of_a_lone_agent_show_itself_with_its_tags(make_node: Callable[..., Awaitable[SerfNode]]) -> None:
    node = await make_node("n1", tags={"role": "kvm", "api": "127.0.0.1:7947"})
    assert node.rpc is not None

    members = await node.rpc.members()
    stats = await node.rpc.stats()

    assert members == [Member(name="n1", addr=HOST, port=node.bind_port,
                              tags={"role": "kvm", "api": "127.0.0.1:7947"}, status="alive")]
    assert stats["serf"]["encrypted"] == "true"


async def test_wrong_rpc_auth_key_is_refused_with_a_clear_error(
        make_node: Callable[..., Awaitable[SerfNode]]) -> None:
    node = await make_node("n1", rpc_auth="right-token")

    with pytest.raises(SerfRpcError) as refused:
        await SerfRpc.connect(HOST, node.rpc_port, auth_key="wrong-token", timeout_s=2)
    async with await SerfRpc.connect(HOST, node.rpc_port, timeout_s=2) as unauthenticated:
        with pytest.raises(SerfRpcError) as unauth:
            await unauthenticated.members()

    assert refused.value.command == "auth"
    assert "Invalid authentication token" in str(refused.value)
    assert "auth_key" in str(refused.value)
    assert unauth.value.message == "Authentication required"
    assert node.rpc is not None and [m.name for m in await node.rpc.members()] == ["n1"]


async def test_agents_keeping_the_key_in_a_keyring_file_gossip_with_the_others(
        make_node: Callable[..., Awaitable[SerfNode]]) -> None:
    a = await make_node("a")
    b = await make_node("b", rpc_auth="token", keyring=True, join=(a.gossip_addr,))
    assert b.rpc is not None

    await eventually(lambda: status_is(b, "a", "alive"), CONVERGE_TIMEOUT_S, "b (keyring) seeing a")

    assert (await b.rpc.stats())["serf"]["encrypted"] == "true"
    assert (b.directory / "keyring.json").stat().st_mode & 0o777 == 0o600


async def test_three_agents_that_join_see_three_alive_members(make_node: Callable[..., Awaitable[SerfNode]]) -> None:
    nodes = await three_node_cluster(make_node)

    for node in nodes:
        assert await statuses(node) == {"a": "alive", "b": "alive", "c": "alive"}


async def test_tag_update_is_visible_on_another_node(make_node: Callable[..., Awaitable[SerfNode]]) -> None:
    a = await make_node("a")
    b = await make_node("b", tags={"zone": "z1", "role": "old"})
    assert a.rpc is not None and b.rpc is not None
    await b.rpc.join([a.gossip_addr])
    await eventually(lambda: member(a, "b"), CONVERGE_TIMEOUT_S, "a seeing b")

    async with a.rpc.stream("member-update") as updates:
        await b.rpc.update_tags({"role": "master-candidate"}, delete=["zone"])

        async def b_retagged() -> Member | None:
            seen = await member(a, "b")
            return seen if seen is not None and seen.tags == {"role": "master-candidate"} else None

        await eventually(b_retagged, CONVERGE_TIMEOUT_S, "b's new tags on a")
        event = await asyncio.wait_for(anext(updates), CONVERGE_TIMEOUT_S)

    assert isinstance(event, MemberEvent) and event.type == "member-update"
    assert [(m.name, m.tags) for m in event.members] == [("b", {"role": "master-candidate"})]


async def test_user_event_reaches_a_stream_on_another_node(make_node: Callable[..., Awaitable[SerfNode]]) -> None:
    a = await make_node("a")
    b = await make_node("b")
    assert a.rpc is not None and b.rpc is not None
    await b.rpc.join([a.gossip_addr])
    await eventually(lambda: member(a, "b"), CONVERGE_TIMEOUT_S, "a seeing b")
    payload = bytes(range(256))[:200]

    async with a.rpc.stream("user") as events:
        await b.rpc.user_event("corral-order", payload)
        event = await asyncio.wait_for(anext(events), CONVERGE_TIMEOUT_S)

    assert isinstance(event, UserEvent)
    assert (event.name, event.payload, event.coalesce) == ("corral-order", payload, False)
    assert event.ltime > 0


async def test_concurrent_commands_and_a_stream_share_one_connection(
        make_node: Callable[..., Awaitable[SerfNode]]) -> None:
    node = await make_node("n1", tags={"k": "v"})
    rpc = node.rpc
    assert rpc is not None

    async with rpc.stream("user,member-update") as events:
        results = await asyncio.gather(*(rpc.members() for _ in range(20)),
                                       *(rpc.user_event(f"e{i}", b"x") for i in range(10)), rpc.stats())
        received = [await asyncio.wait_for(anext(events), CONVERGE_TIMEOUT_S) for _ in range(10)]

    assert all(r == [Member("n1", HOST, node.bind_port, {"k": "v"}, "alive")] for r in results[:20])
    assert sorted(e.name for e in received if isinstance(e, UserEvent)) == sorted(f"e{i}" for i in range(10))


async def test_killed_agent_is_reported_failed_then_force_left(make_node: Callable[..., Awaitable[SerfNode]]) -> None:
    a, b, c = await three_node_cluster(make_node)
    assert a.rpc is not None
    last_seen = note_alive(await a.rpc.members(), time.monotonic(), {})
    failures = a.rpc.stream("member-failed")
    await failures.start()

    await c.kill()

    async def c_failed_everywhere() -> bool | None:
        views = [await statuses(n) for n in (a, b)]
        return True if all(v["c"] == "failed" for v in views) else None

    await eventually(c_failed_everywhere, FAILURE_DETECT_TIMEOUT_S, "c reported failed by a and b")
    view = gossip_status(await a.rpc.members(), time.monotonic(), last_seen)
    event = await asyncio.wait_for(anext(failures), CONVERGE_TIMEOUT_S)
    await failures.aclose()
    await a.rpc.force_leave("c")
    await eventually(lambda: status_is(a, "c", "left"), CONVERGE_TIMEOUT_S, "c left after force-leave")

    assert view["c"].status == "failed" and view["c"].reason.startswith("no gossip for ")
    assert view["a"].status == "alive" and view["b"].status == "alive"
    assert isinstance(event, MemberEvent) and [(m.name, m.status) for m in event.members] == [("c", "failed")]


async def test_leave_is_seen_as_left_and_stops_the_agent(make_node: Callable[..., Awaitable[SerfNode]]) -> None:
    a = await make_node("a")
    b = await make_node("b", join=(a.gossip_addr,))
    assert a.rpc is not None and b.rpc is not None and b.process is not None
    await eventually(lambda: status_is(a, "b", "alive"), CONVERGE_TIMEOUT_S, "a seeing b alive")

    await b.rpc.leave()
    returncode = await asyncio.wait_for(b.process.wait(), STOP_TIMEOUT_S)
    await eventually(lambda: status_is(a, "b", "left"), CONVERGE_TIMEOUT_S, "a seeing b left")

    assert returncode == 0
    assert gossip_status(await a.rpc.members(), 0.0, {})["b"].status == "left"


async def test_agent_with_another_gossip_key_cannot_join(make_node: Callable[..., Awaitable[SerfNode]]) -> None:
    a = await make_node("a")
    intruder = await make_node("intruder", gossip_key=new_gossip_key())
    assert a.rpc is not None and intruder.rpc is not None

    with pytest.raises(SerfRpcError) as refused:
        await intruder.rpc.join([a.gossip_addr])
    await asyncio.sleep(1.0)  # give gossip a chance to (wrongly) spread the intruder

    assert refused.value.command == "join"
    assert [m.name for m in await a.rpc.members()] == ["a"]
    assert [m.name for m in await intruder.rpc.members()] == ["intruder"]


async def test_stream_and_commands_fail_with_unavailable_when_the_agent_dies(
        make_node: Callable[..., Awaitable[SerfNode]]) -> None:
    node = await make_node("n1")
    assert node.rpc is not None

    async with node.rpc.stream("member-join,member-failed") as events:
        await node.kill()
        with pytest.raises(SerfUnavailable):
            await asyncio.wait_for(anext(events), STOP_TIMEOUT_S)
    with pytest.raises(SerfUnavailable) as after:
        await node.rpc.members()

    assert after.value.address == f"{HOST}:{node.rpc_port}"
    assert "closed the connection" in after.value.reason


async def test_connect_to_a_port_nobody_listens_on_raises_unavailable() -> None:
    port = free_port()

    with pytest.raises(SerfUnavailable) as refused:
        await SerfRpc.connect(HOST, port, timeout_s=2)

    assert refused.value.address == f"{HOST}:{port}"
    assert "refused" in refused.value.reason.lower()


async def test_connect_to_a_silent_listener_gives_up_after_its_timeout() -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    server = await asyncio.start_server(never_answer, HOST, 0)
    port = server.sockets[0].getsockname()[1]
    started = time.monotonic()
    try:
        with pytest.raises(SerfUnavailable) as silent:
            await SerfRpc.connect(HOST, port, timeout_s=0.5)
    finally:
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()

    assert "no reply to 'handshake' within 0.5 s" in silent.value.reason
    assert time.monotonic() - started < 3


async def test_gossip_key_rotation_reaches_every_member_and_survives_a_restart(
        make_node: Callable[..., Awaitable[SerfNode]]) -> None:
    a = await make_node("a", keyring=True)
    b = await make_node("b", keyring=True, join=(a.gossip_addr,))
    assert a.rpc is not None and b.rpc is not None
    await eventually(lambda: status_is(a, "b", "alive"), CONVERGE_TIMEOUT_S, "a seeing b")
    old, new = a.key, new_gossip_key()

    installed = await a.rpc.install_key(new)
    assert installed["NumNodes"] == 2 and installed["NumErr"] == 0
    await a.rpc.use_key(new)
    await a.rpc.remove_key(old)
    assert set((await b.rpc.list_keys())["Keys"]) == {new}

    await b.stop()  # b restarts from its keyring file, which serf rewrote with the new key only
    await b.start(join=(a.gossip_addr,))
    assert b.rpc is not None
    await eventually(lambda: status_is(a, "b", "alive"), CONVERGE_TIMEOUT_S, "a seeing b again after rotation")
    with pytest.raises(SerfRpcError, match="use-key"):
        await a.rpc.use_key(old)  # the old key is gone everywhere
