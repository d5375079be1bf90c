"""NBD exports of a disk copy by a real qemu-storage-daemon, with TLS, on 127.0.0.1.

Certificates are made here with ``cryptography`` like Corral's node
certificates (subject CN=<node>, OU=corral-node, IP in the SAN), so the
client identity the export checks has the form QEMU sees in production.
``make_pki`` and ``nbd_image_opts`` are shared with test_kvm_blockmirror.
"""

import datetime
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from conftest import free_port, is_gone, wait_until

from kvm.daemon import LaunchFailed
from kvm.nbdexport import (
    NbdExportSpec,
    export_pid,
    is_running,
    link_tls_dir,
    start_export,
    stop_export,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

DISK_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class Pki:
    """QEMU credential directories: the server, and one client dir per node name."""

    server_dir: str
    client_dirs: dict[str, str]
    foreign_client_dir: str  # a client certificate from another CA

    @staticmethod
    def identity(node: str) -> str:
        return f"CN={node},OU=corral-node"


def _name(common_name: str, ou: str | None = "corral-node") -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if ou:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou))
    return x509.Name(attributes)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _ca(name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(name, None)).issuer_name(_name(name, None))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False),
                           critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def _node_cert(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, node: str,
               address: str) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(node)).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.DNSName(node), x509.IPAddress(ipaddress.ip_address(address))]),
                critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    return _pem_cert(cert), _pem_key(key)


def _write(path: Path, data: bytes, mode: int = 0o644) -> None:
    path.write_bytes(data)
    path.chmod(mode)


def make_pki(root: Path, server_node: str = "n2", clients: tuple[str, ...] = ("n1", "n3")) -> Pki:
    """A throwaway cluster CA, the secondary's server dir and client dirs."""
    ca_key, ca_cert = _ca("corral cluster test CA")
    # The server dir is built the production way: node files linked by link_tls_dir.
    node_files = root / "node"
    node_files.mkdir(parents=True)
    cert, key = _node_cert(ca_key, ca_cert, server_node, "127.0.0.1")
    _write(node_files / "ca.crt", _pem_cert(ca_cert))
    _write(node_files / "node.crt", cert)
    _write(node_files / "node.key", key, 0o600)
    server_dir = root / "server"
    link_tls_dir(str(server_dir), str(node_files / "ca.crt"), str(node_files / "node.crt"),
                 str(node_files / "node.key"))
    client_dirs = {}
    for node in clients:
        client_dirs[node] = _client_dir(root / node, ca_cert, *_node_cert(ca_key, ca_cert, node,
                                                                           "127.0.0.1"))
    other_key, other_ca = _ca("some other CA")
    foreign = _client_dir(root / "foreign", ca_cert,
                          *_node_cert(other_key, other_ca, clients[0], "127.0.0.1"))
    return Pki(str(server_dir), client_dirs, foreign)


def _client_dir(path: Path, ca_cert: x509.Certificate, cert: bytes, key: bytes) -> str:
    path.mkdir(parents=True)
    _write(path / "ca-cert.pem", _pem_cert(ca_cert))
    _write(path / "client-cert.pem", cert)
    _write(path / "client-key.pem", key, 0o600)
    return str(path)


def nbd_image_opts(port: int, export: str, tls_dir: str | None) -> list[str]:
    """qemu-img/qemu-io arguments opening the export, as a client with ``tls_dir``."""
    opts = f"driver=nbd,server.type=inet,server.host=127.0.0.1,server.port={port},export={export}"
    if tls_dir is None:
        return ["--image-opts", opts]
    return ["--object", f"tls-creds-x509,id=tls0,dir={tls_dir},endpoint=client",
            "--image-opts", f"{opts},tls-creds=tls0"]


def export_spec(root: str, pki: Pki, image: str, port: int, client: str = "n1") -> NbdExportSpec:
    return NbdExportSpec(image_path=image, fmt="raw", host="127.0.0.1", port=port,
                         export_name="vm1-disk0", pidfile=f"{root}/run/vm1-disk0.pid",
                         tls_dir=pki.server_dir, client_identity=Pki.identity(client))


@pytest.fixture
def root() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="cnbd-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def pki(root: str) -> Pki:
    return make_pki(Path(root) / "pki")


@pytest.fixture
def image(root: str) -> str:
    path = f"{root}/copy.raw"
    with open(path, "wb") as f:
        f.truncate(DISK_BYTES)
    return path


@pytest.fixture
async def spec(root: str, pki: Pki, image: str) -> AsyncIterator[NbdExportSpec]:
    """An export spec whose daemon, if a test started it, is stopped by pid at teardown."""
    spec = export_spec(root, pki, image, free_port())
    yield spec
    pid = export_pid(spec.pidfile)
    if pid is not None:
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: is_gone(pid), timeout_s=5)


def qemu_io(port: int, tls_dir: str | None, command: str) -> subprocess.CompletedProcess:
    return subprocess.run(["qemu-io", *nbd_image_opts(port, "vm1-disk0", tls_dir), "-c", command],
                          capture_output=True, text=True, timeout=20)


async def test_export_serves_the_primary_with_its_certificate(spec, pki, image):
    await start_export(spec)
    done = qemu_io(spec.port, pki.client_dirs["n1"], "write -P 0x5a 4096 65536")
    assert done.returncode == 0, done.stderr
    with open(image, "rb") as f:
        f.seek(4096)
        assert f.read(65536) == b"\x5a" * 65536
    info = subprocess.run(["qemu-img", "info", *nbd_image_opts(spec.port, "vm1-disk0",
                                                               pki.client_dirs["n1"])],
                          capture_output=True, text=True, timeout=20)
    assert "16 MiB" in info.stdout, info.stderr


async def test_export_refuses_other_nodes_foreign_certificates_and_plain_nbd(spec, pki):
    await start_export(spec)
    other_node = qemu_io(spec.port, pki.client_dirs["n3"], "read 0 4096")
    foreign_ca = qemu_io(spec.port, pki.foreign_client_dir, "read 0 4096")
    plain = qemu_io(spec.port, None, "read 0 4096")
    assert other_node.returncode != 0 and foreign_ca.returncode != 0 and plain.returncode != 0
    assert "TLS" in plain.stderr
    assert is_running(spec.pidfile), "a refused client must not take the export down"
    assert qemu_io(spec.port, pki.client_dirs["n1"], "read 0 4096").returncode == 0


async def test_start_is_idempotent_and_stop_ends_the_daemon(spec):
    pid = await start_export(spec)
    assert await start_export(spec) == pid
    assert export_pid(spec.pidfile) == pid and is_running(spec.pidfile)
    assert await stop_export(spec.pidfile) is True
    assert is_gone(pid)
    assert not os.path.exists(spec.pidfile)
    assert await stop_export(spec.pidfile) is False


async def test_start_reports_the_daemon_error_when_the_port_is_taken(spec):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", spec.port))
        taken.listen()
        with pytest.raises(LaunchFailed) as failure:
            await start_export(spec)
    assert "Address already in use" in failure.value.stderr_tail
    assert not is_running(spec.pidfile)


async def test_pidfile_naming_another_process_is_not_trusted(spec):
    os.makedirs(os.path.dirname(spec.pidfile), exist_ok=True)
    Path(spec.pidfile).write_text(f"{os.getpid()}\n")
    assert export_pid(spec.pidfile) is None
    assert await stop_export(spec.pidfile) is False
    assert not os.path.exists(spec.pidfile)
