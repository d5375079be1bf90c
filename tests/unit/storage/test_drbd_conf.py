"""storage.drbdconf's pure parts: resource names, the resource file, allocation."""

from __future__ import annotations

import dataclasses
import string

import pytest

from storage.base import InvalidDiskSpec, InvalidName, StorageError
from storage.drbdconf import (
    MINOR_MAX,
    AllocationExhausted,
    DrbdPeer,
    DrbdResource,
    InvalidDrbdResource,
    InvalidPortRange,
    allocate_minor,
    allocate_port,
    module_version,
    random_secret,
    render_resource,
    resource_name,
)

SECRET = "s3cretS3cretS3cretS3cretS3cret42"
N1 = DrbdPeer(
    node="n1", node_id=0, address="127.0.0.1", port=11000,
    disk="/dev/vg/corral-web1-disk0", meta_disk="/dev/vg/corral-web1-disk0-meta",
)
N2 = dataclasses.replace(N1, node="n2", node_id=1, address="127.0.0.2")
RES = DrbdResource(name="corral-web1-0", minor=3, secret=SECRET, peers=(N1, N2))


def problems_of(res: DrbdResource) -> dict[str, str]:
    with pytest.raises(InvalidDrbdResource) as caught:
        render_resource(res)
    return caught.value.problems


def section(text: str, header: str) -> list[str]:
    """The stripped lines inside the block that starts with `header {`."""
    lines = [line.strip() for line in text.splitlines()]
    start = lines.index(f"{header} {{")
    return lines[start + 1: lines.index("}", start)]


def test_resource_name_joins_instance_and_disk_index() -> None:
    assert resource_name("web1", 0) == "corral-web1-0"
    assert resource_name("db.example_1", 12) == "corral-db.example_1-12"


def test_resource_name_refuses_unsafe_instance_names() -> None:
    for bad in ("", "../etc", "a b", "-x", 'web"1'):
        with pytest.raises(InvalidName):
            resource_name(bad, 0)


def test_resource_name_refuses_a_negative_disk_index() -> None:
    with pytest.raises(InvalidDiskSpec):
        resource_name("web1", -1)


def test_resource_name_refuses_names_longer_than_drbd_takes() -> None:
    assert len(resource_name("a" * 118, 0)) == 127
    with pytest.raises(InvalidName, match="at most 127"):
        resource_name("a" * 119, 0)


def test_render_puts_protocol_and_secret_in_the_net_section() -> None:
    net = section(render_resource(RES), "net")
    assert net == ["protocol C;", "cram-hmac-alg sha256;", f'shared-secret "{SECRET}";']


def test_render_describes_each_node_with_its_volumes_and_address() -> None:
    text = render_resource(RES)
    assert 'resource "corral-web1-0" {' in text
    assert section(text, 'on "n2"') == [
        "node-id 1;",
        "device minor 3;",
        'disk "/dev/vg/corral-web1-disk0";',
        'meta-disk "/dev/vg/corral-web1-disk0-meta";',
        "address ipv4 127.0.0.2:11000;",
    ]
    assert section(text, "connection-mesh") == ['hosts "n1" "n2";']


def test_render_writes_ipv6_addresses_in_brackets() -> None:
    res = dataclasses.replace(RES, peers=(
        dataclasses.replace(N1, address="fd00:0::1"), dataclasses.replace(N2, address="fd00::2"),
    ))
    text = render_resource(res)
    assert "address ipv6 [fd00::1]:11000;" in text
    assert "address ipv6 [fd00::2]:11000;" in text


def test_render_uses_the_requested_protocol() -> None:
    assert "protocol A;" in section(render_resource(dataclasses.replace(RES, protocol="A")), "net")


def test_render_refuses_the_same_node_twice() -> None:
    res = dataclasses.replace(RES, peers=(N1, dataclasses.replace(N2, node="n1")))
    assert "two different nodes" in problems_of(res)["peers.node"]


def test_render_refuses_the_same_node_id_twice() -> None:
    res = dataclasses.replace(RES, peers=(N1, dataclasses.replace(N2, node_id=0)))
    assert "node-id 0" in problems_of(res)["peers.node_id"]


@pytest.mark.parametrize("node_id", [-1, 32])
def test_render_refuses_node_ids_drbd_does_not_have(node_id: int) -> None:
    res = dataclasses.replace(RES, peers=(N1, dataclasses.replace(N2, node_id=node_id)))
    assert "0..31" in problems_of(res)["peers[1].node_id"]


@pytest.mark.parametrize("port", [0, -5, 65536])
def test_render_refuses_ports_out_of_range(port: int) -> None:
    res = dataclasses.replace(RES, peers=(dataclasses.replace(N1, port=port), N2))
    assert "1..65535" in problems_of(res)["peers[0].port"]


@pytest.mark.parametrize("minor", [-1, MINOR_MAX + 1])
def test_render_refuses_minors_out_of_range(minor: int) -> None:
    assert "0..1048575" in problems_of(dataclasses.replace(RES, minor=minor))["minor"]


def test_render_accepts_the_extreme_minors() -> None:
    for minor in (0, MINOR_MAX):
        assert f"device minor {minor};" in render_resource(dataclasses.replace(RES, minor=minor))


@pytest.mark.parametrize("secret", ["", 'has"quote', "back\\slash", "has space", "x" * 65, "é"])
def test_render_refuses_secrets_drbd_cannot_take(secret: str) -> None:
    problems = problems_of(dataclasses.replace(RES, secret=secret))
    assert "secret" in problems


@pytest.mark.parametrize(
    "address", ["n2.example.com", "127.0.0", "", "10.0.0.1:7789", "fe80::1%eth0", "[::1]"]
)
def test_render_refuses_addresses_that_are_not_ip_literals(address: str) -> None:
    res = dataclasses.replace(RES, peers=(N1, dataclasses.replace(N2, address=address)))
    assert "IPv4 or IPv6" in problems_of(res)["peers[1].address"]


def test_render_refuses_mixing_ipv4_and_ipv6() -> None:
    res = dataclasses.replace(RES, peers=(N1, dataclasses.replace(N2, address="::1")))
    assert "different IP versions" in problems_of(res)["peers.address"]


def test_render_refuses_both_peers_on_one_address_and_port() -> None:
    res = dataclasses.replace(RES, peers=(N1, dataclasses.replace(N2, address="127.0.0.1")))
    assert "own address or port" in problems_of(res)["peers.address"]


def test_render_accepts_one_address_with_two_ports() -> None:
    res = dataclasses.replace(
        RES, peers=(N1, dataclasses.replace(N2, address="127.0.0.1", port=11001))
    )
    assert "address ipv4 127.0.0.1:11001;" in render_resource(res)


@pytest.mark.parametrize("disk", ["dev/vg/x", "/dev/vg/a b", '/dev/"x', "/dev/x;y", "/dev/../x"])
def test_render_refuses_disk_paths_that_are_not_plain_absolute_paths(disk: str) -> None:
    res = dataclasses.replace(RES, peers=(dataclasses.replace(N1, meta_disk=disk), N2))
    assert "absolute device path" in problems_of(res)["peers[0].meta_disk"]


@pytest.mark.parametrize("node", ["", "n 1", 'n"1', "-n1", "n1{"])
def test_render_refuses_node_names_that_are_not_host_names(node: str) -> None:
    res = dataclasses.replace(RES, peers=(dataclasses.replace(N1, node=node), N2))
    assert "host name" in problems_of(res)["peers[0].node"]


def test_render_refuses_unsafe_resource_names_and_unknown_protocols() -> None:
    problems = problems_of(dataclasses.replace(RES, name="../x", protocol="D"))
    assert set(problems) == {"name", "protocol"}


def test_render_lists_every_problem_at_once_without_the_secret() -> None:
    res = DrbdResource(
        name="corral-web1-0", minor=-1, secret=SECRET + '"',
        peers=(dataclasses.replace(N1, port=0), dataclasses.replace(N2, address="nowhere")),
    )
    with pytest.raises(InvalidDrbdResource) as caught:
        render_resource(res)
    error = caught.value
    assert set(error.problems) == {"minor", "secret", "peers[0].port", "peers[1].address"}
    assert isinstance(error, ValueError) and isinstance(error, StorageError)
    assert error.resource == "corral-web1-0"
    assert "corral-web1-0" in str(error) and SECRET not in str(error)


def test_resource_repr_hides_the_secret() -> None:
    assert SECRET not in repr(RES)
    assert "<redacted>" in repr(RES)


def test_random_secret_is_32_letters_and_digits_that_render() -> None:
    secrets = {random_secret() for _ in range(20)}
    assert len(secrets) == 20
    for secret in secrets:
        assert len(secret) == 32
        assert set(secret) <= set(string.ascii_letters + string.digits)
    render_resource(dataclasses.replace(RES, secret=secrets.pop()))


def test_allocate_minor_takes_the_lowest_free_on_both_nodes() -> None:
    assert allocate_minor(set(), set()) == 0
    assert allocate_minor({0, 1, 3}, {2, 5}) == 4
    assert allocate_minor({1}, {0}) == 2


def test_allocate_minor_says_when_none_is_left() -> None:
    everything = set(range(MINOR_MAX + 1))
    with pytest.raises(AllocationExhausted, match="minor") as caught:
        allocate_minor(everything - {7}, {7})
    assert (caught.value.low, caught.value.high) == (0, MINOR_MAX)


def test_allocate_port_takes_the_lowest_free_in_range() -> None:
    assert allocate_port(set()) == 11000
    assert allocate_port({11000, 11001, 11003}) == 11002
    assert allocate_port({7789}, low=7788, high=7799) == 7788
    assert allocate_port({7788}, low=7788, high=7799) == 7789


def test_allocate_port_says_when_the_range_is_full() -> None:
    with pytest.raises(AllocationExhausted, match="11000..11002"):
        allocate_port({11000, 11001, 11002}, low=11000, high=11002)


@pytest.mark.parametrize(("low", "high"), [(12000, 11000), (0, 10), (65000, 65536)])
def test_allocate_port_refuses_an_invalid_range(low: int, high: int) -> None:
    with pytest.raises(InvalidPortRange):
        allocate_port(set(), low=low, high=high)


def test_render_for_drbd_84_leaves_out_what_only_drbd_9_knows() -> None:
    text = render_resource(RES, version="8.4")
    assert "node-id" not in text and "connection-mesh" not in text
    assert 'disk "/dev/vg/corral-web1-disk0";' in text and "address ipv4 127.0.0.2:11000;" in text
    assert "node-id 0;" in render_resource(RES)


def test_render_refuses_a_drbd_version_it_does_not_write() -> None:
    with pytest.raises(InvalidDrbdResource, match="'8.3' is not one of 8.4, 9"):
        render_resource(RES, version="8.3")


@pytest.mark.parametrize(("proc", "version"), [
    ("version: 8.4.11 (api:1/proto:86-101)\nsrcversion: F73C670A7EC572DB9CF3E5B\n", "8.4"),
    ("version: 9.2.8 (api:2/proto:86-122)\nGIT-hash: e163b05a\n", "9"),
])
def test_module_version_reads_proc_drbd(proc: str, version: str) -> None:
    assert module_version(proc) == version


def test_module_version_says_what_it_could_not_read() -> None:
    with pytest.raises(ValueError, match="no 'version: X.Y.Z' line"):
        module_version("drbd not loaded")


def test_a_fence_peer_handler_freezes_io_until_it_has_outdated_the_peer_in_both_dialects() -> None:
    res = dataclasses.replace(RES, fence_peer="/usr/bin/env corral-fence --socket /run/corral/agent.sock")
    old, new = render_resource(res, "8.4"), render_resource(res, "9")
    assert section(old, "disk") == ["fencing resource-and-stonith;"]  # DRBD 8.4: a disk option
    assert "fencing resource-and-stonith;" in section(new, "net")  # DRBD 9: a connection option
    for text in (old, new):
        assert section(text, "handlers") == [f'fence-peer "{res.fence_peer}";']
    assert "fencing" not in render_resource(RES, "8.4") and "handlers" not in render_resource(RES, "8.4")


def test_a_fixed_resync_rate_turns_off_drbds_own_controller() -> None:
    text = render_resource(dataclasses.replace(RES, resync_rate_mib_s=60), "8.4")
    assert section(text, "disk") == ["c-plan-ahead 0;", "resync-rate 61440k;"]


def test_render_refuses_a_handler_that_would_break_the_file_and_a_negative_rate() -> None:
    problems = problems_of(dataclasses.replace(RES, fence_peer='/bin/x "y"', resync_rate_mib_s=-1))
    assert set(problems) == {"fence_peer", "resync_rate_mib_s"}


def test_a_resource_in_a_switchover_says_both_nodes_may_be_primary_so_adjust_keeps_it() -> None:
    for version in ("8.4", "9"):
        assert "allow-two-primaries yes;" in section(render_resource(dataclasses.replace(RES, two_primaries=True),
                                                                     version), "net")
        assert "allow-two-primaries" not in render_resource(RES, version)
