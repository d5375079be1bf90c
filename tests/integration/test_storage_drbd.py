"""Rendered DRBD resource files against the real drbdadm (dry run).

`drbdadm -d` parses the configuration and prints the drbdsetup/drbdmeta
commands it would run, without the kernel module, so a file rendered by
storage.drbdconf is checked by the tool that will read it on a node.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from storage.drbdconf import DrbdadmFailed, DrbdPeer, DrbdResource, dry_run, render_resource

pytestmark = pytest.mark.integration

SECRET = "Kq3vX9zLm2Tn8Rb4Wc6Yd1Pf5Hg7Js0A"
N1 = DrbdPeer(
    node="n1", node_id=0, address="127.0.0.1", port=11000,
    disk="/dev/vg/corral-web1-disk0", meta_disk="/dev/vg/corral-web1-disk0-meta",
)
N2 = DrbdPeer(
    node="n2", node_id=1, address="127.0.0.2", port=11001,
    disk="/dev/vg2/corral-web1-disk0", meta_disk="/dev/vg2/corral-web1-disk0-meta",
)
RES = DrbdResource(name="corral-web1-0", minor=7, secret=SECRET, peers=(N1, N2))


def write_config(directory: Path, resource_text: str, name: str = RES.name) -> str:
    """A top-level drbd.conf including one resource file, as a node would have."""
    (directory / f"{name}.res").write_text(resource_text)
    conf = directory / "drbd.conf"
    conf.write_text(f'global {{ usage-count no; }}\ninclude "{directory}/*.res";\n')
    return str(conf)


def find(commands: list[list[str]], program: str, verb: str) -> list[str]:
    matches = [argv for argv in commands if argv[:2] == [program, verb]]
    assert len(matches) == 1, f"expected one {program} {verb} in {commands}"
    return matches[0]


async def test_drbdadm_up_creates_resource_minor_peer_path_and_attaches(tmp_path: Path) -> None:
    conf = write_config(tmp_path, render_resource(RES))
    commands = await dry_run(conf, RES.name, node="n1")
    assert find(commands, "drbdsetup", "new-resource") == [
        "drbdsetup", "new-resource", "corral-web1-0", "0",
    ]
    assert find(commands, "drbdsetup", "new-minor") == [
        "drbdsetup", "new-minor", "corral-web1-0", "7", "0",
    ]
    peer = find(commands, "drbdsetup", "new-peer")
    assert peer[2:4] == ["corral-web1-0", "1"]
    assert "--protocol=C" in peer
    assert f"--shared-secret={SECRET}" in peer
    assert "--cram-hmac-alg=sha256" in peer
    assert find(commands, "drbdsetup", "new-path") == [
        "drbdsetup", "new-path", "corral-web1-0", "1",
        "ipv4:127.0.0.1:11000", "ipv4:127.0.0.2:11001",
    ]
    assert find(commands, "drbdsetup", "attach") == [
        "drbdsetup", "attach", "7",
        "/dev/vg/corral-web1-disk0", "/dev/vg/corral-web1-disk0-meta", "flexible",
    ]
    assert find(commands, "drbdsetup", "connect") == [
        "drbdsetup", "connect", "corral-web1-0", "1",
    ]


async def test_drbdadm_up_on_the_other_node_uses_its_own_id_and_volumes(tmp_path: Path) -> None:
    conf = write_config(tmp_path, render_resource(RES))
    commands = await dry_run(conf, RES.name, node="n2")
    assert find(commands, "drbdsetup", "new-resource")[3] == "1"
    assert find(commands, "drbdsetup", "new-path")[3:] == [
        "0", "ipv4:127.0.0.2:11001", "ipv4:127.0.0.1:11000",
    ]
    assert find(commands, "drbdsetup", "attach")[3:5] == [
        "/dev/vg2/corral-web1-disk0", "/dev/vg2/corral-web1-disk0-meta",
    ]


async def test_drbdadm_reads_other_protocols_and_names_with_dots(tmp_path: Path) -> None:
    res = dataclasses.replace(
        RES, name="corral-db.example_1-2", protocol="A",
        peers=(dataclasses.replace(N1, node="net"), dataclasses.replace(N2, node="n2.example")),
    )
    conf = write_config(tmp_path, render_resource(res), name=res.name)
    commands = await dry_run(conf, res.name, node="net")
    peer = find(commands, "drbdsetup", "new-peer")
    assert peer[2] == "corral-db.example_1-2"
    assert "--protocol=A" in peer and "--_name=n2.example" in peer


async def test_drbdadm_down_is_a_single_drbdsetup_down(tmp_path: Path) -> None:
    conf = write_config(tmp_path, render_resource(RES))
    assert await dry_run(conf, RES.name, "down", node="n1") == [
        ["drbdsetup", "down", "corral-web1-0"],
    ]


async def test_broken_config_is_refused_with_drbdadms_message(tmp_path: Path) -> None:
    broken = render_resource(RES).replace("protocol C;", "protocol C")
    conf = write_config(tmp_path, broken)
    with pytest.raises(DrbdadmFailed) as caught:
        await dry_run(conf, RES.name, node="n1")
    error = caught.value
    assert error.rc != 0
    assert (error.conf_path, error.command, error.resource) == (conf, "up", RES.name)
    assert any("Parse error" in line for line in error.output), error.output
    assert f"{tmp_path}/{RES.name}.res:5" in str(error)
    assert not any(line.startswith("modinfo") for line in error.output)
    assert SECRET not in str(error)


async def test_conflicting_node_ids_are_refused_by_drbdadm(tmp_path: Path) -> None:
    text = render_resource(RES).replace("node-id 1;", "node-id 0;")
    conf = write_config(tmp_path, text)
    with pytest.raises(DrbdadmFailed, match="conflicting use of node-id"):
        await dry_run(conf, RES.name, node="n1")


async def test_a_node_not_in_the_resource_is_told_so(tmp_path: Path) -> None:
    conf = write_config(tmp_path, render_resource(RES))
    with pytest.raises(DrbdadmFailed, match="not defined in your config"):
        await dry_run(conf, RES.name, node="n3")


async def test_missing_config_file_is_reported(tmp_path: Path) -> None:
    missing = str(tmp_path / "nowhere.conf")
    with pytest.raises(DrbdadmFailed, match="Can not open") as caught:
        await dry_run(missing, RES.name, node="n1")
    assert caught.value.conf_path == missing
