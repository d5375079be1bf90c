"""kvm.nbdexport's pure parts: the qemu-storage-daemon argv and spec checks."""

import dataclasses
import os

import pytest

from kvm.nbdexport import (
    InvalidExportSpec,
    NbdExportSpec,
    build_export_argv,
    check_export_spec,
    link_tls_dir,
)

SPEC = NbdExportSpec(
    image_path="/var/lib/corral/disks/vm1/disk0.raw", fmt="raw", host="10.0.0.2", port=10809,
    export_name="vm1-disk0", pidfile="/run/corral/nbd/vm1-disk0.pid",
    tls_dir="/var/lib/corral/pki/qemu", client_identity="CN=n1,OU=corral-node",
)


def option(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == flag]


def test_export_is_a_daemon_serving_one_tls_client_on_the_replication_address():
    argv = build_export_argv(SPEC)
    assert argv[0] == "qemu-storage-daemon" and "--daemonize" in argv
    assert option(argv, "--pidfile") == ["/run/corral/nbd/vm1-disk0.pid"]
    assert option(argv, "--object") == [
        "tls-creds-x509,id=tls0,dir=/var/lib/corral/pki/qemu,endpoint=server,verify-peer=on",
        "authz-simple,id=authz0,identity=CN=n1,,OU=corral-node",
    ]
    assert option(argv, "--nbd-server") == [
        "addr.type=inet,addr.host=10.0.0.2,addr.port=10809,tls-creds=tls0,tls-authz=authz0"]
    assert option(argv, "--blockdev") == [
        "driver=file,node-name=file0,filename=/var/lib/corral/disks/vm1/disk0.raw,discard=unmap",
        "driver=raw,node-name=disk0,file=file0,discard=unmap",
    ]
    assert option(argv, "--export") == [
        "type=nbd,id=export0,node-name=disk0,name=vm1-disk0,writable=on,writethrough=on"]


def test_commas_in_paths_are_escaped_for_qemu_option_lists():
    argv = build_export_argv(dataclasses.replace(SPEC, image_path="/srv/a,b.qcow2", fmt="qcow2"))
    assert "driver=file,node-name=file0,filename=/srv/a,,b.qcow2,discard=unmap" in argv
    assert "driver=qcow2,node-name=disk0,file=file0,discard=unmap" in argv


def test_a_logical_volume_is_exported_as_the_block_device_it_is():
    argv = build_export_argv(dataclasses.replace(SPEC, image_path="/dev/vg0/corral-vm1-disk0", protocol="host_device"))
    assert "driver=host_device,node-name=file0,filename=/dev/vg0/corral-vm1-disk0,discard=unmap" in argv


def test_every_problem_of_a_bad_spec_is_reported_at_once():
    bad = dataclasses.replace(SPEC, fmt="vmdk", host="node2", port=0, export_name="a,b",
                              tls_dir="pki", client_identity=" ", protocol="nbd")
    problems = check_export_spec(bad)
    assert len(problems) == 7
    with pytest.raises(InvalidExportSpec) as error:
        build_export_argv(bad)
    assert error.value.problems == problems
    assert check_export_spec(SPEC) == []


def test_tls_dir_links_the_node_files_under_qemus_names(tmp_path):
    for name in ("ca.crt", "node.crt", "node.key"):
        (tmp_path / name).write_text(name)
    qemu_dir = str(tmp_path / "qemu")
    for _ in range(2):  # idempotent
        link_tls_dir(qemu_dir, str(tmp_path / "ca.crt"), str(tmp_path / "node.crt"),
                     str(tmp_path / "node.key"))
    contents = {name: open(os.path.join(qemu_dir, name)).read()
                for name in sorted(os.listdir(qemu_dir))}
    assert contents == {
        "ca-cert.pem": "ca.crt", "client-cert.pem": "node.crt", "client-key.pem": "node.key",
        "server-cert.pem": "node.crt", "server-key.pem": "node.key",
    }
    assert os.stat(qemu_dir).st_mode & 0o777 == 0o700
