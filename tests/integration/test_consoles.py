"""CD-ROMs and VNC displays on a one-node cluster with real QEMU (TCG) running the test guest.

The tests run in file order against one cluster, like an operator's session.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import subprocess
import urllib.error
import urllib.parse
import urllib.request

import aiohttp
import pytest
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes

from conftest import BIN, AgentNode, free_port, one_node_cluster, wait_for
from election.replica import Replica
from hostagent.master import vncpass
from hostagent.errors import MESSAGE_HEADER
from hostagent.api.relay import ADMIN_RESERVE, MAX_PER_CALLER, MAX_RELAYS
from kvm.qmp import Qmp

pytestmark = pytest.mark.integration
RFB = b"RFB 003.008\n"


@pytest.fixture(scope="module")
def node(tmp_path_factory, guest_dir):
    """One node whose agent gives guests CD-ROM images from <root>/iso only."""
    node = AgentNode(tmp_path_factory.mktemp("consoles"))
    (node.root / "iso").mkdir()
    text = node.config.read_text()
    node.config.write_text(text.replace("kernel_dirs = ", f'iso_dirs = ["{node.root}/iso"]\nkernel_dirs = ', 1))
    with one_node_cluster(node, guest_dir):
        yield node


@pytest.fixture(scope="module")
def isos(node) -> tuple[str, str]:
    """Two CD-ROM images in the node's ISO directory: first, second."""
    return make_iso(node, "first"), make_iso(node, "second")


def running(node: AgentNode, name: str, *args: str) -> str:
    """Instance `name` added with `args` and running (the tests of this file share them)."""
    node.ok("instance", "add", name, "--os", "busybox-guest", "--memory", "128M", "--disk", "64M", *args)
    wait_for(lambda: node.instance(name)["status"] == "running", 90, f"{name} to run")
    return name


@pytest.fixture(scope="module")
def c1(node, isos) -> str:
    """An instance started with the first image in its CD-ROM drive."""
    return running(node, "c1", "--cdrom", isos[0])


@pytest.fixture(scope="module")
def v1(node) -> str:
    """An instance with a TCP display (so a VNC password), started without a CD-ROM drive."""
    return running(node, "v1", "--hv", "vnc=tcp")


@pytest.fixture(scope="module")
def u1(node) -> str:
    """An instance whose display is a unix socket, added stopped and then started."""
    node.ok("instance", "add", "u1", "--os", "busybox-guest", "--memory", "128M", "--disk", "64M", "--no-start",
            "--hv", "vnc=localhost")
    node.ok("instance", "start", "u1")
    return "u1"


def make_iso(node: AgentNode, name: str) -> str:
    src = node.root / f"src-{name}"
    src.mkdir()
    (src / "README.txt").write_text(f"disc {name}\n")
    path = node.root / "iso" / f"{name}.iso"
    subprocess.run(["genisoimage", "-quiet", "-V", name.upper(), "-o", str(path), str(src)], check=True)
    return str(path)


def medium(node: AgentNode, instance: str) -> str | None:
    """The file in the guest's CD-ROM drive as QEMU itself says (query-block), "" when empty."""
    async def ask() -> str | None:
        async with await Qmp.connect(str(node.root / "run" / "instances" / instance / "qmp.sock")) as qmp:
            for entry in await qmp.execute("query-block"):  # type: ignore[attr-defined]
                if entry.get("qdev") == "cdrom0":
                    return str((entry.get("inserted") or {}).get("file", ""))
        return None
    return asyncio.run(ask())


def refused(node: AgentNode, *args: str) -> str:
    result = node.corral(*args)
    assert result.returncode != 0, result.stdout
    return result.stderr


def test_an_instance_with_a_cdrom_shows_it_and_its_medium_changes_and_ejects_live(node, isos, c1):
    first, second = isos
    assert node.json("instance", "info", "c1")["cdrom"] == first
    assert f"cdrom:        {first}" in node.ok("instance", "info", "c1")
    assert medium(node, "c1") == first

    out = node.ok("instance", "modify", "c1", "--cdrom", second)
    assert f"the CD-ROM drive of the running guest now holds {second}" in out, out
    assert medium(node, "c1") == second and node.json("instance", "info", "c1")["cdrom"] == second

    out = node.ok("instance", "modify", "c1", "--cdrom", "none")
    assert "is empty (ejected)" in out, out
    assert medium(node, "c1") == "" and node.json("instance", "info", "c1")["cdrom"] == ""
    assert "cdrom:        (empty)" in node.ok("instance", "info", "c1")

    node.ok("instance", "modify", "c1", "--cdrom", first)  # the drive stayed: in again, live
    assert medium(node, "c1") == first


def test_a_bad_cdrom_is_refused_before_any_job_and_changes_nothing(node, c1):
    jobs = len(node.json("job", "list"))
    missing = str(node.root / "iso" / "missing.iso")
    assert f"'{missing}' does not exist on node 'n1'" in refused(node, "instance", "modify", "c1", "--cdrom", missing)
    assert "is not a file in the ISO directories of node 'n1'" in \
        refused(node, "instance", "modify", "c1", "--cdrom", "/etc/passwd")
    assert "not a path" in refused(node, "instance", "modify", "c1", "--cdrom", "first.iso")
    assert "no instance named 'nosuch'" in refused(node, "instance", "modify", "nosuch", "--cdrom", missing)
    assert "does not exist on node 'n1'" in refused(node, "instance", "add", "c2", "--os", "busybox-guest",
                                                    "--disk", "64M", "--cdrom", missing)
    assert len(node.json("job", "list")) == jobs
    assert "c2" not in {i["name"] for i in node.json("instance", "list")}
    assert medium(node, "c1") == node.json("instance", "info", "c1")["cdrom"] != ""


def test_a_running_instance_without_a_drive_gets_its_cdrom_at_the_next_start(node, isos, v1):
    iso = isos[0]
    out = node.ok("instance", "modify", "v1", "--cdrom", iso)
    assert "runs without a CD-ROM drive: it gets one" in out, out
    info = node.json("instance", "info", "v1")
    assert info["pending"] == {"cdrom": iso} and info["cdrom"] is None
    assert medium(node, "v1") is None  # no drive in this QEMU


def rfb_security_types(sock: socket.socket) -> list[int]:
    """The first bytes of RFB 3.8: the server's version, ours, then the security types it offers."""
    sock.settimeout(20)
    assert sock.recv(12) == RFB
    sock.sendall(RFB)
    count = sock.recv(1)[0]
    return list(sock.recv(count))


def vnc_authenticate(sock: socket.socket, password: str) -> int:
    """Choose VNC authentication and answer its challenge (DES, each key byte's bits reversed): 0 is OK."""
    sock.sendall(bytes([2]))
    challenge = sock.recv(16)
    key = bytes(int(f"{b:08b}"[::-1], 2) for b in password.encode().ljust(8, b"\0")[:8])
    des = Cipher(TripleDES(key * 3), modes.ECB()).encryptor()
    sock.sendall(des.update(challenge) + des.finalize())
    return int.from_bytes(sock.recv(4), "big")


def test_a_tcp_display_needs_its_password_directly_and_through_a_relay_on_a_local_port(node, v1):
    shown = node.json("instance", "console", "v1", "--vnc")
    assert shown["mode"] == "tcp" and len(shown["password"]) == 8 and shown["host"] == node.address
    with socket.create_connection((shown["host"], shown["port"])) as sock:
        assert rfb_security_types(sock) == [2]  # VNC authentication only
        assert vnc_authenticate(sock, "wrong!!!") != 0
    port = free_port()
    relay = subprocess.Popen([str(BIN / "corral"), "instance", "console", "v1", "--vnc", "--listen", str(port)],
                             env={"CORRAL_SOCKET": node.socket, "PATH": "/usr/bin:/bin"},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: _listening(port), 20, "the relay to listen")
        with socket.create_connection(("127.0.0.1", port)) as sock:
            assert 2 in rfb_security_types(sock)
            assert vnc_authenticate(sock, shown["password"]) == 0
    finally:
        relay.terminate()
        out, _ = relay.communicate(timeout=10)
    assert f"relayed on 127.0.0.1:{port}" in out and f"VNC password: {shown['password']}" in out


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def test_a_unix_socket_display_is_relayed_from_the_agent_and_never_has_a_tcp_port(node, u1):
    shown = node.json("instance", "console", "u1", "--vnc")
    assert shown["mode"] == "unix" and "password" not in shown and shown["socket"].endswith("/u1/vnc.sock")

    async def relayed() -> bytes:
        async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=node.socket)) as session:
            async with session.ws_connect("http://localhost/v1/instances/u1/vnc/stream") as ws:
                msg = await ws.receive(timeout=20)
                await ws.send_bytes(RFB)
                types = await ws.receive(timeout=20)
                return bytes(msg.data) + bytes(types.data)
    data = asyncio.run(relayed())
    assert data.startswith(RFB) and data[12:] == bytes([1, 1])  # one type: None (only root reaches the socket)


def test_one_user_holds_at_most_4_displays_the_agent_20_for_admins_and_then_it_refuses_clearly(node, u1):
    token = node.json("user", "add", "u-flood", "--role", "write")["token"]
    ctx = ssl.create_default_context(cafile=str(node.root / "state" / "pki" / "ca.crt"))

    async def attempt(session: aiohttp.ClientSession, url: str, **kw) -> tuple[int, str, object]:
        try:
            return 101, "", await session.ws_connect(url, **kw)
        except aiohttp.WSServerHandshakeError as exc:
            return exc.status, urllib.parse.unquote((exc.headers or {}).get(MESSAGE_HEADER, "")), None

    async def flood(session: aiohttp.ClientSession, url: str, count: int, **kw) -> tuple[int, str]:
        """Open `count` displays, then one more; what the one more got. The agent frees a slot only once its
        relay has closed both sockets, a moment after the caller's close returns: a refusal of one of the
        first `count` (a slot a previous flood still held) is tried again, boundedly."""
        for _ in range(20):
            open_ = []
            while len(open_) < count and (got := await attempt(session, url, **kw))[0] == 101:
                open_.append(got[2])
            status, message, extra = await attempt(session, url, **kw) if len(open_) == count else (*got[:2], None)
            for ws in [*open_, extra]:
                if ws is not None:
                    await ws.close()  # type: ignore[attr-defined]
            if len(open_) == count:
                return status, message
            await asyncio.sleep(0.5)
        raise AssertionError(f"only {len(open_)} of {count} displays opened: {status} {message}")

    async def run() -> tuple[tuple[int, str], tuple[int, str], bool]:
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as session:
            user = await flood(session, f"https://{node.api}/v1/instances/u1/vnc/stream", MAX_PER_CALLER, ssl=ctx)
        async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=node.socket)) as session:
            url = "http://localhost/v1/instances/u1/vnc/stream"
            root = await flood(session, url, MAX_RELAYS + ADMIN_RESERVE)
            async with session.ws_connect(url) as again:
                ok = (await again.receive(timeout=20)).data.startswith(RFB)
        return user, root, ok
    user, root, ok = asyncio.run(run())
    assert user == (409, f"user 'u-flood' already has {MAX_PER_CALLER} consoles and displays open through node "
                         "'n1', the most one caller may; close one and try again")
    assert root[0] == 409 and f"already relays {MAX_RELAYS + ADMIN_RESERVE} consoles and displays" in root[1]
    assert ok
    assert node.corral("cluster", "info").returncode == 0  # the agent answers all along


def https(node: AgentNode, path: str, token: str | None, upgrade: bool = False) -> tuple[int, dict]:
    ctx = ssl.create_default_context(cafile=str(node.root / "state" / "pki" / "ca.crt"))
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if upgrade:
        headers |= {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
                    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
    req = urllib.request.Request(f"https://{node.api}{path}", headers=headers)
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def test_only_write_users_open_displays_or_see_the_password(node, v1):
    tokens = {role: node.json("user", "add", f"u-{role}", "--role", role)["token"] for role in ("read", "write")}
    password = node.json("instance", "console", "v1", "--vnc")["password"]
    for path, upgrade in (("/v1/instances/v1/vnc", False), ("/v1/instances/v1/vnc/stream", True),
                          ("/v1/instances/v1/console", True)):
        status, answer = https(node, path, tokens["read"], upgrade)
        assert status == 403 and "needs the write role; user 'u-read' has the read role" in answer["message"]
        assert https(node, path, None, upgrade)[0] == 401
    status, answer = https(node, "/v1/instances/v1/vnc", tokens["write"])
    assert status == 200 and answer["data"]["password"] == password
    for path in ("/v1/instances/v1", "/v1/instances", "/v1/jobs", "/v1/events"):
        status, answer = https(node, path, tokens["read"])
        assert status == 200 and password not in json.dumps(answer), path
    for job in node.json("job", "list"):
        assert password not in json.dumps(node.json("job", "info", str(job["id"])))


def test_removing_an_instance_removes_its_password(node):
    node.ok("instance", "add", "r1", "--os", "busybox-guest", "--memory", "128M", "--disk", "64M", "--no-start",
            "--hv", "vnc=tcp")
    uuid = node.json("instance", "info", "r1")["uuid"]
    replica = Replica(str(node.root / "state" / "config.db"))
    assert replica.get_json(vncpass.key(uuid))["password"]
    node.ok("instance", "remove", "r1")
    wait_for(lambda: replica.get_json(vncpass.key(uuid)) is None, 10, "r1's VNC password to be gone")
