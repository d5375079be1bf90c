"""Debian's hbal carrying out its own moves on a live Corral cluster through Corral's LUXI socket
(`hbal -L SOCKET -X`): three real agents, real TCG guests (`mirror` template), the socket of a node that is
not the master (its jobs are forwarded), the same cluster and score as hbal reads through the RAPI (`-m`).

The cluster starts piled up: every instance has n1 as primary and n2 as secondary, n3 holds nothing.
"""

from __future__ import annotations

import json
import re
import socket as sockets
import stat
import subprocess
from pathlib import Path

import pytest
from conftest import Cluster, pile_up, wait_for
from ganeti_data import htool, unavailable

pytestmark = pytest.mark.integration

GUEST = ("--os", "busybox-guest", "--disk", "64M", "--memory", "128M")
SCORE = re.compile(r"Initial score: (\S+)")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, guest_dir: Path):
    cluster = Cluster(tmp_path_factory.mktemp("luxi"), 3, subnet="127.0.14")  # its own: disk exports use fixed ports
    try:
        cluster.form(f"accel=tcg,kernel_path={guest_dir}/vmlinuz,initrd_path={guest_dir}/initrd.img,"
                     "kernel_args=quiet,shutdown_timeout_s=5", 1)
        yield cluster
    finally:
        cluster.stop()


def hbal(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([htool("hbal"), *args], capture_output=True, text=True, timeout=timeout)


def test_hbal_executes_its_moves_through_the_luxi_socket(cluster: Cluster) -> None:
    if not htool("hbal"):
        unavailable("ganeti-htools-3.0 is not installed")
    n1, n2 = cluster["n1"], cluster["n2"]
    names = ["x1", "x2", "x3"]
    pile_up(n1, names, *GUEST)

    socket = n2.root / "run" / "luxi.sock"
    assert stat.S_IMODE(socket.stat().st_mode) == 0o600  # LUXI has no authentication: root's only
    reader = n1.json("user", "add", "luxi-check", "--role", "read")["token"].partition(".")[2]
    url = f"https://luxi-check:{reader}@{n1.address}:{n1.ports['rapi']}"

    def same_score() -> subprocess.CompletedProcess[str] | None:
        """hbal's plan through LUXI, once it starts from the score hbal reads through the RAPI at the same
        moment (free memory and disk are live figures: two reads a second apart may differ in the 4th digit)."""
        plan, live = hbal(f"-L{socket}"), hbal("-m", url)
        assert plan.returncode == 0 and live.returncode == 0, plan.stderr + live.stderr
        return plan if SCORE.search(plan.stdout)[1] == SCORE.search(live.stdout)[1] else None
    plan = wait_for(same_score, 30, "hbal -L and hbal -m to read the same score")
    assert "Solution length=0" not in plan.stdout, plan.stdout

    for tool, args in (("hinfo", []), ("hspace", ["--standard-alloc=64,64,1"])):  # the other htools read it too
        said = subprocess.run([htool(tool), f"-L{socket}", *args], capture_output=True, text=True, timeout=60)
        assert said.returncode == 0 and "3 node" in said.stdout, f"{tool}: {said.stdout}{said.stderr}"

    done = hbal(f"-L{socket}", "-X", timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Got job IDs" in done.stdout, done.stdout
    rows = {r["name"]: r for r in n1.json("instance", "list")}
    assert {r["status"] for r in rows.values()} == {"running"}, rows  # every guest still runs
    assert any("n3" in (r["primary_node"], r["secondary_node"]) for r in rows.values()), rows
    ids = [int(i) for line in re.findall(r"Got job IDs(.*)", done.stdout) for i in re.findall(r"\d+", line)]
    recorded = [n1.json("job", "info", str(i)) for i in ids]  # each of hbal's jobs one Corral job, kept in etcd
    assert ids and {(j["op"], j["status"]) for j in recorded} == {("instance.moves", "success")}, recorded
    callers = [j["caller"] for j in recorded]
    assert all(c == {"kind": "root", "name": "root", "role": "admin", "via": "n2"} for c in callers), callers

    after = hbal(f"-L{socket}")
    assert after.returncode == 0, after.stderr
    assert float(SCORE.search(after.stdout)[1]) < float(SCORE.search(plan.stdout)[1]), (plan.stdout, after.stdout)

    # what hbal does not send is refused, with the reason, and changes nothing
    with sockets.socket(sockets.AF_UNIX) as client:
        client.settimeout(30)
        client.connect(str(socket))
        client.sendall(json.dumps({"method": "SubmitJob", "args": [[{"OP_ID": "OP_INSTANCE_REMOVE",
                                                                        "instance_name": "x1"}]]}).encode() + b"\x03")
        answer = b""
        while not answer.endswith(b"\x03"):
            answer += client.recv(65536)
    refused = json.loads(answer[:-1])
    assert refused["success"] is False and "OP_INSTANCE_REMOVE is not supported" in refused["result"][1][0], refused
    assert {r["name"] for r in n1.json("instance", "list")} == set(names)
